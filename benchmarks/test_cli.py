"""``python -m xenmapcache bench`` runs the table (briefly) and can draw the curves."""

from __future__ import annotations

import json
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


def test_bench_plot_and_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, rows = tmp_path / "curves.png", tmp_path / "rows.json"
    proc = run("--plot", str(out), "--json", str(rows))
    assert proc.returncode in (0, 1), proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["row"] for r in written[: len(bench.ROWS)]] == [row.path for row in bench.ROWS]
    assert any(r["row"].startswith("C ") for r in written)  # the C rows too
    for r in written:  # every line of the printed table, with the same verdict
        assert f"{r['ratio']:.2f}x" in proc.stdout and isinstance(r["passed"], bool)


def test_a_missing_row_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import io
    from collections.abc import Iterator

    @contextlib.contextmanager
    def unavailable(res: bench.Resources) -> Iterator[bench.Call]:
        raise bench.Unavailable("not here")
        yield  # pragma: no cover

    side = bench.Side("x", unavailable)
    monkeypatch.setattr(bench, "ROWS", (bench.Row("g", "a row that cannot run", "x", side, side, 1.0),))
    out = io.StringIO()
    assert bench.main(["--quick", "--rounds", "1", "--no-c"], out=out) == 1
    assert "missing: not here" in out.getvalue()


def test_a_failed_c_benchmark_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(bench, "ROWS", bench.ROWS[:1])  # the hit row: quick
    monkeypatch.setattr(bench, "run_c", lambda quick, scaling: ([], [], "the C benchmark failed:\nboom"))
    out = io.StringIO()
    assert bench.main(["--quick", "--rounds", "1"], out=out) == 1
    assert "the C rows are missing" in out.getvalue()
