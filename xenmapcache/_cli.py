"""What the commands (demo, bench, soak) share: a parser that refuses bad input in one line, before any work.

Every argument is checked while parsing: numbers are finite and in range,
output files can be written, and ``--plot`` finds matplotlib.  A refusal is
one line on stderr (``PROG: error: ...``) and exit status 2, argparse's own
status for bad usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ._version import __version__


def program() -> str:
    """How the user called us: ``xenmapcache`` (the console script) or ``python -m xenmapcache``."""
    return "xenmapcache" if Path(sys.argv[0]).name == "xenmapcache" else "python -m xenmapcache"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and which knows ``--version``."""

    def __init__(self, prog: str, description: str | None) -> None:
        super().__init__(prog=prog, description=description)
        self.add_argument("--version", action="version", version=f"xenmapcache {__version__}")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def count(limit: int) -> Callable[[str], int]:
    """An argparse type: an int in ``1..limit``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be from 1 to {limit}, not {value}")
        return value

    return parse


def seconds(limit: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds in ``(0, limit]`` (nan, inf and 1e308 refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or not 0 < value <= limit:
            raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 and at most {limit:g}, not {text}")
        return value

    return parse


def output_file(text: str) -> str:
    """An argparse type: a file we can create or overwrite (its directory exists and is writable)."""
    path = Path(text)
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: no directory {folder}")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
    return text


def plot_file(text: str) -> str:
    """An argparse type for ``--plot FILE.png``: an :func:`output_file`, and matplotlib is installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError("needs matplotlib: pip install 'xenmapcache[plot]'")
    return output_file(text)


def pyplot() -> Any:
    """matplotlib's ``pyplot`` on the Agg backend (files, no display), for ``--plot``.

    :raises SystemExit: matplotlib is missing (the optional extra:
        ``pip install 'xenmapcache[plot]'``); the commands check for it
        before they start (``plot_file``).

    Cost: the import of matplotlib, once.
    """
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'xenmapcache[plot]'") from exc
