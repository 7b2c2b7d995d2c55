"""Every code block of the README and of the docs pages works as written.

Blocks are told apart by the language of their fence:

- ``python``: run, each block alone, in a fresh interpreter;
- ``c``: compiled (``-Wall -Wextra -Werror``); a block with ``main`` is linked
  against ``csrc/libxenmapcache.a`` and run, and must exit 0; a block with no
  ``#include`` is a list of declarations, compiled after the two public
  headers, so it must agree with them;
- ``sh`` (or ``bash``, ``shell``, or no language): shell commands, checked to be the project's real
  ones (a script that exists, a make target the Makefile has, a subcommand and
  options ``python -m xenmapcache`` takes, paths that exist); not run, since
  they install and build (the suite runs those paths itself);
- ``text``: the marker for "not code" (listings, diagrams): never run.

Any other language fails, so a new block is either checked or says it is not code.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

import pytest
from ctools import CC, CSRC, LIBS, REPO, STRICT, make_csrc, run

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
# The README's two commands, byte for byte (.ci/run greps the second one).
DEMO_COMMAND = "scripts/setup.sh && .venv/bin/python -m xenmapcache demo"
TEST_COMMAND = "scripts/setup.sh test && .venv/bin/python -m pytest"


def blocks(lang: str) -> list[tuple[str, int, str]]:
    """(page, block number, code) of every fenced block in ``lang`` on every page."""
    found = []
    for page in PAGES:
        for n, m in enumerate(FENCE.finditer(page.read_text())):
            if m.group(1) == lang:
                found.append((str(page.relative_to(REPO)), n, m.group(2)))
    return found


def ids(found: list[tuple[str, int, str]]) -> list[str]:
    return [f"{page}#{n}" for page, n, _ in found]


SHELL_LANGS = ("sh", "bash", "shell", "")
PYTHON, C, SHELL = blocks("python"), blocks("c"), [b for lang in SHELL_LANGS for b in blocks(lang)]


def test_every_block_is_run_checked_or_marked_as_text() -> None:
    langs = {m.group(1) for page in PAGES for m in FENCE.finditer(page.read_text())}
    directives = {"{toctree}", "{eval-rst}", "{literalinclude}", "{c-header}", "{note}", "{warning}"}
    unknown = langs - {"python", "c", "text", *SHELL_LANGS, *directives}
    assert not unknown, f"blocks neither run nor checked: {unknown}; mark them ```text if they are not code"


def test_the_readme_shows_the_two_commands() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert DEMO_COMMAND in lines and TEST_COMMAND in lines
    assert f"test_command='{TEST_COMMAND}'" in (REPO / ".ci" / "run").read_text()


def test_the_readme_is_a_front_page() -> None:
    # Its links are absolute, for a package index (tests/test_metadata.py): the
    # length limit is on what it says, each link counted as the page's name.
    text = re.sub(r"\]\(https?://[^)]+/([\w.-]+)\)", r"](\1)", (REPO / "README.md").read_text())
    assert len(text.encode()) <= 6 * 1024


@pytest.mark.parametrize(("page", "n", "code"), PYTHON, ids=ids(PYTHON))
def test_python_block_runs(page: str, n: int, code: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, f"{page}, block {n}:\n{proc.stderr}"


def test_the_readme_example_prints_the_stats() -> None:
    code = next(code for page, _, code in PYTHON if page == "README.md")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("Stats(hits="), proc.stderr


@pytest.fixture(scope="module")
def library() -> Path:
    make_csrc("libxenmapcache.a")
    return CSRC / "libxenmapcache.a"


@pytest.mark.parametrize(("page", "n", "code"), C, ids=ids(C))
def test_c_block_compiles(page: str, n: int, code: str, library: Path, tmp_path: Path) -> None:
    source = tmp_path / "block.c"
    if "#include" not in code:  # a list of declarations: they must match the headers'
        code = '#include "xenmapcache.h"\n#include "xenmapcache_qemu.h"\n' + code
    source.write_text(code)
    flags = [CC, "-std=c11", *STRICT, f"-I{CSRC}"]
    if re.search(r"^int main\(", code, re.M):
        run([*flags, source, library, *LIBS, "-o", tmp_path / "block"])
        run([tmp_path / "block"], cwd=tmp_path)
    else:
        run([*flags, "-c", source, "-o", tmp_path / "block.o"])


def makefile_targets() -> set[str]:
    text = (CSRC / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, re.M))


def cli_help(*command: str) -> str:
    """What ``python -m xenmapcache COMMAND --help`` prints."""
    return subprocess.run(
        [sys.executable, "-m", "xenmapcache", *command, "--help"], capture_output=True, text=True, timeout=60
    ).stdout


def subcommands() -> set[str]:
    m = re.search(r"\{([\w,-]+)\}", cli_help())
    assert m, cli_help()
    return set(m.group(1).split(","))


def check_command(command: str, built: Collection[str] = ()) -> None:
    """Fail unless ``command`` names things this repository has (or ``built``, its block's ``-o`` outputs)."""
    argv = shlex.split(command, comments=True)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value prefixes
        argv.pop(0)
    assert argv, command
    head, args = argv[0], argv[1:]
    if head == "xenmapcache":  # the console script
        head, args = ".venv/bin/python", ["-m", *argv]
    if head == "export":
        assert args and all(re.fullmatch(r"[A-Z_]+=\S+", a) for a in args), command
    elif head.startswith("./"):
        assert head[2:] in built, command
    elif head in ("python3", ".venv/bin/python") and args[:3] == ["-m", "pip", "install"]:
        for arg in args[3:]:  # this package (with extras), or a checkout or file that exists
            assert arg.startswith("-") or re.fullmatch(r"xenmapcache(\[\w+\])?", arg) or (REPO / arg).exists(), command
    elif head.startswith("scripts/"):
        takes_outdir = head == "scripts/build-wheels.sh" and len(args) == 1
        assert (REPO / head).is_file() and (args in ([], ["test"]) or takes_outdir), command
    elif head.startswith("contrib/"):
        assert (REPO / head).is_file(), command
    elif head == ".venv/bin/python" and args[:2] == ["-m", "xenmapcache"]:
        sub, options = args[2], args[3:]
        assert sub in subcommands() or (sub.startswith("--") and sub in cli_help()), command
        if options:
            help_text = cli_help(sub)
            for option in options:
                assert not option.startswith("-") or option.split("=")[0] in help_text, (option, command)
    elif head == ".venv/bin/python" and args and args[0].startswith("scripts/"):
        assert (REPO / args[0]).is_file(), command
    elif head == ".venv/bin/python" and args[:2] == ["-m", "pytest"]:
        for arg in args[2:]:
            assert arg.startswith("-") or (REPO / arg).exists(), command
    elif head == ".venv/bin/python" and args[:2] == ["-m", "sphinx"]:
        assert "docs" in args, command
    elif head == "make":
        assert args[:2] == ["-C", "csrc"], command
        targets = [a for a in args[2:] if "=" not in a]
        assert all(t in makefile_targets() for t in targets), command
    elif head in ("cc", "c++"):
        for arg in args:
            if arg.startswith("csrc/") and not arg.startswith("csrc/lib"):
                assert (REPO / arg).exists(), command
        assert any("xenmapcache" in a for a in args), command
    else:
        pytest.fail(f"unknown command in a shell block (mark the block `text` if it is not one): {command}")


@pytest.mark.parametrize(("page", "n", "code"), SHELL, ids=ids(SHELL))
def test_shell_block_names_real_commands(page: str, n: int, code: str) -> None:
    built = set(re.findall(r"\s-o\s+(\S+)", code))
    for line in code.splitlines():
        for command in line.split("&&"):
            if command.strip() and not command.strip().startswith("#"):
                check_command(command.strip(), built)
