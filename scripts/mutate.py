#!/usr/bin/env python3
"""Mutation run: plant realistic one-line bugs and check that the fast suite kills each.

Usage (from the repository, after ``scripts/setup.sh test``):

    .venv/bin/python scripts/mutate.py            # every mutant; exit 1 if one survives
    .venv/bin/python scripts/mutate.py --list     # the mutants, without running them
    .venv/bin/python scripts/mutate.py --only NAME [--only NAME ...]

Each mutant is a text replacement in csrc/cache.c, csrc/ram.c or the binding's C (ffi/)
that must match exactly once (a mutant that no longer applies is an error:
update the list).  The run works on a scratch copy of the sources, never on
the checkout: for each mutant it restores the copy, plants the bug, then

1. for the C core: builds and runs the C unit tests (``make -C csrc check``,
   under ASan/UBSan);
2. if those pass (or for the binding's C): compiles the Python extension in
   place with the planted bug and runs the fast Python subset below.

A mutant is *killed* when a stage fails (or times out: a hang counts), and
*survives* when both pass.  A baseline run without a bug must pass first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FAST_SUITE = [
    "tests/test_semantics.py",
    "tests/test_pitfalls.py",
    "tests/test_reliability.py",
    "tests/test_fast_paths.py",
    "tests/test_regressions.py",
    "tests/test_callback_backend.py",
    "tests/test_model.py",
    "tests/test_safe_path.py",
    "tests/test_grants.py",
]
TIMEOUT = 900


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    why: str


MUTANTS = [
    Mutant(
        "invalidate-keeps-fast-path",
        "csrc/cache.c",
        "    set_last(c, NULL);\n    c->st.invalidations++;",
        "    c->st.invalidations++;",
        "invalidate leaves the fast path at a locked (multi-bucket) entry",
    ),
    Mutant(
        "pages-valid-off-by-one",
        "csrc/cache.c",
        "for (uint64_t p = first; p < first + n; p++)",
        "for (uint64_t p = first; p + 1 < first + n; p++)",
        "pages_valid drops the last page of a partly mapped entry",
    ),
    Mutant(
        "tree-find-one-past-end",
        "csrc/cache.c",
        "else if (addr - (uintptr_t)t->vaddr < t->size)",
        "else if (addr - (uintptr_t)t->vaddr <= t->size)",
        "ram_addr resolves the byte just past an entry",
    ),
    Mutant(
        "remap-keeps-old-slot",
        "csrc/cache.c",
        "    if (slot_of(c, index) != old_slot) {",
        "    if (slot_of(c, index) == old_slot) {",
        "an entry remapped to another slot stays on the old chain",
    ),
    Mutant(
        "miss-not-counted",
        "csrc/cache.c",
        "    c->st.misses++;\n",
        "",
        "a miss is not counted",
    ),
    Mutant(
        "reuse-locked-entry",
        "csrc/cache.c",
        "            if (e->lock == 0)\n                reuse = e;",
        "            reuse = e;",
        "a miss remaps a locked entry under its holder",
    ),
    Mutant(
        "sg-last-not-flushed",
        "csrc/cache.c",
        "        if (hit) /* as if each hit had set it */\n            set_last(c, hit);\n",
        "",
        "a batch's hits before a miss leave the last entry where it was",
    ),
    Mutant(
        "sg-last-not-set",
        "csrc/cache.c",
        "    c->tally = NULL;\n    if (hit)\n        set_last(c, hit);\n",
        "    c->tally = NULL;\n",
        "a batch that ends in hits leaves the last entry where it was",
    ),
    Mutant(
        "sg-hit-not-counted",
        "csrc/cache.c",
        "    c->st.hits++;\n    *out = e->vaddr + offset;\n    *ep = e;",
        "    *out = e->vaddr + offset;\n    *ep = e;",
        "a batch's hit is not counted",
    ),
    Mutant(
        "sg-unlock-newest-ignores-tag",
        "csrc/cache.c",
        "(uintptr_t)addrs[i] || rec(c, id)->tag != tag)",
        "(uintptr_t)addrs[i] || (rec(c, id)->tag != tag && false))",
        "a batch's unlock drops the newest records at its addresses whatever their tag",
    ),
    Mutant(
        "sg-unlock-newest-ignores-address",
        "csrc/cache.c",
        "if (!id || rec(c, id)->addr != (uintptr_t)addrs[i] ||",
        "if (!id || (rec(c, id)->addr != (uintptr_t)addrs[i] && false) ||",
        "a batch's unlock drops the newest records with its tag whatever their address",
    ),
    Mutant(
        "lock-limit-off-by-one",
        "csrc/cache.c",
        "    if (e->lock >= c->lock_limit)\n        return XMC_EOVERFLOW;",
        "    if (e->lock > c->lock_limit)\n        return XMC_EOVERFLOW;",
        "one lock more than lock_limit",
    ),
    Mutant(
        "overflow-keeps-the-hit",
        "csrc/cache.c",
        "            c->st.hits--;\n",
        "",
        "a refused lock still counts its hit",
    ),
    Mutant(
        "record-find-ignores-tag",
        "csrc/cache.c",
        "(!by_tag || r->tag == tag)",
        "(by_tag || r->tag == tag)",
        "unlock by tag picks any record at the address",
    ),
    Mutant(
        "dma-counter-inverted",
        "csrc/cache.c",
        "    if (r->dma) /* a branch, not arithmetic",
        "    if (!r->dma) /* a branch, not arithmetic",
        "unlocking a DMA record decrements the wrong counter",
    ),
    Mutant(
        "destroy-keeps-bytes",
        "csrc/cache.c",
        "    c->st.mapped_bytes -= e->size;\n",
        "",
        "mapped_bytes never goes down",
    ),
    Mutant(
        "invalidate-drops-locked",
        "csrc/cache.c",
        "        next = e->lnext;\n        if (e->lock == 0) {",
        "        next = e->lnext;\n        if (e->lock <= 1) {",
        "invalidate unmaps an entry with one lock",
    ),
    Mutant(
        "replace-ignores-records",
        "csrc/cache.c",
        "(e->lock && !records_valid(c, e))))",
        "(e->lock && records_valid(c, e) && false)))",
        "replace moves a locked mapping onto pages that cannot be mapped",
    ),
    Mutant(
        "copy-writes-before-checking",
        "csrc/cache.c",
        "        if ((rc = copy_map(c, at, chunk, flags, &p, &hits)) != XMC_OK)\n            break;\n",
        "        if ((rc = copy_map(c, at, chunk, flags, &p, &hits)) != XMC_OK)\n            break;\n"
        "        if (to_guest)\n            memcpy(p, buf + (at - paddr), chunk);\n",
        "a write copies each chunk as it maps it (a failed write is half done)",
    ),
    Mutant(
        "copy-keeps-pins",
        "csrc/cache.c",
        "    for (size_t i = 0; i < pinned && !c->closed; i++)\n        pieces[i].e->lock--;\n",
        "",
        "a copy across buckets leaves its entries pinned",
    ),
    Mutant(
        "close-hides-unmap-failure",
        "csrc/cache.c",
        "    return drain(c);",
        "    drain(c);\n    return XMC_OK;",
        "close() says nothing of an unmap that failed",
    ),
    Mutant(
        "fork-check-skipped",
        "csrc/cache.c",
        "    if (c->forked)\n        return XMC_EFORKED;\n",
        "",
        "a forked child waits for a mutex whose holder is gone",
    ),
    Mutant(
        "fork-marks-idle-caches",
        "csrc/cache.c",
        "&c->mutex.state, memory_order_relaxed) != 0 &&",
        "&c->mutex.state, memory_order_relaxed) == 0 &&",
        "the fork handler marks the idle caches instead of the busy ones",
    ),
    Mutant(
        "fork-marks-its-own-call",
        "csrc/cache.c",
        "atomic_load_explicit(&c->callback_thread, memory_order_relaxed) != self)",
        "atomic_load_explicit(&c->callback_thread, memory_order_relaxed) != ~self)",
        "a fork made from inside a cache's own callback leaves the cache unusable in the child",
    ),
    Mutant(
        "hit-skips-validation",
        "csrc/cache.c",
        "(atomic_load_explicit(&c->pub_gen, memory_order_relaxed) ^ done)",
        "(done ^ done)",
        "the lock-free hit never reads pub_gen after the copy: a read raced by a writer stands",
    ),
    Mutant(
        "hit-reads-half-published",
        "csrc/cache.c",
        "(atomic_load_explicit(&c->pub_gen, memory_order_relaxed) ^ done)",
        "(atomic_load_explicit(&c->pub_done, memory_order_relaxed) ^ done)",
        "the lock-free hit re-reads pub_done, not pub_gen: it takes a half-published last entry",
    ),
    Mutant(
        "hit-mask-off-by-one",
        "csrc/cache.c",
        "c->bucket_mask = ~(bucket - 1);",
        "c->bucket_mask = ~bucket;",
        "the lock-free hit's bucket mask keeps the offset bits: it matches paddr against the wrong base",
    ),
    Mutant(
        "publish-delta-from-index",
        "csrc/cache.c",
        "(uint64_t)(uintptr_t)vaddr - base",
        "(uint64_t)(uintptr_t)vaddr - index",
        "the published delta is taken from the bucket index, not its base address: hits land elsewhere",
    ),
    Mutant(
        "publish-ignores-new-mapping",
        "csrc/cache.c",
        " == base &&\n        atomic_load_explicit(&c->pub_delta, memory_order_relaxed) == delta)",
        " == base)",
        "a new last entry of the same bucket at another address is not published: hits return the old one",
    ),
    Mutant(
        "remap-keeps-published",
        "csrc/cache.c",
        "    if (fixed)\n        forget(c, e);\n",
        "",
        "the last entry stays published while it is remapped in place",
    ),
    Mutant(
        "unmap-keeps-published",
        "csrc/cache.c",
        "    forget(c, e);\n    c->st.entries--;",
        "    c->st.entries--;",
        "the last entry stays published while it is unmapped",
    ),
    Mutant(
        "publish-partly-mapped",
        "csrc/cache.c",
        "if (e && (e->flags & ENTRY_ALLVALID))",
        "if (e)",
        "a partly mapped last entry is published: a hit serves a page that is not mapped",
    ),
    Mutant(
        "traced-hits-unseen",
        "csrc/cache.c",
        "    publish(c, NULL, 0);\n    c->unusual",
        "    c->unusual",
        "switching a trace hook on leaves the last entry published: hits go untraced",
    ),
    Mutant(
        "callback-hits-without-lock",
        "csrc/cache.c",
        "atomic_store_explicit(&mine->owner, ~self, memory_order_relaxed);",
        "atomic_store_explicit(&mine->owner, self, memory_order_relaxed);",
        "a callback keeps its thread's hit slot: its hit into its own cache succeeds instead of XMC_EREENTER",
    ),
    Mutant(
        "fork-leaves-hits-on",
        "csrc/cache.c",
        "            atomic_fetch_add_explicit(&c->pub_gen, 1, memory_order_relaxed);\n",
        "",
        "a forked child of a busy cache still hits instead of XMC_EFORKED",
    ),
    Mutant(
        "lockfree-hit-uncounted",
        "csrc/cache.c",
        "atomic_load_explicit(&s->hits, memory_order_relaxed) + 1,",
        "atomic_load_explicit(&s->hits, memory_order_relaxed) + 0,",
        "a lock-free hit is not counted",
    ),
    Mutant(
        "stats-leave-out-thread-hits",
        "csrc/cache.c",
        "    out->hits += slot_hits(c);\n",
        "    out->hits += 0 * slot_hits(c);\n",
        "xmc_stats_get leaves out the hits the threads counted",
    ),
    Mutant(
        "ram-last-page-is-ram",
        "csrc/ram.c",
        "    else if (ram_pages - first < n)\n",
        "    else if (ram_pages - first + 1 < n)\n",
        "the page just past the end of guest RAM maps",
    ),
    Mutant(
        "ram-hole-end-rounded-down",
        "csrc/ram.c",
        "((ram->holes[h].end & (XMC_PAGE_SIZE - 1)) != 0);",
        "0;",
        "a hole ending inside a page leaves that page mapped",
    ),
    Mutant(
        "binding-read-ignores-error",
        "ffi/cache.h",
        "    rc = n ? xmc_py_copy_out(self, paddr, buf, n) : XMC_OK;\n    if (rc != XMC_OK) {",
        "    rc = n ? xmc_py_copy_out(self, paddr, buf, n) : XMC_OK;\n    if (rc != XMC_OK && rc == XMC_ENOMEM) {",
        "a failed read through the builtin returns zeros instead of raising",
    ),
    Mutant(
        "binding-map-ptr-drops-dma",
        "ffi/parser.h",
        "    *flags = lock ? XMC_LOCK | (dma ? XMC_DMA : 0u) : 0u;",
        "    *flags = lock ? XMC_LOCK : 0u;",
        "map_ptr(lock=True, dma=True) through the builtin forgets DMA",
    ),
    Mutant(
        "map-into-drops-last-page",
        "csrc/cache.c",
        "for (uint64_t p = 0; p < pages && !all; p++)",
        "for (uint64_t p = 0; p + 1 < pages && !all; p++)",
        "map_into leaves the last page of a partly mapped entry out of its valid bitmap",
    ),
    Mutant(
        "binding-free-list-keeps-state",
        "ffi/freelist.h",
        "    memset((char *)op + sizeof(PyObject), 0, size - sizeof(PyObject));\n",
        "",
        "a Mapping taken from the free list keeps the state of the one freed before",
    ),
    Mutant(
        "binding-unlock-retries-grant-failure",
        "ffi/cache.h",
        "    if (rc == XMC_ESYS /* unlocked, but a grant entry failed to unmap: never retried */ ||",
        "    if ((rc == XMC_ESYS && 0) ||",
        "a grant unmap that failed in the builtin unlock is retried, and its error lost",
    ),
    Mutant(
        "binding-int-wraps-negatives",
        "ffi/parser.h",
        "    if (v >= 0) {\n",
        "    if (v >= 0 || v < -1) {\n",
        "the builtins read a negative int as its value modulo 2**64",
    ),
    Mutant(
        "binding-ram-addr-32-bit",
        "ffi/cache.h",
        "        return NULL;\n    return PyLong_FromUnsignedLongLong((unsigned long long)paddr);",
        "        return NULL;\n    return PyLong_FromUnsignedLongLong((unsigned long long)(uint32_t)paddr);",
        "the builtin ram_addr truncates guest addresses to 32 bits",
    ),
]


def sources(dest: Path) -> None:
    """Copy the tracked and untracked (not ignored) files of the checkout to dest."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Run cmd; (passed, the tail of its output).  A timeout is a failure."""
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TIMEOUT} s"
    return done.returncode == 0, (done.stdout + done.stderr)[-20000:]


