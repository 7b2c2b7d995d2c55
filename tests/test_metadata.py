"""The front door: metadata a package index shows, links that work from there, and a command line
that refuses bad input before it does any work.

- LICENSE, classifiers, project URLs, the ``xenmapcache`` console script and ``--version``;
- the README's links are absolute, and every docs-site link (README, docstrings) names a page
  that exists; no docstring points at a ``docs/*.md`` path a pip user does not have;
- every command checks its arguments first: a bad one exits 2 with one line and no output;
- progress is redrawn with ``\\r`` only on a terminal; ``bench`` without a checkout runs the
  Python rows and says once that the C rows need one; plot titles say what the run found.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from ctools import REPO

from xenmapcache import bench, soak
from xenmapcache._version import __version__

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DOCS_URL = PROJECT["urls"]["Documentation"]


def test_license_classifiers_and_urls() -> None:
    assert "MIT License" in (REPO / "LICENSE").read_text()
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    meta = importlib.metadata.metadata("xenmapcache")
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    for needed in ("Programming Language :: Python :: 3.12", "Programming Language :: Python :: 3.13",
                   "Operating System :: POSIX :: Linux", "Typing :: Typed"):
        assert needed in classifiers, needed
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Documentation", "Source", "Issues", "Changelog"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())


def docs_links(text: str) -> list[str]:
    return re.findall(re.escape(DOCS_URL) + r"([\w.#-]*)", text)


def assert_pages_exist(links: list[str], where: str) -> None:
    for link in links:
        page = link.split("#")[0]
        assert page.endswith(".html"), (where, link)
        assert (REPO / "docs" / page.replace(".html", ".md")).is_file(), (where, link)


def test_readme_links_are_absolute_and_reach_real_pages() -> None:
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert targets
    assert [t for t in targets if not t.startswith("https://")] == []
    assert_pages_exist(docs_links(text), "README.md")
    assert "install.html" in text


def test_docstrings_point_at_the_docs_site() -> None:
    for source in sorted((REPO / "xenmapcache").glob("*.py*")):
        text = source.read_text()
        assert not re.search(r"docs/[\w-]+\.md", text), f"{source.name}: a repository path, not the docs site"
        assert_pages_exist(docs_links(text), source.name)
    import xenmapcache

    assert docs_links(xenmapcache.__doc__ or "") and docs_links(xenmapcache.MapCache.__doc__ or "")


def test_console_script_and_version() -> None:
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "xenmapcache"]
    assert script.value == "xenmapcache.__main__:main"
    installed = Path(sys.executable).parent / "xenmapcache"
    for argv in ([str(installed)], [sys.executable, "-m", "xenmapcache"]):
        done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout == f"xenmapcache {__version__}\n", done
    usage = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=60).stdout
    assert usage.startswith("usage: xenmapcache ")


NO_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; from xenmapcache.__main__ import main; sys.exit(main())"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["bench", "--rounds", "-1"], "--rounds: must be from 1"),
        (["bench", "--rounds", "0"], "--rounds: must be from 1"),
        (["bench", "--rounds", "two"], "--rounds: not a whole number"),
        (["bench", "--json", "/missing/dir/rows.json"], "--json: cannot write /missing/dir/rows.json"),
        (["bench", "--plot", "/"], "--plot: / is a directory"),
        (["soak", "--seconds", "nan"], "--seconds: must be a number of seconds"),
        (["soak", "--seconds", "inf"], "--seconds: must be a number of seconds"),
        (["soak", "--seconds", "1e308"], "--seconds: must be a number of seconds"),
        (["soak", "--seconds", "0"], "--seconds: must be a number of seconds"),
        (["soak", "--child-every", "nan"], "--child-every: must be a number of seconds"),
        (["soak", "--threads", "0"], "--threads: must be from 1"),
        (["soak", "--plot", "/missing/dir/soak.png"], "--plot: cannot write"),
        (["replay", "--max-size", "0", "t.xmct"], "--max-size: must be from 1"),
        (["replay", "--impl", "rust", "t.xmct"], "--impl: invalid choice"),
        (["replay", "missing.xmct"], "No such file or directory: 'missing.xmct'"),
        (["replay", "--plot", "/", "t.xmct"], "--plot: / is a directory"),
        (["demo", "--fast"], "unrecognized arguments: --fast"),
        (["nonsense"], "invalid choice"),
        (["-c", NO_MATPLOTLIB, "bench", "--plot", "x.png"], "--plot: needs matplotlib"),
        (["-c", NO_MATPLOTLIB, "soak", "--plot", "x.png"], "--plot: needs matplotlib"),
    ],
)
def test_a_bad_argument_is_refused_in_one_line_before_any_work(argv: list[str], says: str, tmp_path: Path) -> None:
    command = [sys.executable, *(argv if argv[0] == "-c" else ["-m", "xenmapcache", *argv])]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr  # one line, nothing run
    assert says in done.stderr and done.stderr.startswith("python -m xenmapcache"), done.stderr
    assert time.monotonic() - started < 20  # refused at once, not after a run
    assert not (tmp_path / "x.png").exists()


def test_bench_without_a_checkout_runs_the_python_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "ROWS", bench.ROWS[:1])
    monkeypatch.setattr(bench, "source_tree", lambda: None)  # as installed from a wheel

    def no_c(*args: object) -> object:
        raise AssertionError("the C benchmark was attempted without a checkout")

    monkeypatch.setattr(bench, "run_c", no_c)
    out = io.StringIO()
    status = bench.main(["--quick", "--rounds", "1"], out=out)
    text = out.getvalue()
    assert text.count("need a checkout") == 1 and "the C rows are missing" not in text
    assert bench.ROWS[0].path in text
    assert status == (0 if "1 of 1 rows meet" in text else 1)  # the Python row's own verdict only


def test_soak_redraws_progress_only_on_a_terminal() -> None:
    argv = [sys.executable, "-m", "xenmapcache", "soak", "--seconds", "2", "--threads", "1", "--child-every", "60"]
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stdout + piped.stderr[-2000:]
    assert "\r" not in piped.stderr and "soak " in piped.stderr  # a plain line for a log file
    primary, secondary = os.openpty()
    try:
        tty = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=secondary, timeout=120)
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    assert tty.returncode == 0
    assert b"\rsoak " in seen


def test_plot_titles_say_what_the_run_found() -> None:
    flat = {"FIFO cycle, Python API, C core": [(1, 100.0), (100_000, 110.0)]}
    growing = {**flat, "reverse lookup, Python API, reference": [(1, 100.0), (100_000, 5000.0)]}
    assert bench.growth(flat, "cycle") == "at most 1.1x from 1 to 100,000 (FIFO cycle, Python API, C core)"
    assert "at most 50.0x" in bench.growth(growing, "cycle") and "reference" in bench.growth(growing, "cycle")
    assert soak.verdict([]) == "ok, nothing drifted and every byte matched"
    assert soak.verdict(["grows without bound: rss_mib: 50.0 -> 90.0", "thread 0: boom"]) == (
        "FAILED: grows without bound: rss_mib: 50.0 -> 90.0 (and 1 more)"
    )
