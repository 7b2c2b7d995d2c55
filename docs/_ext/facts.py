"""Counts the documentation states, computed from the sources instead of typed.

``docs/conf.py`` hands them to MyST as substitutions (``{{ c_tests }}`` on a
page); the tests compare the ones they can with what actually runs (for
example, tests/test_c_suite.py: the C runner reports exactly ``c_tests()``).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def c_tests() -> int:
    """The C unit tests: the ``XT(name)`` rows of the tables in csrc/tests/."""
    return sum(len(re.findall(r"\bXT\(\w+\)", p.read_text())) for p in sorted((ROOT / "csrc" / "tests").glob("*.c")))


def python_test_functions() -> int:
    """Test functions (before parametrization) under tests/ and benchmarks/."""
    pattern = re.compile(r"^\s*def test_\w+\(", re.M)
    files = [*(ROOT / "tests").glob("test_*.py"), *(ROOT / "benchmarks").glob("test_*.py")]
    return sum(len(pattern.findall(p.read_text())) for p in files)


def make_default(variable: str) -> int:
    """The default of a ``VARIABLE ?= N`` line of csrc/Makefile."""
    m = re.search(rf"^{variable} \?= (\d+)$", (ROOT / "csrc" / "Makefile").read_text(), re.M)
    if m is None:
        raise LookupError(f"csrc/Makefile sets no default for {variable}")
    return int(m.group(1))


def model_profile(name: str) -> tuple[int, int, int]:
    """(sequences, most steps per sequence, fewest steps) of a tests/test_model.py profile."""
    text = (ROOT / "tests" / "test_model.py").read_text()
    m = re.search(rf'"{name}": \(([\d_]+), ([\d_]+), ([\d_]+)\)', text)
    if m is None:
        raise LookupError(f"tests/test_model.py has no profile {name!r}")
    a, b, c = (int(g.replace("_", "")) for g in m.groups())
    return a, b, c


def fuzz_corpus() -> int:
    """Inputs in the fuzzer's seed corpus (csrc/fuzz/corpus)."""
    return sum(1 for p in (ROOT / "csrc" / "fuzz" / "corpus").iterdir() if p.is_file())


def substitutions() -> dict[str, str]:
    """Everything above, formatted for the pages."""
    seqs, steps, min_steps = model_profile("ci")
    return {
        "c_tests": f"{c_tests():,}",
        "python_tests": f"{python_test_functions():,}",
        "stress_ops": f"{make_default('STRESS_OPS'):,}",
        "fuzz_seconds": f"{make_default('FUZZ_SECONDS')}",
        "model_sequences": f"{seqs:,}",
        "model_steps": f"{steps:,}",
        "model_min_steps": f"{min_steps:,}",
        "fuzz_corpus": f"{fuzz_corpus():,}",
    }
