"""The ``storm-st`` command line."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    from storm_st import __version__

    parser = argparse.ArgumentParser(
        prog="storm-st",
        description="STORM: multimodal foundation model of H&E histology and spatial transcriptomics.",
    )
    parser.add_argument("--version", action="version", version=f"storm-st {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``storm-st``."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
