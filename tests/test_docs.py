"""The documentation: the site builds with warnings as errors, and what it says is complete and true.

- the Sphinx site under docs/ builds with ``-W`` (a broken reference, a bad
  page, an autodoc import failure fails the test);
- every public Python name (``xenmapcache.__all__`` and their public methods and
  properties) has a docstring; every method's says what it raises and what it
  costs;
- every function of the public C headers has a header comment that says its
  errors and its cost (the C API page renders those comments);
- the counts and figures the pages state agree with their sources.

Code blocks and examples are run by tests/test_readme.py and tests/test_examples.py.
"""

from __future__ import annotations

import builtins
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import xenmapcache

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def load_ext(name: str) -> ModuleType:
    """A module of docs/_ext (they are not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"docs_ext_{name}", DOCS / "_ext" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-10000:]
    api = (tmp_path / "html" / "python-api.html").read_text()
    for name in xenmapcache.__all__:
        assert f'id="xenmapcache.{name}"' in api, name
    # The C API is in Sphinx's C domain: every function of both headers, and
    # every xmc_*/XMC_* name of the native one, has its anchor and index entry.
    c_api = (tmp_path / "html" / "c-api.html").read_text()
    index = (tmp_path / "html" / "genindex.html").read_text()
    native = re.sub(r"/\*.*?\*/", "", (REPO / "csrc" / "xenmapcache.h").read_text(), flags=re.S)
    names = set(re.findall(r"\b((?:xmc|XMC)_\w+)\b", native))
    names |= {*c_functions(REPO / "csrc" / "xenmapcache.h"), *c_functions(REPO / "csrc" / "xenmapcache_qemu.h")}
    assert "xmc_map" in names and "xen_map_cache" in names and "xmc_backend" in names
    for name in sorted(names):
        assert f'id="c.{name}"' in c_api, name
        assert f'c-api.html#c.{name}"' in index, name


def public_members() -> list[tuple[str, object]]:
    """Every public name, and the public methods and properties of the classes among them."""
    found: list[tuple[str, object]] = []
    for name in xenmapcache.__all__:
        obj = getattr(xenmapcache, name)
        found.append((name, obj))
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attr, value in vars(obj).items():
                if attr.startswith("_") and attr not in ("__init__",):
                    continue
                if attr == "__init__" or not (inspect.isfunction(value) or isinstance(value, (property, classmethod))):
                    continue
                found.append((f"{name}.{attr}", value))
    return found


def is_method(obj: object) -> bool:
    return inspect.isfunction(obj) or isinstance(obj, classmethod)


@pytest.mark.parametrize(("name", "obj"), public_members(), ids=[n for n, _ in public_members()])
def test_every_public_name_has_a_docstring(name: str, obj: object) -> None:
    if name == "__version__":
        return  # a string: documented on the API page
    doc = inspect.getdoc(obj.__func__ if isinstance(obj, classmethod) else obj)
    assert doc and len(doc) > 20, f"{name} has no real docstring"
    if is_method(obj):
        assert ":raises" in doc or "Raises nothing" in doc, f"{name}: say what it raises"
        assert "Cost:" in doc, f"{name}: say what it costs"


def c_functions(header: Path) -> list[str]:
    """Names of the functions a header declares."""
    text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
    return re.findall(r"^[A-Za-z_][\w \*]*?\b(\w+)\((?!\*)", text, re.M)


@pytest.mark.parametrize("header", ["xenmapcache.h", "xenmapcache_qemu.h"])
def test_every_c_function_has_a_header_comment_with_errors_and_cost(header: str) -> None:
    cheader = load_ext("cheader")
    path = REPO / "csrc" / header
    documented: dict[str, str] = {}
    last = ""
    for comment, code in cheader.blocks(path.read_text()):
        last = comment or last  # declarations right after a comment's block share it
        for name in re.findall(r"\b(\w+)\((?!\*)", re.sub(r"/\*.*?\*/", "", code, flags=re.S)):
            documented[name] = last
    names = c_functions(path)
    assert names
    for name in names:
        comment = documented.get(name, "")
        assert comment, f"{header}: {name} has no comment"
        assert "Cost:" in comment, f"{header}: {name}: say what it costs"
        says_errors = "Errors:" in comment or "XMC_E" in comment or "never fails" in comment.lower()
        assert says_errors, f"{header}: {name}: say its errors (the XMC_E* codes it returns, or that it never fails)"


def test_the_counts_on_the_pages_are_computed() -> None:
    facts = load_ext("facts")
    subs = facts.substitutions()
    assert int(subs["c_tests"]) >= 70
    reliability = (DOCS / "reliability.md").read_text()
    for key in subs:
        if key != "python_tests" or "python_tests" in reliability:
            assert "{{ " + key + " }}" in reliability, key
    assert not re.search(r"\b\d+ tests\b", reliability), "a typed test count: use a substitution of docs/_ext/facts.py"


def perf_table() -> list[list[str]]:
    text = (DOCS / "performance.md").read_text()
    table = text.split("## The table", 1)[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def number(cell: str) -> float:
    return float(cell.split()[0].rstrip("x").replace(",", ""))


def test_the_performance_table_is_consistent() -> None:
    rows = perf_table()
    text = (DOCS / "performance.md").read_text()
    # A row that missed its target in the run is shown as such, never dropped.
    m = re.search(r"(\d+) of (\d+) rows meet their target", text)
    assert m and int(m.group(2)) == len(rows)
    assert int(m.group(1)) == sum(r[6].startswith("pass") for r in rows)
    for path, measured_as, measured, baseline, ratio, _target, verdict in rows:
        assert verdict.startswith(("pass", "miss")), path
        if baseline:
            a, b = number(measured), number(baseline)
            # the cells are rounded to 0.1 (times) and 0.01 (ratios): allow for that
            expected = a / b
            slack = expected * (0.05 / a + 0.05 / b) + 0.005
            assert abs(expected - number(ratio)) <= slack, (path, measured_as, expected, ratio)


def test_the_performance_table_has_the_rows_and_targets_of_the_bench_command() -> None:
    from xenmapcache import bench

    python_rows = [r for r in perf_table() if not r[0].startswith(("C:", "memory"))]
    assert len(python_rows) == len(bench.ROWS)
    for row, cells in zip(bench.ROWS, python_rows, strict=True):
        assert cells[0].replace("`", "").startswith(row.path), (row.path, cells[0])
        assert cells[5] == row.target_text, (row.path, cells[5])


def test_the_prose_of_the_performance_page_quotes_the_table() -> None:
    rows = {(r[0], r[1]): r for r in perf_table()}
    text = " ".join((DOCS / "performance.md").read_text().split())
    hit = rows[("C: fast-path hit", "vs pthread mutex lock+unlock in a called function")]
    assert f"({hit[2]} against {hit[3]} in the table)" in text
    assert f"mutex ({hit[2]})" in text


def test_the_readme_figures_come_from_the_table() -> None:
    rows = {(r[0], r[1]): r for r in perf_table()}
    readme = (REPO / "README.md").read_text()
    hit = rows[("C: fast-path hit", "vs pthread mutex lock+unlock in a called function")]
    assert f"**{hit[2]}** in C" in readme and f"({hit[3]})" in readme
    fifo = rows[("DMA FIFO: unlock the oldest, lock a new one", "N = 10,000 vs N = 10")]
    assert f"costs {number(fifo[4]):.1f}x what" in readme
    c_fifo = rows[("C: FIFO unlock-oldest + lock-new", "10,000 outstanding vs 10")]
    assert f"this {round(number(c_fifo[2]))} ns" in readme
    mixed = rows[("mixed emulator workload (per request)", "`xenmapcache.reference` vs the C core (speed-up)")]
    assert f"{round(number(mixed[4]))}x faster than the pure-Python reference" in readme
    qemu = re.search(r"FIFO unlock with 10,000 in flight ([\d.]+ us)", (DOCS / "performance.md").read_text())
    assert qemu and f"QEMU's list walk takes {qemu.group(1)} there" in readme
    no_op = rows[("fast-path hit from Python, `map_ptr(p)`", "vs a no-op builtin of the binding, same argument list")]
    assert f"`map_ptr(p)` costs {number(no_op[4]):.1f}x a no-op builtin" in readme
    safe = rows[("`m = cache.map(p, 4096, dma=True); m.release()`", "vs `a = map_ptr(p, 4096, True, True); unlock(a)`")]
    assert f"{number(safe[4]):.2f}x the raw" in readme


def test_the_code_cites_the_contract_by_its_sections() -> None:
    sections = set(re.findall(r"^\(contract-(\d+)\)=$", (DOCS / "contract.md").read_text(), re.M))
    cited = 0
    for folder in ("csrc", "ffi", "xenmapcache", "tests", "benchmarks", "examples"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in (".c", ".h", ".py", ".pyi") or path.name == "test_docs.py":
                continue
            text = path.read_text()
            assert "DESIGN.md" not in text, f"{path}: cite docs/contract.md, section N (DESIGN.md is not in the repository)"
            for n in re.findall(r"docs/contract\.md, sections? (\d+)", text):
                assert n in sections, f"{path} cites section {n} of docs/contract.md, which has no such section"
                cited += 1
    assert cited >= 10


def contract_section(n: int) -> str:
    text = (DOCS / "contract.md").read_text()
    return text.split(f"(contract-{n})=", 1)[1].split(f"(contract-{n + 1})=", 1)[0]


def test_the_fixed_names_of_the_contract_exist() -> None:
    python = contract_section(6)
    names = set(re.findall(r"\bxmc\.(\w+)", python)) | set(re.findall(r"`(\w+(?:Error|Mapping|Address|Overflow|Unavailable|Warning))`", python))
    assert {"GuestRAM", "MapCache", "MappingError", "DMAMappingWarning"} <= names
    for name in names - set(dir(builtins)):
        assert name in xenmapcache.__all__, name
    for method in re.findall(r"\bcache\.(\w+)\(", python):
        assert callable(getattr(xenmapcache.MapCache, method)), method
    header = (REPO / "csrc" / "xenmapcache.h").read_text()
    for name in re.findall(r"\b(xmc_\w+)\(", contract_section(7)):
        assert re.search(rf"\b{name}\(", header), name
