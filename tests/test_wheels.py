"""The wheel a package index gets (docs/install.md): built, installed and tested as a user meets it.

``scripts/build-wheels.sh`` builds it here without containers (zig cc for an
old glibc, then auditwheel); it must be one ``cp312-abi3`` manylinux wheel
that needs nothing newer than its tag says.  It is installed into clean
virtual environments of CPython 3.12 and 3.13, and the contract tests run
there from a directory outside the source tree, so they import the installed
package and its compiled core; its console script answers ``--version`` and
runs ``bench``'s Python rows without a checkout.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ctools import REPO, run

from xenmapcache._version import __version__

# The contract tests: every one runs on the C core and on the reference (tests/conftest.py),
# with the helpers they share (threads.py; ctools.py, whose Flaky backend test_lifetimes.py uses).
CONTRACT_TESTS = (
    "conftest.py", "threads.py", "ctools.py", "test_smoke.py", "test_semantics.py", "test_pitfalls.py",
    "test_lifetimes.py",
    "test_scatter_gather.py", "test_trace.py", "test_safe_path.py",
)
GLIBC_BASELINE = (2, 17)  # manylinux2014, as scripts/build-wheels.sh builds by default


def interpreter(version: str) -> str:
    """A working CPython ``version`` (pyenv's, or ``pythonX.Y`` on PATH); missing fails under CI, else skips."""
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    candidates.append(shutil.which(f"python{version}") or "")
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and probe.stdout.strip() == version:  # a pyenv shim may not be
            return candidate
    message = f"no CPython {version} here to install the wheel into"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    run([REPO / "scripts" / "build-wheels.sh", out], cwd=REPO, env={**os.environ, "PYTHON": sys.executable})
    (built,) = out.glob("*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_is_one_abi3_manylinux_wheel(wheel: Path, tmp_path: Path) -> None:
    assert re.fullmatch(rf"xenmapcache-{re.escape(__version__)}-cp312-abi3-manylinux\S*_2_17_x86_64\.whl", wheel.name)
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (core,) = [n for n in names if re.fullmatch(r"xenmapcache/_core\.abi3\.so", n)]
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        entry_points = whl.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        assert "xenmapcache = xenmapcache.__main__:main" in entry_points
        assert not [n for n in names if ".libs/" in n]  # auditwheel had nothing to bundle
        whl.extract(core, tmp_path)
    symbols = run(["readelf", "--dyn-syms", "--wide", tmp_path / core]).stdout
    versions = {tuple(map(int, v.split("."))) for v in re.findall(r"@GLIBC_(\d+\.\d+(?:\.\d+)?)", symbols)}
    assert versions and max(versions) <= GLIBC_BASELINE, sorted(versions)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_the_contract_tests_pass_against_the_installed_wheel(wheel: Path, version: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([interpreter(version), "-m", "venv", venv])
    python = venv / "bin" / "python"
    # numpy: test_safe_path reads into numpy arrays, as users do.
    run([python, "-m", "pip", "install", "-q", wheel, "pytest", "numpy"])
    tests = tmp_path / "tests"
    tests.mkdir()
    for name in CONTRACT_TESTS:
        shutil.copy(REPO / "tests" / name, tests / name)
    where = run([python, "-c", "import xenmapcache._core as c; print(c.__file__)"], cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where  # the installed core, not the checkout's
    done = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests], cwd=tmp_path)
    assert re.search(r"\d+ passed", done.stdout) and " failed" not in done.stdout, done.stdout[-2000:]

    script = venv / "bin" / "xenmapcache"
    assert run([script, "--version"], cwd=tmp_path).stdout == f"xenmapcache {__version__}\n"
    bench = subprocess.run(
        [script, "bench", "--quick", "--rounds", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert bench.stdout.count("C rows: not measured: they need a checkout") == 1, bench.stdout + bench.stderr
    assert "the C rows are missing" not in bench.stdout and bench.returncode in (0, 1)  # 1: a noisy quick row
