"""Seed spread of the shipped recipe (report only; nothing is chosen from it).

The default checkpoint's head is one fit: ``tl.fit_expression_head`` on HER2ST C2-C4 (top-1000 HVGs,
``encoder_epochs=10``, head seed 0) from the pretrained model of ``runs/default``. This refits it with other head
seeds from the same pretrained model, saves each in float16 as the shipped checkpoint is, and scores it on the
held-out C5 / C6 (median gene-wise PCC) on the gene lists of the benchmark suites::

    python benchmarks/seed_spread.py --seeds 0 1 2 [--pretrained runs/default/model]

Seed 0 is scored from the shipped checkpoint itself (``--refit-zero`` refits it too); ``--reuse`` scores
checkpoints already refitted in ``--work`` (``runs/seed_spread/seedN``, not committed). Results go to
``benchmarks/results/seed_spread.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import expression_scores, machine, now, save_json, versions  # noqa: E402
from expression import _impute, _slide_targets  # noqa: E402

TRAIN, TEST = ["C2", "C3", "C4"], ["C5", "C6"]


def main() -> None:
    import storm_st as st
    from storm_st.models import from_pretrained, save_pretrained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrained", default=str(ROOT / "runs" / "default" / "model"))
    ap.add_argument("--refit-zero", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "runs" / "seed_spread"))
    ap.add_argument("--reuse", action="store_true", help="score checkpoints already refitted in --work instead of refitting")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seed_spread.json"))
    args = ap.parse_args()

    t_start, date = time.time(), now()
    train = [st.datasets.her2st(s) for s in TRAIN]
    test = [st.datasets.her2st(s) for s in TEST]
    shipped = st.load_model()
    n_genes = len(shipped.config.head_genes)
    genes = st.pp.select_hvgs(train, n_genes)
    top500 = st.pp.select_hvgs(train, 500)
    lists = {"quick top-50": st.pp.select_hvgs(train, 50), "full top-50": top500[:50], "full top-500": top500}
    rows = []
    for seed in args.seeds:
        t0 = time.time()
        if seed == 0 and not args.refit_zero:
            model, source = shipped, "shipped checkpoint"
        elif args.reuse and (Path(args.work) / f"seed{seed}" / "config.json").is_file():
            model, source = from_pretrained(Path(args.work) / f"seed{seed}"), "refitted earlier (float16, as shipped)"
        else:
            base = from_pretrained(args.pretrained)
            model = st.tl.fit_expression_head(train, base, genes=genes, encoder_epochs=10, seed=seed, show_progress=False)
            path = save_pretrained(model, Path(args.work) / f"seed{seed}", dtype=torch.float16)
            model, source = from_pretrained(path), "refitted (float16, as shipped)"
        fit_s = time.time() - t0
        union = list(dict.fromkeys(g for gl in lists.values() for g in gl))
        preds = _impute(model, test, union)  # one encoding per slide; each list is a column subset
        for name, gl in lists.items():
            cols = [union.index(g) for g in gl]
            for slide, (y, present), p in zip(TEST, _slide_targets(test, gl), preds, strict=True):
                p = p[:, cols]
                sc = expression_scores(y, p, present)
                rows.append({"seed": seed, "source": source, "genes": name, "slide": slide,
                             **{k: sc[k] for k in ("pcc_median", "pcc_mean", "pcc_n", "mse")}})
                print(rows[-1], flush=True)
        rows.append({"seed": seed, "source": source, "fit_s": round(fit_s, 1)})
    res = {"command": "python benchmarks/seed_spread.py " + " ".join(sys.argv[1:]), "machine": machine(),
           "versions": versions(), "date": date, "date_end": now(), "status": "ok", "wall_s": round(time.time() - t_start, 1),
           "pretrained": args.pretrained, "n_head_genes": n_genes, "rows": rows}
    save_json(res, Path(args.out))


if __name__ == "__main__":
    main()
