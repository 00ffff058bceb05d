"""Seed spread of the shipped recipe (report only; nothing is chosen from it).

The default checkpoint's head is one fit: ``tl.fit_expression_head`` on HER2ST C2-C4 (top-1000 HVGs,
``encoder_epochs=10``, head seed 0) from the pretrained model of ``runs/default``. This refits it with other head
seeds from the same pretrained model, reading patches as the shipped head was fitted on them (its stain reference and
pixel size, ``as_shipped``), saves each in float16 as the shipped checkpoint is, and scores it on the
held-out C5 / C6 (median gene-wise PCC) on the gene lists of the benchmark suites::

    python benchmarks/seed_spread.py --seeds 0 1 2 [--pretrained runs/default/model]

Seed 0 is scored from the shipped checkpoint itself (``--refit-zero`` refits it too); ``--reuse`` scores
checkpoints already refitted in ``--work`` (``runs/seed_spread/seedN``, not committed). ``--baselines`` also
refits, with the same seeds and on the same gene lists, the two baselines the shipped head is compared with in the
suites: the spot-token head (ablation (b): the package's head on each spot's own H&E token, no spatial encoder;
one head per list as in the suites) and the ST-Net-like CNN (fixed epochs, 30 on the quick list and 60 on the full
lists as in the suites, without the suites' time budget so that a busy CPU cannot shorten a run); ``--baselines
spot`` refits only the first, ``--baselines cnn-smoothed`` the CNN on the neighbour-smoothed targets STORM's heads
train on, and ``--merge`` keeps the earlier rows of every method and seed not refitted. Results go to
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
from expression import _impute, _slide_targets, _spot_token_head, _spot_tokens, as_shipped  # noqa: E402

TRAIN, TEST = ["C2", "C3", "C4"], ["C5", "C6"]
SPOT = "spot tokens + expression head (b)"
CNN = "ST-Net-like CNN (from scratch)"
CNN_SMOOTHED = "ST-Net-like CNN (from scratch, smoothed targets)"
CNN_EPOCHS = {"quick": 30, "full": 60}  # the suites' epochs (benchmarks/expression.py SUITES)


def _score_rows(method, seed, source, targets, preds_by_list) -> list[dict]:
    """One row per (gene list, test slide): median / mean gene-wise PCC and MSE of ``preds_by_list[list][slide]``
    against ``targets[list]`` (:func:`_slide_targets` of the test slides)."""
    rows = []
    for name, per_slide in targets.items():
        for slide, (y, present), p in zip(TEST, per_slide, preds_by_list[name], strict=True):
            sc = expression_scores(y, p, present)
            rows.append({"method": method, "seed": seed, "source": source, "genes": name, "slide": slide,
                         **{k: sc[k] for k in ("pcc_median", "pcc_mean", "pcc_n", "mse")}})
            print(rows[-1], flush=True)
    return rows


def baselines(shipped, train, test, lists, targets, seeds, which=("spot", "cnn")):
    """The spot-token head (b) and / or the CNN, refitted per seed on each gene list (see the module docstring).

    Yields the rows of each seed as they come."""
    import numpy as np
    from stnet import split_patches, train_predict

    from storm_st._inference import D4
    from storm_st.tl._expression import _smooth_targets

    tok_tr, tok_te = (_spot_tokens(shipped, train, D4), _spot_tokens(shipped, test, D4)) if "spot" in which else (None, None)
    cnn_methods = [(m, k) for m, k in ((CNN, "cnn"), (CNN_SMOOTHED, "cnn-smoothed")) if k in which]
    cnns = {}  # method -> training targets per list: each spot's own, or smoothed as STORM's heads train on them
    if cnn_methods:  # patches and targets only when a CNN is refitted
        Ptr, Pte = split_patches(train, test)
        per_slide = {name: [y for y, _ in _slide_targets(train, gl)] for name, gl in lists.items()}
        for method, key in cnn_methods:
            cnns[method] = {
                name: np.concatenate([_smooth_targets(a, y, None, None)[0] for a, y in zip(train, ys, strict=True)])
                if key == "cnn-smoothed" else np.concatenate(ys)
                for name, ys in per_slide.items()
            }
    for seed in seeds:
        rows, t0 = [], time.time()
        if "spot" in which:
            preds = {name: _spot_token_head(shipped, train, tok_tr, tok_te, gl, seed)[0] for name, gl in lists.items()}
            rows += _score_rows(SPOT, seed, "refitted", targets, preds)
            rows.append({"method": SPOT, "seed": seed, "fit_s": round(time.time() - t0, 1)})
        for method, _ in cnn_methods:
            t0 = time.time()
            preds, epochs = {}, {}
            for name, Ytr in cnns[method].items():
                epochs[name] = CNN_EPOCHS[name.split()[0]]
                preds[name], _ = train_predict(Ptr, Ytr, Pte, epochs=epochs[name], seed=seed)
            rows += _score_rows(method, seed, "trained", targets, preds)
            rows.append({"method": method, "seed": seed, "fit_s": round(time.time() - t0, 1), "epochs": epochs})
        yield rows


def main() -> None:
    import storm_st as st
    from storm_st.models import from_pretrained, save_pretrained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrained", default=str(ROOT / "runs" / "default" / "model"))
    ap.add_argument("--refit-zero", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "runs" / "seed_spread"))
    ap.add_argument("--reuse", action="store_true", help="score checkpoints already refitted in --work instead of refitting")
    ap.add_argument("--baselines", nargs="*", choices=["spot", "cnn", "cnn-smoothed"], default=None,
                    help="also refit the spot-token head (b), the CNN, and / or the CNN on the smoothed targets STORM's "
                         "heads train on, per seed (no value: the first two)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of --out for the methods and seeds this run does not refit (e.g. the CNN, whose "
                         "code and targets did not change), each marked with the date of the run that measured it")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seed_spread.json"))
    args = ap.parse_args()

    t_start, date = time.time(), now()
    train = [st.datasets.her2st(s) for s in TRAIN]
    test = [st.datasets.her2st(s) for s in TEST]
    shipped = st.load_model()
    n_genes = len(shipped.config.head_genes)
    label = f"shipped recipe ({n_genes}-gene head, encoder tuned)"
    genes = st.pp.select_hvgs(train, n_genes)
    top500 = st.pp.select_hvgs(train, 500)
    lists = {"quick top-50": st.pp.select_hvgs(train, 50), "full top-50": top500[:50], "full top-500": top500}
    targets = {name: _slide_targets(test, gl) for name, gl in lists.items()}  # shared by every method and seed
    which = () if args.baselines is None else (tuple(args.baselines) or ("spot", "cnn"))
    names = {"spot": SPOT, "cnn": CNN, "cnn-smoothed": CNN_SMOOTHED}
    refitted = {label} | {names[w] for w in which}
    rows = []
    if args.merge and Path(args.out).is_file():
        import json

        old = json.loads(Path(args.out).read_text())
        redone = {(m, sd) for m in refitted for sd in args.seeds}
        rows = [{**r, "measured": r.get("measured", old["date"])} for r in old["rows"] if (r["method"], r["seed"]) not in redone]

    def save(status: str) -> None:  # after every seed, so that a killed run keeps what it measured
        res = {"command": "python benchmarks/seed_spread.py " + " ".join(sys.argv[1:]), "machine": machine(),
               "versions": versions(), "date": date, "date_end": now(), "status": status,
               "wall_s": round(time.time() - t_start, 1), "pretrained": args.pretrained, "n_head_genes": n_genes,
               "rows": rows}
        save_json(res, Path(args.out))

    for seed in args.seeds:
        t0 = time.time()
        if seed == 0 and not args.refit_zero:
            model, source = shipped, "shipped checkpoint"
        elif args.reuse and (Path(args.work) / f"seed{seed}" / "config.json").is_file():
            model, source = from_pretrained(Path(args.work) / f"seed{seed}"), "refitted earlier (float16, as shipped)"
        else:
            base = as_shipped(from_pretrained(args.pretrained), shipped)  # stains normalised as the shipped head's fit
            model = st.tl.fit_expression_head(train, base, genes=genes, encoder_epochs=10, seed=seed, show_progress=False)
            path = save_pretrained(model, Path(args.work) / f"seed{seed}", dtype=torch.float16)
            model, source = from_pretrained(path), "refitted (float16, as shipped)"
        fit_s = time.time() - t0
        union = list(dict.fromkeys(g for gl in lists.values() for g in gl))
        preds = _impute(model, test, union)  # one encoding per slide; each list is a column subset
        by_list = {name: [p[:, [union.index(g) for g in gl]] for p in preds] for name, gl in lists.items()}
        rows += _score_rows(label, seed, source, targets, by_list)
        rows.append({"method": label, "seed": seed, "source": source, "fit_s": round(fit_s, 1)})
        save("running")
    if which:
        for seed_rows in baselines(shipped, train, test, lists, targets, args.seeds, which):
            rows += seed_rows
            save("running")
    save("ok")


if __name__ == "__main__":
    main()
