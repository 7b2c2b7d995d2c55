"""The README's API tour runs as written (its first Python block)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_api_tour_runs() -> None:
    tour = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    run = subprocess.run([sys.executable, "-c", tour], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Stats(hits=")
