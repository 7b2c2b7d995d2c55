"""The main job, run as a user would: ``python -m xenmapcache demo``."""

import subprocess
import sys


def test_demo_warns_once_per_dma_transfer_and_never_for_device_memory() -> None:
    run = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-m", "xenmapcache", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    warned = [line for line in lines if line.strip().startswith("WARNING DMA mapping")]
    assert len(warned) == 4
    assert all("disk read #" in line for line in warned)
    assert not any("VRAM" in line or "option ROM" in line for line in warned)
    assert "4 of 4 transfers verified" in run.stdout
    assert lines[-1] == "demo finished: OK"
