"""storm_st benchmark harness.

    python benchmarks/run.py --suite quick|full [--train C2 C3 C4] [--test C5 C6] [--data PATH]
                             [--model default|PATH] [--tasks expression,domains,speed] [--out docs/benchmarks.md]

Each task writes ``benchmarks/results/<suite>_<task>.json`` (raw results, with the exact command, machine,
package versions and date); the Markdown report ``--out`` is then rendered from every results file present,
with figures under ``docs/_static/benchmarks/``. Slides are HER2ST section names (``C2``), ``dlpfc:151673``,
or paths to ``.h5ad`` / Space Ranger / ``.zarr`` data; one ``--train`` slide without ``--test`` is split 80/20
along x (spatially contiguous).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

TASKS = ("expression", "domains", "speed", "speed_peers", "protocol")
DEFAULT_TASKS = ("expression", "domains", "speed")  # protocol, speed_peers: on request (--tasks ...)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["quick", "full"], default="quick")
    ap.add_argument("--train", nargs="+", default=["C2", "C3", "C4"])
    ap.add_argument("--test", nargs="*", default=["C5", "C6"])
    ap.add_argument("--data", default=None, help="shared data folder (sets $STORM_ST_DATA)")
    ap.add_argument("--model", default="default", help="'default', a checkpoint folder, or 'storm-small' (random, harness test)")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gene-sets", type=int, nargs="+", default=None, help="override the suite's HVG set sizes")
    ap.add_argument("--stnet-epochs", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=0, help="STORM heads: fit_expression_head(finetune_epochs=...)")
    ap.add_argument("--head-inputs", nargs="+", default=["centre", "centre+spot"], choices=["centre", "centre+spot", "spot"],
                    help="STORM heads: what the head reads (one row each; tl.fit_expression_head(head_input=...))")
    ap.add_argument("--encoder-epochs", type=int, default=10,
                    help="STORM heads: one more row per model, the centre-reading head fitted with "
                         "tl.fit_expression_head(encoder_epochs=N) (spatial encoder tuned with the head; 0 = no such row)")
    ap.add_argument("--smooth", type=float, default=0.5,
                    help="one more row each for the shipped head, the spot-token head and the CNN with their predictions "
                         "blended with the neighbours' mean (impute_expression(smooth=W)); 0 = no such rows")
    ap.add_argument("--no-cnn-smoothed-targets", dest="cnn_smoothed_targets", action="store_false",
                    help="skip the CNN trained on the neighbour-smoothed targets STORM's heads use")
    ap.add_argument("--stnet-budget", type=float, default=None, help="ST-Net: total training seconds over the gene sets")
    ap.add_argument("--protocol-methods", nargs="+", default=None, choices=["storm", "storm-tuned", "spot", "cnn"],
                    help="protocol: also fit these models on every gene rule x target scale (design investigation 43)")
    ap.add_argument("--domain-slides", nargs="+", default=None)
    ap.add_argument("--peers", nargs="*", default=None, help="domain peers to run in the full suite (default all; speed_peers: BANKSY CellCharter SpaGCN NOVAE)")
    ap.add_argument("--peer-python", default=None, help="python of the peers' environment (benchmarks/requirements.txt)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="speed: slide sizes (spots)")
    ap.add_argument("--speed-base", default="C6", help="speed: slide tiled to the requested sizes")
    ap.add_argument("--device", default="cpu", help="speed: torch device of the measured calls (cpu, cuda)")
    ap.add_argument("--speed-ops", nargs="+", default=None, choices=["embed", "impute", "impute_tta", "breakdown", "train_step"],
                    help="speed: only these operations (default: all)")
    ap.add_argument("--wait-model", type=float, default=0, help="domains: wait up to this many seconds for the checkpoint")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--tag", default=None, help="results file tag (default: the suite)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.data:
        os.environ["STORM_ST_DATA"] = str(Path(args.data).resolve())
    default_peers = Path(__file__).parent / ".venv-peers" / "bin" / "python"
    if args.peer_python is None and default_peers.exists():
        args.peer_python = str(default_peers)
    from _common import RESULTS, machine, now, save_json, versions

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, Path.cwd()), *(argv or sys.argv[1:])])
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = set(tasks) - set(TASKS)
    if bad:
        raise SystemExit(f"unknown tasks {sorted(bad)}; choose from {TASKS}")
    status = 0
    for task in tasks:
        mod = __import__(task)
        t0 = time.perf_counter()
        logging.info("task %s (%s suite)", task, args.suite)
        res = {"task": task, "suite": args.suite, "command": command, "date": now(), "machine": machine(),
               "versions": versions(("GraphST", "SpaGCN", "pybanksy", "cellcharter", "novae") if task in ("domains", "speed_peers") else ())}
        try:
            res.update(mod.run(args, args.suite))
            res["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res["status"] = f"error: {type(e).__name__}: {e}"
            status = 1
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["date_end"] = now()
        save_json(res, RESULTS / f"{args.tag or args.suite}_{task}.json")
        logging.info("task %s done in %.0f s: %s", task, res["wall_s"], res["status"])
    if not args.no_report:
        from report import render

        render(Path(args.out))
        logging.info("wrote %s", args.out)
    return status


if __name__ == "__main__":
    sys.exit(main())