def build_extension(work: Path) -> tuple[bool, str]:
    """Compile xenmapcache._core in the scratch copy (no setuptools, no pip: cffi's C, then cc)."""
    (work / "build").mkdir(exist_ok=True)
    emit = (
        "import build_ffi, pathlib; build_ffi.ffibuilder.emit_c_code('build/_core.c'); "
        "pathlib.Path('build/sources.txt').write_text(' '.join(build_ffi.c_sources()))"
    )
    ok, out = run([PYTHON, "-c", emit], work)
    if not ok:
        return ok, out
    c_sources = (work / "build" / "sources.txt").read_text().split()
    include = sysconfig.get_paths()["include"]
    cmd = [
        os.environ.get("CC", "cc"), "-shared", "-fPIC", "-std=c11", "-O1", "-fvisibility=hidden",
        "-DPy_LIMITED_API=0x030C0000", f"-I{include}", "-Icsrc", "-Iffi", "build/_core.c",
        *c_sources,
        "-o", "xenmapcache/_core.abi3.so", "-pthread", "-ldl",
    ]  # fmt: skip
    return run(cmd, work)


def python_suite(work: Path) -> tuple[bool, str]:
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    return run([PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *FAST_SUITE], work, env)


def c_suite(work: Path) -> tuple[bool, str]:
    return run(["make", "-s", "-C", "csrc", "check"], work)


