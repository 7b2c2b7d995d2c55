"""Packaging: one version, stamped into the compiled core; the sdist round trip; mypy --strict.

The round trip is what a user without the repository gets: ``python -m build``
makes the sdist and then the wheel *from the sdist*, the wheel goes into a
fresh venv of this same interpreter, and the demo runs there.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from ctools import REPO, run, run_patched_import

import xenmapcache
from xenmapcache import _binding
from xenmapcache._version import __version__


def test_the_version_is_written_once() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert xenmapcache.__version__ == __version__
    assert importlib.metadata.version("xenmapcache") == __version__


def test_the_compiled_core_carries_the_version() -> None:
    ffi, lib = _binding.binding()
    assert ffi.string(lib.xmc_py_build_version()).decode() == __version__


def test_a_stale_core_is_refused_at_import() -> None:
    # The package moves on to 9.9.9 while the compiled core stays as it was
    # built: the package still imports, and the first cache refuses the core.
    out = run_patched_import(
        "xenmapcache._version",
        'module.__version__ = "9.9.9"',
        """
        import xenmapcache
        xenmapcache.GuestRAM(1 << 20)  # pure Python: no core needed yet
        try:
            xenmapcache.MapCache(xenmapcache.GuestRAM(1 << 20))
        except ImportError as exc:
            print(exc)
        """,
    )
    assert f"xenmapcache 9.9.9 found a C core built for version {__version__}" in out
    assert "stale" in out and "pip install" in out


def test_mypy_strict() -> None:
    proc = run([sys.executable, "-m", "mypy", "--strict", "xenmapcache"], cwd=REPO)
    assert "Success" in proc.stdout


@pytest.mark.slow
def test_sdist_round_trip(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # Build output a developer leaves behind (the README's docs command) stays out.
    planted = REPO / "docs" / "_build" / "planted-by-test_sdist_round_trip.html"
    planted.parent.mkdir(exist_ok=True)
    planted.write_text("build output")
    try:
        run([sys.executable, "-m", "build", "--outdir", dist, REPO])
    finally:
        planted.unlink()
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")

    with tarfile.open(sdist) as tar:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in tar.getnames()}
    for needed in ("build_ffi.py", "setup.py", "csrc/Makefile", "csrc/xenmapcache.h", "csrc/xenmapcache_qemu.h",
                   "csrc/xmc_internal.h", "csrc/xmc_xenfm.h", "csrc/cache.c", "csrc/xen.c",
                   "xenmapcache/_version.py", "xenmapcache/py.typed", "examples/emulator.c",
                   *(f"ffi/{path.name}" for path in (REPO / "ffi").iterdir())):
        assert needed in names, needed
    assert not [n for n in names if re.search(r"\.(so|o|a|pc)$|\.so\.", n) or n.startswith("docs/_build")]

    with zipfile.ZipFile(wheel) as whl:
        members = set(whl.namelist())
    assert {"xenmapcache/py.typed", "xenmapcache/_core.pyi"} <= members
    assert [m for m in members if re.fullmatch(r"xenmapcache/_core\..*so", m)]
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert "-cp312-abi3-" in wheel.name

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", wheel])
    # From tmp_path, so that the repository's source tree is not importable.
    out = run([python, "-c", "import xenmapcache, xenmapcache._core; print(xenmapcache.__version__)"], cwd=tmp_path)
    assert out.stdout.strip() == __version__
    demo = run([python, "-m", "xenmapcache", "demo"], cwd=tmp_path)
    assert demo.stdout.strip().endswith("demo finished: OK")

    # And from a checkout: `pip install .` then `python -m xenmapcache demo` in
    # the repository imports the source tree, which has no compiled core; the
    # installed copy's core is found and used.
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "xenmapcache", checkout / "xenmapcache", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    demo = run([python, "-m", "xenmapcache", "demo"], cwd=checkout)
    assert demo.stdout.strip().endswith("demo finished: OK")
