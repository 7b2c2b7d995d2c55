"""``python -m xenmapcache replay``: traces written here, played back on both implementations.

The traces are recorded from the C core through :class:`TraceWriter` with the
results it gave, so a replay on either implementation must give them back;
the committed traces of a real guest (benchmarks/traces/) are replayed too.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import xenmapcache as xmc
from xenmapcache import reference, replay
from xenmapcache.replay import DMA, LOCK, OK, TraceWriter

TRACES = Path(__file__).resolve().parent.parent / "benchmarks" / "traces"
MiB = 1 << 20


def record(path: Path, seed: int, n: int = 600, ram_size: int = 64 * MiB, max_size: int = 0) -> dict[str, int]:
    """Drive the C core at random, as a device model would, and write what it did as a trace."""
    rng = random.Random(seed)
    counts = {"maps": 0, "dma": 0, "warnings": 0}
    opener = gzip.open if path.suffix == ".gz" else open
    with xmc.GuestRAM(ram_size) as ram, xmc.MapCache(ram, max_size=max_size or None) as cache, \
            opener(path, "wb") as f:
        w = TraceWriter(f, ram_size, max_size)  # type: ignore[arg-type]
        live: list[tuple[int, xmc.Mapping]] = []
        for i in range(n):
            roll = rng.random()
            if roll < 0.35 or not live:
                paddr = rng.randrange(0, ram_size - 2 * MiB) & ~0x1FF
                size = rng.choice([512, 4096, 65536, 3 * 4096 + 17])
                dma = rng.random() < 0.8
                m = cache.map(paddr, size, dma=dma, tag=i)
                live.append((i, m))
                w.map(paddr, size, LOCK | (DMA if dma else 0), i, OK, m.address, thread=i % 3)
                counts["maps"] += 1
                counts["dma"] += dma
            elif roll < 0.6:
                paddr = rng.randrange(0, ram_size)
                address = cache.map_ptr(paddr, 8)
                w.map(paddr, 8, 0, 0, OK, address)
                counts["maps"] += 1
            elif roll < 0.8:
                tag, m = live.pop(rng.randrange(len(live)))
                address = m.address
                cache.unlock(address)
                w.unlock(address, OK, tag)
            elif roll < 0.97:
                if rng.random() < 0.8:
                    address = rng.choice(live)[1].address
                    w.ram_addr(address, OK, cache.ram_addr(address))
                else:
                    w.ram_addr(0x1000, replay.ENOENT, replay.RAM_ADDR_INVALID)
            else:
                with pytest.warns(xmc.DMAMappingWarning) if any(m.dma for _t, m in live) else _nothing():
                    flight = cache.invalidate()
                w.invalidate([(lm.address, lm.size, lm.tag, lm.paddr) for lm in flight])
                counts["warnings"] += len(flight)
        # An unlock of an address never handed out, then one more invalidate.
        w.unlock(0x2000, replay.ENOENT)
        with pytest.warns(xmc.DMAMappingWarning) if any(m.dma for _t, m in live) else _nothing():
            flight = cache.invalidate()
        w.invalidate([(lm.address, lm.size, lm.tag, lm.paddr) for lm in flight])
        counts["warnings"] += len(flight)
        for _tag, m in live:
            m.release()
    return counts


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        status = replay.main([str(a) for a in args])
    return status, out.getvalue()


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("traces") / "random.xmct"
    return path, record(path, seed=21)


def test_both_implementations_give_back_every_recorded_result(trace: tuple[Path, dict[str, int]]) -> None:
    path, counts = trace
    status, out = run_cli(path, "--impl", "both")
    assert status == 0, out
    assert "c and reference agree on every result" in out
    assert f"{counts['dma']} DMA" in out
    assert out.count("us/call") == 2


def test_json_counts_calls_warnings_and_time(trace: tuple[Path, dict[str, int]]) -> None:
    path, counts = trace
    status, out = run_cli(path, "--impl", "c", "--json")
    assert status == 0
    [info] = json.loads(out)
    assert info["ops"]["map"] == counts["maps"] and info["dma_maps"] == counts["dma"]
    assert info["threads"] == 3
    [c] = info["results"]
    assert c["impl"] == "c" and c["hits"] + c["misses"] == counts["maps"]
    assert sum(c["dma_warnings"]) == counts["warnings"] and c["us_per_call"] > 0


def test_a_gzip_trace_and_a_smaller_max_size(tmp_path: Path) -> None:
    path = tmp_path / "small.xmct.gz"
    record(path, seed=5, n=300, max_size=8 * MiB)
    status, out = run_cli(path, "--impl", "both", "--json")
    assert status == 0, out
    full = json.loads(out)[0]["results"][0]
    status, out = run_cli(path, "--impl", "both", "--max-size", str(1 * MiB), "--json")
    assert status == 0, out
    small = json.loads(out)[0]["results"][0]
    assert small["misses"] >= full["misses"]


def test_a_result_that_differs_from_the_recorded_one_names_the_call(tmp_path: Path) -> None:
    path = tmp_path / "t.xmct"
    with open(path, "wb") as f:
        w = TraceWriter(f, 16 * MiB)
        w.map(0x3000, 4096, LOCK | DMA, 1, OK, 0x7000_0000_0000)
        w.ram_addr(0x7000_0000_0000, OK, 0x3000 + 1)  # wrong: the C core says 0x3000
    status, out = run_cli(path, "--impl", "c")
    assert status == 1
    assert "DIFFERENCE at call #1 ram_addr(0x700000000000)" in out
    assert "recorded (0, 12289), c gives (0, 12288)" in out


def test_a_difference_between_the_implementations_exits_1(trace: tuple[Path, dict[str, int]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path, _counts = trace
    real = reference.MapCache.ram_addr
    monkeypatch.setattr(reference.MapCache, "ram_addr", lambda self, a: real(self, a) + 4096)
    status, out = run_cli(path, "--impl", "both")
    assert status == 1
    assert "ram_addr(" in out and "c gives (0, " in out and "reference gives (0, " in out


def test_what_is_not_a_trace_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xmct"
    bad.write_bytes(b"not a trace at all, but long enough to hold a header...................")
    with pytest.raises(SystemExit) as exc:
        run_cli(bad)
    assert exc.value.code == 2
    newer = tmp_path / "newer.xmct"
    newer.write_bytes(replay.HEADER.pack(replay.MAGIC, 2, replay.RECORD.size, 1 << 20, 0, 0, 0, 0))
    with pytest.raises(replay.TraceError, match="version 2"):
        replay.read_trace(str(newer))
    cut = tmp_path / "cut.xmct"
    with open(cut, "wb") as f:
        TraceWriter(f, 1 << 20).invalidate([(1, 2, 3, 4)])
    cut.write_bytes(cut.read_bytes()[:-replay.RECORD.size])
    with pytest.raises(replay.TraceError, match="lacks its in-flight records"):
        replay.read_trace(str(cut))


def test_the_command_line_has_replay() -> None:
    from xenmapcache.__main__ import main

    with pytest.raises(SystemExit) as exc, redirect_stdout(io.StringIO()):
        main(["replay", "--help"])
    assert exc.value.code == 0


@pytest.mark.parametrize("path", sorted(TRACES.glob("*.xmct*")), ids=lambda p: p.name)
def test_committed_guest_traces_replay_identically(path: Path) -> None:
    status, out = run_cli(path, "--impl", "both")
    assert status == 0, out


def test_plot_sweeps_max_size_down_to_a_sixteenth(trace: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path, _counts = trace
    png = tmp_path / "misses.png"
    status, out = run_cli(path, "--plot", png)
    assert status == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sizes = [int(line.split("max_size ")[1].split(" MiB")[0]) for line in out.splitlines()]
    assert sizes == [64, 32, 16, 8, 4]
    misses = [int(line.split(" misses")[0].rsplit(" ", 1)[1]) for line in out.splitlines()]
    assert misses == sorted(misses)  # a smaller cache never misses less, on this trace


def test_the_c_replayer_checks_every_status_and_times_the_floor(trace: tuple[Path, dict[str, int]],
                                                                tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.skip("needs make and cc")
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    subprocess.run(["make", "-s", "-C", str(csrc), "build/replay"], check=True)
    path, _counts = trace
    proc = subprocess.run([csrc / "build" / "replay", "--rounds", "1", "--json", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["a"] > 0 and row["b"] > 0 and row["ratio"] == pytest.approx(row["a"] / row["b"], rel=0.01)
    # A recorded status the core does not give: the replayer names the call.
    bad = tmp_path / "bad.xmct"
    with open(bad, "wb") as f:
        w = TraceWriter(f, 16 * MiB)
        w.map(0x3000, 4096, LOCK | DMA, 1, OK, 0x7000_0000_0000)
        w.unlock(0x7000_0000_0000, replay.ENOENT)
    proc = subprocess.run([csrc / "build" / "replay", "--rounds", "1", bad], capture_output=True, text=True)
    assert proc.returncode == 1 and "call #1" in proc.stderr


def test_the_docs_quote_the_committed_guest_trace() -> None:
    """docs/qemu-build.md's last line and figures are those of the trace it commits."""
    import re

    path = TRACES / "linux-guest-disks-balloon.xmct.xz"
    text = (Path(__file__).resolve().parent.parent / "docs" / "qemu-build.md").read_text()
    m = re.search(r"^guest workload OK: (\d+) bytes verified; (\d+) maps \((\d+) DMA\), (\d+) hits, (\d+) misses; "
                  r"(\d+) DMA warnings at (\d+) invalidations$", text, flags=re.M)
    assert m, "no last line in docs/qemu-build.md"
    trace = replay.read_trace(str(path))
    info = replay.describe(trace)
    [c] = replay.replay(trace, "c")
    assert int(m.group(1)) >= 2 * 64 * MiB
    assert (int(m.group(2)), int(m.group(3))) == (info["ops"]["map"], info["dma_maps"])
    assert (int(m.group(4)), int(m.group(5))) == (c.hits, c.misses)
    assert (int(m.group(6)), int(m.group(7))) == (sum(c.dma_warnings), len(c.dma_warnings))
    assert f"{info['calls']} calls" in text
