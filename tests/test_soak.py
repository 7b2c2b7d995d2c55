"""The soak run (``python -m xenmapcache soak``): 60 seconds in every CI run.

Threads and forked children drive mixed traffic through colliding caches; the
command fails on any byte that differs from its shadow, any child that fails
or hangs, and any sample (RSS, fds, /proc/self/maps lines, entries, locked
mappings) that grows without bound.  docs/reliability-faults.md has a long run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xenmapcache import soak


def test_soak_60_seconds() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xenmapcache", "soak", "--seconds", "60"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "soak: ok" in done.stdout
    assert " 0 forked children" not in done.stdout  # children ran, and were checked


def test_drift_is_caught() -> None:
    flat = [{"t": float(t), "rss_mib": 50.0, "fds": 8.0, "maps_lines": 200.0, "entries": 40.0, "locked": 5.0} for t in range(40)]
    assert soak.drift(flat) == []
    leaking = [dict(s, maps_lines=200.0 + 4 * s["t"]) for s in flat]  # one mapping every quarter second
    assert [d.split(":")[0] for d in soak.drift(leaking)] == ["maps_lines"]
    growing = [dict(s, rss_mib=50.0 + s["t"]) for s in flat]
    assert [d.split(":")[0] for d in soak.drift(growing)] == ["rss_mib"]
    # Caches left to the garbage collector: a sawtooth of mappings is no drift, a rising one is.
    sawtooth = [dict(s, maps_lines=200.0 + 50 * (int(s["t"]) % 10)) for s in flat]
    assert soak.drift(sawtooth) == []
    rising = [dict(s, maps_lines=s["maps_lines"] + 4 * s["t"]) for s in sawtooth]
    assert [d.split(":")[0] for d in soak.drift(rising)] == ["maps_lines"]


def test_soak_plot_draws_its_curves(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "soak.png"
    done = subprocess.run(
        [sys.executable, "-m", "xenmapcache", "soak", "--seconds", "3", "--threads", "1", "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--seconds", "0"]])
def test_soak_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        soak.main(argv)