def first_failure(out: str) -> str:
    """The first failing test named in a stage's output, if any."""
    for line in out.splitlines():
        for prefix in ("FAIL ", "FAILED ", "ERROR "):
            if line.startswith(prefix):
                return line[len(prefix) :].split(" ")[0].split("::")[-1].rstrip(":")
    return "?"


def trial(work: Path, m: Mutant | None) -> tuple[str, float, str]:
    """Plant m (None: no bug) and run the stages: (what killed it or "survived", seconds, output)."""
    start = time.monotonic()
    if m is None or m.path.startswith("csrc/"):
        ok, out = c_suite(work)
        if not ok:
            return f"C tests ({first_failure(out)})", time.monotonic() - start, out
    ok, out = build_extension(work)
    if not ok:
        return "build", time.monotonic() - start, out
    ok, out = python_suite(work)
    if not ok:
        return f"Python tests ({first_failure(out)})", time.monotonic() - start, out
    return "survived", time.monotonic() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this mutant")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without a bug")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:<30} {m.path:<14} {m.why}")
        return 0
    if not chosen:
        parser.error(f"no mutant named {args.only}")
    for m in chosen:  # every mutant must still apply, exactly once
        count = (REPO / m.path).read_text().count(m.old)
        if count != 1:
            print(f"mutant {m.name}: its text occurs {count} times in {m.path}, not once: update the list", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="xmc-mutate-") as tmp:
        work = Path(tmp)
        sources(work)
        originals = {p: (work / p).read_text() for p in {m.path for m in chosen}}
        began = time.monotonic()
        if not args.no_baseline:
            verdict, seconds, out = trial(work, None)
            print(f"{'baseline (no bug)':<30} {'passes' if verdict == 'survived' else 'FAILS: ' + verdict} ({seconds:.0f} s)")
            if verdict != "survived":
                print(out, file=sys.stderr)
                return 2
        killed = 0
        for m in chosen:
            for path, text in originals.items():
                (work / path).write_text(text)
            (work / m.path).write_text(originals[m.path].replace(m.old, m.new, 1))
            verdict, seconds, out = trial(work, m)
            killed += verdict != "survived"
            print(f"{m.name:<30} {seconds:5.0f} s  {m.why}\n    {'killed by ' + verdict if verdict != 'survived' else 'SURVIVED'}")
            sys.stdout.flush()
        print(
            f"\nscore: {killed} of {len(chosen)} mutants killed ({100 * killed / len(chosen):.0f}%) "
            f"in {(time.monotonic() - began) / 60:.1f} minutes"
        )
        return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
