"""Robustness of H&E → expression to stain variation (report only; nothing is chosen from it).

Slides from other patients and labs differ in stain intensity, which a model trained on five serial sections of one
patient never saw. This re-stains the held-out sections C5 and C6 and asks how much each H&E → expression model loses:
every pixel of the region the spots' patches are cut from is separated into haematoxylin, eosin and DAB optical
densities (Ruifrok & Johnston's stain vectors, ``skimage.color.hed_from_rgb``), the haematoxylin and / or eosin density is
multiplied by a fixed factor (a fainter or darker stain), and the image is recomposed with the inverse matrix (no
clipping of negative densities, so factors 1, 1 give back the image). The same condition is applied to both sections
and to every method.

Methods, trained once on the unperturbed C2-C4 with head / training seed 0 and then applied to every condition:
the shipped checkpoint's own head (``tl.impute_expression``, 8-fold TTA), the spot-token head (ablation (b): the
package's head on each spot's own H&E token, no spatial encoder) and the ST-Net-like CNN of the suites (30 epochs, as in
the quick suite). Each with and without *stains normalised*: ``load_model(stain_normalize=True / False)``, i.e. the
same weights with every slide's patches normalised to the stains the checkpoint records for its training slides
C2-C4 (Macenko) or read as they are (the shipped head is used as shipped whichever patches it was fitted on, recorded in
the results; (b)'s head is refitted on each kind), and the CNN trained and applied on patches normalised the same way.
Metric: median gene-wise PCC over the quick suite's top-50 HVGs of C2-C4, per section::

    python benchmarks/stain_shift.py [--no-cnn [--merge]] [--test C5 C6]

``--merge`` (with ``--no-cnn``) keeps the CNN rows of the previous results file, marked with the date that measured
them: the CNN does not depend on the STORM checkpoint.

Results go to ``benchmarks/results/stain_shift.json``; ``benchmarks/report.py`` renders them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import expression_scores, machine, now, save_json, versions  # noqa: E402
from expression import _impute, _slide_targets, _spot_token_head, _spot_tokens  # noqa: E402

TRAIN = ["C2", "C3", "C4"]
#: condition -> (haematoxylin factor, eosin factor); None: the image as read.
CONDITIONS = {
    "original": None,
    "haematoxylin x0.7": (0.7, 1.0),
    "haematoxylin x1.4": (1.4, 1.0),
    "eosin x0.5": (1.0, 0.5),
    "eosin x2": (1.0, 2.0),
    "both x0.7 (faded)": (0.7, 0.7),
    "both x1.4 (darker)": (1.4, 1.4),
}
SHIPPED = "STORM as shipped (its own head)"
SPOT = "spot tokens + expression head (b)"
CNN = "ST-Net-like CNN (from scratch)"
CNN_EPOCHS = 30  # the quick suite's
NORM = ", stains normalised"  # suffix of the rows with Macenko normalisation to the training slides' stains


def restain(adata, factors: tuple[float, float], margin_um: float = 250.0, rows: int = 1024):
    """A copy of ``adata`` whose H&E image is re-stained by ``factors`` (haematoxylin, eosin) over the bounding box of
    the spots plus ``margin_um``; returns the copy and the mean absolute change of the 8-bit RGB values in that box."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    lib = next(iter(adata.uns["spatial"]))
    sp = adata.uns["spatial"][lib]
    img = np.asarray(sp["images"]["hires"])
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an 8-bit RGB full-resolution image, got {img.dtype} {img.shape}")
    scale = sp["scalefactors"].get("tissue_hires_scalef", 1.0)
    mpp = sp["scalefactors"]["microns_per_pixel"] / scale
    xy = np.asarray(adata.obsm["spatial"], dtype=float) * scale
    m = int(np.ceil(margin_um / mpp))
    x0, y0 = (np.floor(xy.min(0)).astype(int) - m).clip(0)
    x1, y1 = np.minimum(np.ceil(xy.max(0)).astype(int) + m + 1, [img.shape[1], img.shape[0]])
    out = img.copy()
    # optical density -> stain densities -> scaled -> back, with no clipping of negative densities (skimage's rgb2hed
    # clips them, which recolours the darkest nuclei even with factors 1): factors (1, 1) are the identity
    mix = hed_from_rgb @ np.diag([factors[0], factors[1], 1.0]) @ rgb_from_hed
    change, n = 0.0, 0
    for r in range(y0, y1, rows):  # in row blocks: a float64 copy of a whole section is > 2 GB
        block = img[r : min(r + rows, y1), x0:x1]
        od = -np.log((block.astype(np.float64) + 1.0) / 256.0)
        new = (np.exp(-(od @ mix)) * 256.0 - 1.0).clip(0, 255).round().astype(np.uint8)
        change += np.abs(new.astype(np.int16) - block).sum()
        n += block.size
        out[r : min(r + rows, y1), x0:x1] = new
    b = adata.copy()
    b.uns["spatial"][lib]["images"]["hires"] = out
    return b, change / n


