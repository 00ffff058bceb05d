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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="masked multimodal pretraining from a YAML config")
    p.add_argument("--config", required=True, help="YAML config (see configs/default.yaml)")
    p.add_argument("--output", default=None, help="run folder (default: the config's 'output')")
    p.add_argument("--resume", action="store_true", help="continue from <output>/checkpoints/last.ckpt")
    p.add_argument("--max-steps", type=int, default=None, help="override training.max_steps (the schedule length)")
    p.add_argument("--stop-at-step", type=int, default=None, help="stop at this step, keeping the schedule (resume later)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax; repeatable), e.g. --set trainer.data_seed=1")
    p.set_defaults(func=_cmd_pretrain)

    d = sub.add_parser("demo", help="run the whole workflow on the embedded real data (offline)")
    d.add_argument("--output", default="storm_demo", help="output folder (default: storm_demo)")
    d.add_argument("--model", default=None, help="checkpoint folder (default: the embedded model)")
    d.add_argument("--device", default=None, help="cpu / cuda (default: a GPU when available)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from storm_st._demo import run_demo

    run_demo(args.output, model=args.model, device=args.device, show_progress=not args.no_progress)
    return 0


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from storm_st.train._runner import pretrain

    _setup_logging()
    path = pretrain(
        args.config, output=args.output, resume=args.resume, max_steps=args.max_steps, stop_at_step=args.stop_at_step,
        overrides=args.overrides,
    )
    print(f"model written to {path}")
    return 0


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
