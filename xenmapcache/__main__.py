"""Command line: ``xenmapcache demo``, ``bench``, ``soak`` and ``replay`` (also as ``python -m xenmapcache``)."""

from __future__ import annotations

import argparse
import sys

from ._cli import Parser, program


def main(argv: list[str] | None = None) -> int:
    """The ``xenmapcache`` console script: run one command, return its exit status."""
    prog = program()
    parser = Parser(prog, __doc__)
    # The commands parse their own options (xenmapcache bench --help).
    sub = parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)
    sub.add_parser("demo", add_help=False, help="play an emulator's life through the mapcache")
    sub.add_parser(
        "bench",
        add_help=False,
        help="measure the performance table (ratio vs target per row; --plot FILE.png for curves)",
    )
    sub.add_parser(
        "soak",
        add_help=False,
        help="mixed traffic for --seconds N, failing on any drift or differing byte (--plot FILE.png)",
    )
    sub.add_parser(
        "replay",
        add_help=False,
        help="play mapcache traces back on the C core, the reference, or both compared (--impl both)",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from . import demo

        return demo.main(rest, prog=f"{prog} demo")
    if args.command == "bench":
        from . import bench

        return bench.main(rest, prog=f"{prog} bench")
    if args.command == "soak":
        from . import soak

        return soak.main(rest, prog=f"{prog} soak")
    if args.command == "replay":
        from . import replay

        return replay.main(rest, prog=f"{prog} replay")
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
