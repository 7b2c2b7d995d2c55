"""``python -m xenmapcache bench`` runs the table (briefly) and can draw the curves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xenmapcache import bench


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xenmapcache", "bench", "--quick", "--rounds", "2", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bench_prints_every_row_with_its_target() -> None:
    proc = run("--no-c")
    assert proc.returncode in (0, 1), proc.stderr  # 1: a target missed (quick runs are noisy)
    for row in bench.ROWS:
        assert row.path in proc.stdout
    assert "rows meet their target" in proc.stdout
    assert "[" in proc.stderr and "/" in proc.stderr  # the progress bar


def test_bench_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    proc = run("--plot", str(out))
    assert proc.returncode in (0, 1), proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
