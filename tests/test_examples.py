"""The Python examples under examples/ run as a user runs them (the C ones: tests/test_qemu_api.py).

Every ``examples/*.py`` must run and exit 0; the tour and the device model
are also checked for what they show.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_python_example_runs(name: str) -> None:
    proc = run(name)
    assert proc.returncode == 0, proc.stderr


def test_the_tour() -> None:
    proc = run("tour.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("Stats(hits=")
    assert "refused:" in proc.stdout  # the read in the PCI hole


def test_the_device_model_warns_about_dma_in_flight_only() -> None:
    proc = run("device_model.py")
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stdout.splitlines() if line.startswith("warning: DMA mapping")]
    assert len(warned) == 3 and not any("VRAM" in line for line in warned)
    assert "6 transfers verified in guest RAM, 3 warned about" in proc.stdout
    assert "3 DMA mapping(s) in flight" in proc.stderr  # the summary on the xenmapcache logger


def test_the_virtio_blk_model_warns_about_exactly_the_requests_in_flight() -> None:
    proc = run("virtio_blk.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "balloon: invalidate() with 3 requests in flight" in out
    warned = [line for line in out if line.startswith("warning: DMA mapping")]
    assert len(warned) == 3 and all("in flight" in line for line in warned)
    buffers = sum(int(line.split("in flight (", 1)[1].split()[0]) for line in warned)
    assert f"{buffers} buffers warned about" in out[-2]
    assert "40 requests served" in out[-2]
    assert out[-1] == "guest RAM and disk image verified byte for byte"
    assert f"{buffers} DMA mapping(s) in flight" in proc.stderr  # the summary on the xenmapcache logger
    summary = next(line for line in proc.stderr.splitlines() if "DMA mapping(s) in flight" in line)
    for line in warned:  # each request once, with its count of buffers
        tag, count = line.split("warning: DMA mapping ", 1)[1].split(" in flight (")
        count = count.split()[0]
        assert summary.count(tag) == 1 and (f"{tag} ({count} mappings)" in summary or count == "1")