def main() -> None:
    import storm_st as st
    from storm_st._inference import D4

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN (about 20 min of the 2 CPU cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", nargs="+", default=["C5", "C6"],
                    help="sections scored (C4, a training section of the shipped model, for design experiment 16)")
    ap.add_argument("--merge", action="store_true",
                    help="with --no-cnn: keep the previous results' CNN rows (the CNN does not use the checkpoint)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stain_shift.json"))
    args = ap.parse_args()
    if args.merge and not args.no_cnn:
        ap.error("--merge keeps the previous CNN rows, so it goes with --no-cnn")

    t_start, date = time.time(), now()
    train = [st.datasets.her2st(s) for s in TRAIN]
    test = [st.datasets.her2st(s) for s in args.test]
    head_on = "normalised" if st.load_model().config.stain_reference is not None else "unnormalised"
    normed = st.load_model(stain_normalize=True)  # patches normalised to the recorded stains of C2-C4
    reference = normed.config.stain_reference
    models = {"": st.load_model(stain_normalize=False), NORM: normed}
    kept = []  # --merge: the previous CNN rows, checked before anything runs
    if args.merge and Path(args.out).is_file():
        import json

        old = json.loads(Path(args.out).read_text())
        if ([c["condition"] for c in old["conditions"]] != list(CONDITIONS) or old["seed"] != args.seed
                or old["stain_reference"] != reference):
            raise SystemExit(f"--merge: {args.out} has other conditions, seed or stain reference; run the CNN again")
        kept = [{**r, "measured": r.get("measured", old["date"])} for r in old["rows"]
                if r["method"].startswith(CNN) and r["slide"] in args.test]
    genes = st.pp.select_hvgs(train, 50)
    targets = _slide_targets(test, genes)
    conds, times = [], {}
    preds = {SHIPPED + v: [] for v in models}
    tokens = {v: [] for v in models}  # [condition][t][slide]
    patches = {v: [] for v in models}  # [condition][slide]

    def cnn_patches(slides, norm: bool):
        from stnet import STNET_FOV_UM, STNET_SIZE

        ps = [st.pp.spot_patches(a, size=STNET_SIZE, fov_um=STNET_FOV_UM) for a in slides]
        if not norm:
            return ps
        ref = st.pp.StainParams.from_dict(reference)
        return [st.pp.normalize_stains(x, st.pp.estimate_stains(x), ref) for x in ps]  # each slide's own stains

    for name, factors in CONDITIONS.items():
        t0 = time.time()
        slides, change = (test, [0.0] * len(test)) if factors is None else zip(*(restain(a, factors) for a in test))
        slides = list(slides)
        conds.append({"condition": name, "factors": factors, "mean_abs_rgb_change": [round(float(c), 2) for c in change]})
        for v, model in models.items():
            preds[SHIPPED + v].append(_impute(model, slides, genes))
            tokens[v].append(_spot_tokens(model, slides, D4))
            if not args.no_cnn:
                patches[v].append(cnn_patches(slides, bool(v)))
        times[name] = round(time.time() - t0, 1)
        print(name, conds[-1]["mean_abs_rgb_change"], times[name], "s", flush=True)
        del slides

    def per_condition(flat):  # predictions listed condition by condition, slide by slide
        return [flat[i : i + len(test)] for i in range(0, len(flat), len(test))]

    cnn_info = {}
    for v, model in models.items():
        # (b): one head on the training tokens (normalised like the test slides), applied to every condition
        tok_tr = _spot_tokens(model, train, D4)
        tok_te = [[x for per_cond in tokens[v] for x in per_cond[t]] for t in range(len(D4))]
        flat, _ = _spot_token_head(model, train, tok_tr, tok_te, genes, args.seed)
        preds[SPOT + v] = per_condition(flat)
        if not args.no_cnn:
            from stnet import train_predict

            Ytr = np.concatenate([y for y, _ in _slide_targets(train, genes)])  # each spot's own expression, as in the suites
            flat, cnn_info[CNN + v] = train_predict(np.concatenate(cnn_patches(train, bool(v))), Ytr,
                                                    [p for per_cond in patches[v] for p in per_cond],
                                                    epochs=CNN_EPOCHS, seed=args.seed)
            preds[CNN + v] = per_condition(flat)

    rows = kept
    for method, per_cond in preds.items():
        for cond, per_slide in zip(conds, per_cond, strict=False):
            for slide, (y, present), p in zip(args.test, targets, per_slide, strict=True):
                sc = expression_scores(y, p, present)
                rows.append({"method": method, "condition": cond["condition"], "slide": slide,
                             **{k: sc[k] for k in ("pcc_median", "pcc_mean", "pcc_n", "mse")}})
    res = {"command": "python benchmarks/stain_shift.py " + " ".join(sys.argv[1:]), "machine": machine(),
           "versions": versions(), "date": date, "date_end": now(), "wall_s": round(time.time() - t_start, 1),
           "status": "ok", "genes": "quick top-50", "seed": args.seed, "stain_reference": reference,
           "shipped_head_fitted_on": head_on + " patches", "conditions": conds, "condition_s": times,
           "cnn": cnn_info, "rows": rows}
    save_json(res, Path(args.out))
    for r in rows:
        print(r["method"], "|", r["condition"], "|", r["slide"], round(r["pcc_median"], 3))


if __name__ == "__main__":
    main()
