"""Command line: ``python -m xenmapcache demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xenmapcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="play an emulator's life through the mapcache")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo

        return demo.main()
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
