"""Score averages of supervised starts' held-out predictions (design experiment 30).

Reads the ``.eval.npz`` files that ``scripts/supervised_backbone.py`` writes beside each start's weights, in folders
named ``<arm>_<fold>_s<seed>`` under one root, and prints, per fold, the median gene-wise Pearson r over the top-50
HVGs of the training sections of every single start and of the averages the experiment names: ``LR_s`` (arms L and R,
seed s), ``LL`` and ``RR`` (seeds 0 and 1 of one arm)::

    python scripts/score_start_ensembles.py runs/sup_ens [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from storm_st._utils import gene_pcc


def load(root: Path) -> dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]]:
    """(arm, fold, seed) -> (measured, predicted) of the held-out fold section."""
    runs = {}
    for f in sorted(root.glob("*/backbone.eval.npz")):
        m = re.fullmatch(r"([A-Za-z]+)_(C\d)_s(\d+)", f.parent.name)
        if m is None:
            continue
        arm, fold, seed = m.group(1), m.group(2), int(m.group(3))
        z = np.load(f)
        runs[arm, fold, seed] = (z[f"{fold}_true"], z[f"{fold}_pred"])
    return runs


def score(runs, members) -> float:
    """Median gene-wise r of the mean prediction of ``members`` (keys of ``runs``; one fold)."""
    y = runs[members[0]][0]
    pred = np.mean([runs[k][1] for k in members], axis=0)
    return float(np.nanmedian(gene_pcc(y, pred)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    runs = load(a.root)
    out = {}
    for fold in sorted({k[1] for k in runs}, reverse=True):  # C4, C3, C2
        row = {f"{arm}_s{s}": score(runs, [(arm, fold, s)]) for (arm, f, s) in sorted(runs) if f == fold}
        for s in (0, 1):
            if ("L", fold, s) in runs and ("R", fold, s) in runs:
                row[f"LR_s{s}"] = score(runs, [("L", fold, s), ("R", fold, s)])
        for arm in ("L", "R"):
            if (arm, fold, 0) in runs and (arm, fold, 1) in runs:
                row[arm * 2] = score(runs, [(arm, fold, 0), (arm, fold, 1)])
        if "LR_s0" in row and "LR_s1" in row:
            row["e_LR"] = (row["LR_s0"] + row["LR_s1"]) / 2
        out[fold] = {k: round(v, 4) for k, v in row.items()}
        print(fold, "  ".join(f"{k} {v:.4f}" for k, v in out[fold].items()))
    keys = ("e_LR", "LL", "RR")
    if all(all(k in out[f] for k in keys) for f in out) and len(out) == 3:
        means = {k: round(float(np.mean([out[f][k] for f in out])), 4) for k in keys}
        print("mean over folds", means)
        out["mean_over_folds"] = means
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
