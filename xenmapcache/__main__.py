"""Command line: ``python -m xenmapcache demo``, ``bench``, ``soak`` and ``replay``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xenmapcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="play an emulator's life through the mapcache")
    sub.add_parser(
        "bench",
        add_help=False,  # its own options: python -m xenmapcache bench --help
        help="measure the performance table (ratio vs target per row; --plot FILE.png for curves)",
    )
    sub.add_parser(
        "soak",
        add_help=False,  # its own options: python -m xenmapcache soak --help
        help="mixed traffic for --seconds N, failing on any drift or differing byte (--plot FILE.png)",
    )
    sub.add_parser(
        "replay",
        add_help=False,  # its own options: python -m xenmapcache replay --help
        help="play mapcache traces back on the C core, the reference, or both compared (--impl both)",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from . import demo

        return demo.main()
    if args.command == "bench":
        from . import bench

        return bench.main(rest)
    if args.command == "soak":
        from . import soak

        return soak.main(rest)
    if args.command == "replay":
        from . import replay

        return replay.main(rest)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
