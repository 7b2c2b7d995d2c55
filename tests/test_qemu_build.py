"""QEMU linked against libxenmapcache (contrib/qemu/), checked without QEMU.

CI cannot fetch QEMU, so contrib/qemu/build-qemu.sh is run by hand (see
docs/qemu-build.md); these tests check what can be checked without it: the
script parses and refuses a tree that is not QEMU's, the meson patch touches
meson files only and names files that exist here, and the glue compiles
against our header and stand-ins for QEMU's headers (tests/c/qemu_stub/), where
a prototype of QEMU's that differs from ours is a compile error.  Linked with
-Wl,--wrap=xen_map_cache_init as QEMU is, around tests/c/qemu_glue_main.c
(QEMU's globals and calls) and the fake Xen libraries, the glue builds the
three caches before QEMU's xen_map_cache_init(), turns dummy mode on during
an incoming migration and off after, and exits as QEMU's mapcache does when a
backend cannot be opened.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from ctools import CC, CSRC, LIBS, REPO, STRICT, TESTS_C, make_csrc, run

CONTRIB = REPO / "contrib" / "qemu"
SCRIPT = CONTRIB / "build-qemu.sh"
PATCH = CONTRIB / "xenmapcache-meson.patch"
GLUE = CONTRIB / "xenmapcache-glue.c"
STUB = TESTS_C / "qemu_stub"
QEMU_STD = "-std=gnu11"  # QEMU's own -std
# The warnings of QEMU's meson.build that a glue file could trip (QEMU's git builds use -Werror).
QEMU_WARN = ["-Wmissing-prototypes", "-Wredundant-decls", "-Wstrict-prototypes", "-Wold-style-definition",
             "-Wold-style-declaration", "-Wnested-externs", "-Wundef", "-Wshadow=local", "-Wvla",
             "-Wwrite-strings", "-Wformat-security", "-Wmissing-format-attribute"]


def test_script_parses_and_refuses_what_is_not_a_qemu_tree(tmp_path: Path) -> None:
    run(["bash", "-n", SCRIPT])
    usage = run(["bash", SCRIPT], expect_ok=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    refused = run(["bash", SCRIPT, tmp_path], expect_ok=False)
    assert "is not a QEMU source tree" in refused.stderr
    assert list(tmp_path.iterdir()) == []  # nothing patched, nothing built


def test_patch_touches_meson_files_only_and_names_our_files() -> None:
    text = PATCH.read_text()
    touched = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
    assert sorted(touched) == ["hw/xen/meson.build", "meson_options.txt"]
    assert re.findall(r"^--- a/(\S+)", text, flags=re.M) == touched
    # What the meson code links and compiles, relative to -Dxenmapcache=ROOT.
    for rel in re.findall(r"xmc_root / '([^']+)'", text):
        target = REPO / rel
        assert target.exists() or rel == "csrc/libxenmapcache.a", rel
    assert "libxenmapcache.a:" in (CSRC / "Makefile").read_text()
    assert "-Wl,--wrap=xen_map_cache_init" in text
    assert "'xen-mapcache.c'" in text  # kept when the option is empty


# What the patch links QEMU with: our glue in front of three of the library's calls.
WRAPS = re.findall(r"'(-Wl,--wrap=\w+)'", PATCH.read_text())


def compile_glue(out: Path, *defines: str) -> subprocess.CompletedProcess[str]:
    """The glue as QEMU compiles it: our header by its relative path, QEMU's from the stubs."""
    return subprocess.run(
        [CC, QEMU_STD, *STRICT, *QEMU_WARN, *defines, f"-I{STUB}", "-c", str(GLUE), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )


def patched_file(patch: Path, name: str) -> str:
    """The text of a file that ``patch`` creates whole."""
    text = patch.read_text()
    body = text.split(f"+++ b/{name}\n", 1)[1].split("\n--- ", 1)[0]
    return "".join(line[1:] + "\n" for line in body.splitlines()[1:])


def test_glue_compiles_against_our_header_and_qemus_declarations(tmp_path: Path) -> None:
    done = compile_glue(tmp_path / "glue.o")
    assert done.returncode == 0, done.stderr
    defined = run(["nm", "--defined-only", tmp_path / "glue.o"]).stdout
    undefined = run(["nm", "-u", tmp_path / "glue.o"]).stdout
    assert " T __wrap_xen_map_cache_init" in defined
    for name in ("__real_xen_map_cache_init", "xmc_xen_open", "xmc_gnttab_open", "xmc_qemu_configure",
                 "xmc_cache_set_dummy", "xen_domid", "xen_grants", "qemu_add_vm_change_state_handler"):
        assert re.search(rf"U {name}$", undefined, flags=re.M), name


def test_the_glue_compiles_against_qemu_11s_const_memory_region(tmp_path: Path) -> None:
    done = compile_glue(tmp_path / "glue.o", "-DSTUB_QEMU11")
    assert done.returncode == 0, done.stderr
    # The const follows QEMU's version: QEMU 11's header with 9.1's version conflicts.
    done = compile_glue(tmp_path / "glue.o", "-DSTUB_QEMU11", "-DQEMU_VERSION_MAJOR=9")
    assert done.returncode != 0
    assert "conflicting types for 'xen_map_cache'" in done.stderr.replace("\u2018", "'").replace("\u2019", "'")


def test_a_prototype_that_differs_from_qemus_is_a_compile_error(tmp_path: Path) -> None:
    done = compile_glue(tmp_path / "glue.o", "-DSTUB_MISMATCH")
    assert done.returncode != 0
    assert "conflicting types for 'xen_map_cache'" in done.stderr.replace("\u2018", "'").replace("\u2019", "'")


@pytest.fixture(scope="module")
def qemu_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A program linked as QEMU is (glue, --wrap, libxenmapcache.a), and a dir of fake Xen libraries."""
    make_csrc("libxenmapcache.a")
    tmp = tmp_path_factory.mktemp("qemu_glue")
    assert compile_glue(tmp / "glue.o").returncode == 0
    run([CC, QEMU_STD, *STRICT, f"-I{STUB}", f"-I{CSRC}", "-c", TESTS_C / "qemu_glue_main.c", "-o", tmp / "main.o"])
    run([CC, tmp / "main.o", tmp / "glue.o", *WRAPS, CSRC / "libxenmapcache.a", *LIBS, "-o", tmp / "qemu"])
    fakes = tmp / "fakes"
    fakes.mkdir()
    for lib, src in (("libxenforeignmemory.so.1", "fake_xenforeignmemory.c"),
                     ("libxengnttab.so.1", "fake_xengnttab.c")):
        run([CC, "-std=c11", *STRICT, "-shared", "-fPIC", f"-I{CSRC}", TESTS_C / src, "-o", fakes / lib])
    return tmp / "qemu", fakes


def run_qemu_like(qemu_like: tuple[Path, Path], expect_ok: bool, **env: str) -> subprocess.CompletedProcess[str]:
    program, fakes = qemu_like
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "QEMU_"))}
    environ.update(LD_LIBRARY_PATH=str(fakes), **env)
    return run([program], expect_ok=expect_ok, env=environ)


@pytest.mark.parametrize("inmigrate", [False, True], ids=["running", "incoming-migration"])
def test_glue_builds_the_caches_before_qemus_init(qemu_like: tuple[Path, Path], inmigrate: bool) -> None:
    out = run_qemu_like(qemu_like, True, **({"QEMU_INMIGRATE": "1"} if inmigrate else {})).stdout
    assert f"caches built for domain 7, dummy mode {'on' if inmigrate else 'off'}" in out
    assert "foreign and grant mappings made, reverse lookups exact" in out
    assert "drained before invalidating, unlock deferred out of a coroutine" in out
    assert "dummy mode off once running" in out


@pytest.mark.parametrize(
    ("variable", "what"),
    [("FAKE_XENFM_NO_PRIVCMD", "foreign memory"), ("FAKE_XENGNTTAB_NO_GNTDEV", "read-only grants")],
)
def test_glue_exits_as_qemu_does_without_a_backend(qemu_like: tuple[Path, Path], variable: str, what: str) -> None:
    proc = run_qemu_like(qemu_like, False, **{variable: "1"})
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"mapcache: {what}: ")
    assert "is missing" in proc.stderr and "caches built" not in proc.stdout


TCG_PATCH = CONTRIB / "xenmapcache-tcg.patch"


def test_tcg_patch_takes_the_xen_call_points_of_physmem_and_the_balloon() -> None:
    text = TCG_PATCH.read_text()
    touched = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
    assert sorted(touched) == ["hw/virtio/virtio-balloon.c", "include/sysemu/xenmapcache-tcg.h",
                               "system/physmem.c", "tests/meson.build"]
    added = "\n".join(line for line in text.splitlines() if line.startswith("+"))
    for call in ("return xmc_tcg->map(addr, len, lock, is_write);",  # qemu_ram_ptr_length
                 "xmc_tcg->unmap(buffer);",  # address_space_unmap
                 "xmc_tcg->unmap(cache->ptr);",  # address_space_cache_destroy
                 "xmc_tcg->offset_of(ptr, offset)",  # qemu_ram_block_from_host
                 "xmc_tcg->balloon();"):  # virtio_balloon_handle_output, inflation
        assert call in added, call


@pytest.fixture(scope="module")
def qemu_tcg_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The glue and the QEMU-like program built with the TCG patch's header, as --tcg builds QEMU."""
    make_csrc("libxenmapcache.a")
    tmp = tmp_path_factory.mktemp("qemu_tcg")
    header = tmp / "inc" / "sysemu" / "xenmapcache-tcg.h"
    header.parent.mkdir(parents=True)
    header.write_text(patched_file(TCG_PATCH, "include/sysemu/xenmapcache-tcg.h"))
    done = subprocess.run([CC, QEMU_STD, *STRICT, *QEMU_WARN, f"-I{tmp / 'inc'}", f"-I{STUB}", "-c", str(GLUE),
                           "-o", str(tmp / "glue.o")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run([CC, QEMU_STD, *STRICT, "-DXMC_TEST_TCG", f"-I{tmp / 'inc'}", f"-I{STUB}", f"-I{CSRC}", "-c",
         TESTS_C / "qemu_glue_main.c", "-o", tmp / "main.o"])
    run([CC, tmp / "main.o", tmp / "glue.o", *WRAPS, CSRC / "libxenmapcache.a", *LIBS, "-o", tmp / "qemu"])
    return tmp / "qemu"


def test_tcg_mode_serves_the_memfd_warns_by_tag_and_records_a_trace(qemu_tcg_like: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.xmct"
    env = {**os.environ, "XENMAPCACHE_TCG": "1", "XENMAPCACHE_TRACE": str(trace)}
    proc = run([qemu_tcg_like, "tcg"], env=env)
    assert "TCG mode: DMA and transient mappings of the memfd, two invalidations" in proc.stdout
    assert "mapcache: DMA mapping tag 1 of guest [0x3000, +0x1000) in flight across an invalidation" in proc.stderr
    assert proc.stderr.count("in flight across an invalidation") == 1
    assert "xenmapcache: 2 maps (1 DMA), 1 hits, 1 misses; 1 DMA warnings at 2 invalidations" in proc.stderr
    from xenmapcache import replay

    t = replay.read_trace(str(trace))
    assert t.ram_size == 16 << 20
    assert [replay.OP_NAMES[c.op] for c in t.calls] == [
        "map", "ram_addr", "ram_addr", "map", "invalidate", "unlock", "invalidate"]
    assert [c.in_flight for c in t.calls if c.op == replay.INVALIDATE][0][0][1:] == (4096, 1, 0x3000)
    assert replay.main([str(trace), "--impl", "both"]) == 0


def test_without_the_variable_the_tcg_mode_stays_off(qemu_tcg_like: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XENMAPCACHE_")}
    proc = run([qemu_tcg_like, "tcg"], env=env, expect_ok=False)
    assert proc.returncode == 3 and "machine_done != NULL" in proc.stderr
