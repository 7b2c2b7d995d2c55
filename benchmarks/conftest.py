"""pytest-benchmark suite: the performance table of issue 4, one group per row.

The workloads live in ``xenmapcache.bench`` (``python -m xenmapcache bench``
runs the same sides); here each side is timed by pytest-benchmark as
``benchmark(fn, *args)``, and the two sides of a row share a group so their
ratio is read from one run.  At the end of a measured run the ratios are
printed against their targets.  A plain ``pytest`` run keeps the rounds few
and short (see ``[tool.pytest.ini_options]``): it proves every benchmark works;
for figures, run ``python -m xenmapcache bench`` or pass
``--benchmark-max-time=1 --benchmark-min-rounds=20``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from xenmapcache import bench

# (group, label) -> fastest time of that side in seconds, filled by the tests.
MEASURED: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="session")
def resources() -> Iterator[bench.Resources]:
    """Guest RAM and caches shared by every benchmark of the session."""
    with bench.Resources() as res:
        yield res


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = []
    for row in bench.ROWS:
        a = MEASURED.get((row.group, row.measured.label))
        b = MEASURED.get((row.group, row.baseline.label))
        if a is None or b is None:
            continue
        ratio = a / b
        verdict = "meets" if row.passes(ratio) else "MISSES"
        lines.append(f"{row.path:<46} {ratio:6.2f}x  target {row.target_text:<8} {verdict}  ({row.measured_as})")
    if lines:
        terminalreporter.section("performance table: measured ratio vs target (noisy when runs are short)")
        for line in lines:
            terminalreporter.write_line(line)
