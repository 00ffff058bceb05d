"""Does the spatial readout's lead over the spot token depend on how much of a spot's window is tissue?

    python benchmarks/window_context.py validation     # folds C4 / C3 / C2 of patient C (design experiment 32)
    python benchmarks/window_context.py heldout        # the shipped model on C5 / C6, reported once, nothing chosen

Every spot's 5 x 5 window (``pp.neighbor_windows``) holds its 24 nearest spots within the lattice radius, fewer at a
tissue edge or beside a hole. Spots are split into *full* windows (24 neighbours) and *partial* ones, and two
readouts are compared within each group: A, the shipped recipe's head (``"centre"``: the spatial encoder's output,
encoder tuned 10 epochs) and B, the spot-token head (``"spot"``: the spot's own H&E token, no spatial context; the
issue's ablation (b)). Per group: the median gene-wise Pearson r over the top-50 HVGs of the training sections, and
the per-spot error — mean over those genes of the squared error of z-scored expression (each gene standardised by
its mean and s.d. on the section) — as the mean of A's minus B's error, with a Mann-Whitney test of that difference
between the two groups. ``validation`` fits both heads on the two training sections of each fold (head seed 0, the
models of ``configs/validation_paired03[_c3|_c2].yaml``), ``heldout`` reads the shipped checkpoint's own head and
fits B on C2-C4 as the benchmark suites do (genes: the first 50 of ``select_hvgs(C2-C4, 500)``, the full suite's list).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import RESULTS, machine, now, read_slide, save_json

import storm_st as st

FOLDS = {"C4": "runs/val_paired03/model", "C3": "runs/val_paired03_c3/model", "C2": "runs/val_paired03_c2/model"}
FULL = 24  # neighbours of a spot whose 5 x 5 window is all tissue


def n_neighbours(adata) -> np.ndarray:
    """Number of real (not padded) neighbours in each spot's window."""
    nb = st.pp.neighbor_windows(adata, copy=True).obsm["storm_neighbors"]
    return (np.asarray(nb)[:, 1:] >= 0).sum(1)


def _gene_r(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    yc, pc = y - y.mean(0), p - p.mean(0)
    den = np.sqrt((yc**2).sum(0) * (pc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (yc * pc).sum(0) / den, np.nan)


def compare(y: np.ndarray, preds: dict[str, np.ndarray], nnb: np.ndarray) -> dict:
    """Median gene-wise r of each readout in each group, and A's minus B's per-spot z-scored squared error."""
    from scipy.stats import mannwhitneyu

    mu, sd = y.mean(0), y.std(0)
    ok = sd > 0
    z = lambda v: (v[:, ok] - mu[ok]) / sd[ok]  # noqa: E731
    err = {k: ((z(p) - z(y)) ** 2).mean(1) for k, p in preds.items()}
    diff = err["A"] - err["B"]
    groups = {"all": np.ones(len(y), bool), "full": nnb == FULL, "partial": nnb < FULL}
    out = {"n_spots": {g: int(m.sum()) for g, m in groups.items()}}
    for g, m in groups.items():
        out[g] = {
            "median_r": {k: round(float(np.nanmedian(_gene_r(y[m], p[m]))), 4) for k, p in preds.items()},
            "err_A_minus_B": round(float(diff[m].mean()), 4),
        }
    out["full_minus_partial"] = {
        "median_r_A_minus_B": round(
            (out["full"]["median_r"]["A"] - out["full"]["median_r"]["B"])
            - (out["partial"]["median_r"]["A"] - out["partial"]["median_r"]["B"]), 4),
        "err_A_minus_B": round(out["full"]["err_A_minus_B"] - out["partial"]["err_A_minus_B"], 4),
        "mannwhitney_p": round(float(mannwhitneyu(diff[nnb == FULL], diff[nnb < FULL]).pvalue), 4),
    }
    return out


def _truth(adata, genes: list[str]) -> np.ndarray:
    al = st.pp.align_genes(adata, genes)
    return np.asarray(st.pp.expression_input(adata, al), dtype=np.float64)


def _predict(model, adata, genes: list[str]) -> np.ndarray:
    out = st.tl.impute_expression(adata.copy(), model, genes=genes, key_added="virtual", show_progress=False)
    return np.asarray(out[:, genes].X, dtype=np.float64)


def validation(args) -> dict:
    res = {}
    for val, path in FOLDS.items():
        train = [st.datasets.her2st(s) for s in ("C2", "C3", "C4") if s != val]
        v = st.datasets.her2st(val)
        genes = [g.upper() for g in st.pp.select_hvgs(train, 50)]
        base = st.load_model(path)
        st.models.set_stain_normalization(base, True)
        preds = {}
        for arm, hi, ee in (("A", "centre", 10), ("B", "spot", 0)):
            m = st.tl.fit_expression_head(train, base, genes=genes, seed=args.seed, head_input=hi, encoder_epochs=ee,
                                          show_progress=False)
            preds[arm] = _predict(m, v, genes)
        res[val] = {"model": path, **compare(_truth(v, genes), preds, n_neighbours(v))}
        print(val, json.dumps(res[val]), flush=True)
    return res


def heldout(args) -> dict:
    train = [read_slide(s) for s in ("C2", "C3", "C4")]
    genes = [g.upper() for g in st.pp.select_hvgs(train, 500)[:50]]
    shipped = st.load_model("default")
    spot = st.tl.fit_expression_head(train, shipped, genes=genes, seed=args.seed, head_input="spot", show_progress=False)
    res = {}
    for s in ("C5", "C6"):
        a = read_slide(s)
        preds = {"A": _predict(shipped, a, genes), "B": _predict(spot, a, genes)}
        res[s] = compare(_truth(a, genes), preds, n_neighbours(a))
        print(s, json.dumps(res[s]), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["validation", "heldout"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    t0, start = time.time(), now()
    res = (validation if args.what == "validation" else heldout)(args)
    # each section's share of full windows (spot coordinates only); validation never opens the test sections
    secs = ("C2", "C3", "C4") + (("C5", "C6") if args.what == "heldout" else ())
    share = {s: round(float((n_neighbours(read_slide(s)) == FULL).mean()), 3) for s in secs}
    out = {"what": args.what, "seed": args.seed, "command": f"python benchmarks/window_context.py {args.what}",
           "date": [start, now()], "wall_s": round(time.time() - t0), "machine": machine(),
           "share_full_windows": share, "results": res}
    save_json(out, (RESULTS / "validation" if args.what == "validation" else RESULTS) / f"window_context_{args.what}.json")
    print(json.dumps(share))


if __name__ == "__main__":
    main()
