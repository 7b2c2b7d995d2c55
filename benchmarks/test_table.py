"""Every row of the performance table, both sides, through pytest-benchmark."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from xenmapcache import bench

from .conftest import MEASURED

SIDES = [(row, side) for row in bench.ROWS for side in (row.measured, row.baseline, *row.extra)]


@pytest.mark.parametrize(("row", "side"), SIDES, ids=[f"{row.group}-{side.label}" for row, side in SIDES])
def test_row(benchmark: Any, resources: bench.Resources, row: bench.Row, side: bench.Side) -> None:
    benchmark.group = f"{row.group}: {row.path} ({row.measured_as})"
    with contextlib.ExitStack() as stack:
        try:
            fn, args = stack.enter_context(side.setup(resources))
        except bench.Unavailable as exc:
            pytest.skip(str(exc))
        benchmark(fn, *args)
    if benchmark.stats is not None:  # None under --benchmark-disable
        MEASURED[(row.group, side.label)] = benchmark.stats.stats.min
