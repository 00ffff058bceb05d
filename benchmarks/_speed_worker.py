"""One speed measurement in a fresh process (so its peak RSS is its own).

    python _speed_worker.py OP N MODEL OUT.json [--base C6] [--batch-size 256]

OP: ``embed`` (tl.embed, modalities auto = he+st), ``impute`` (tl.impute_expression, tta=False),
``impute_tta`` (its default 8-fold test-time augmentation), ``train_step`` (pretraining optimizer steps of
the model's architecture on the slide: 8 random windows per batch as configs/previous_default.yaml, and 32 contiguous ones as configs/default.yaml; H&E + ST, AdamW), ``breakdown`` (timers around patch reading / backbone / gene encoder / spatial encoder / head,
one pass, no TTA) plus one batch of the naive path that runs the backbone on all 25 patches of every window,
``embed_domains`` (tl.embed then tl.domains with 5 domains: the job the domain peers do), ``peer_input`` (writes
the tiled slide with all genes, as the domain peers read it, to OUT with the suffix ``.h5ad``; not timed).
Slides larger than the base slide are made by tiling its real image and spot coordinates (labelled as such).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


class TiledImage:
    """Read-only array-like: an ``(H, W, C)`` image repeated ``ny x nx`` times (no copy)."""

    def __init__(self, base, ny: int, nx: int):
        self.base = base
        self.h, self.w = int(base.shape[0]), int(base.shape[1])
        self.shape = (self.h * ny, self.w * nx, *base.shape[2:])
        self.dtype = base.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        ys, xs = key[0], key[1]
        y0, y1 = ys.start or 0, ys.stop if ys.stop is not None else self.shape[0]
        x0, x1 = xs.start or 0, xs.stop if xs.stop is not None else self.shape[1]
        out = np.empty((y1 - y0, x1 - x0, *self.base.shape[2:]), dtype=self.base.dtype)
        y = y0
        while y < y1:
            ty, oy = divmod(y, self.h)
            hy = min(self.h - oy, y1 - y)
            x = x0
            while x < x1:
                tx, ox = divmod(x, self.w)
                wx = min(self.w - ox, x1 - x)
                out[y - y0 : y - y0 + hy, x - x0 : x - x0 + wx] = np.asarray(self.base[oy : oy + hy, ox : ox + wx])
                x += wx
            y += hy
        return out

    def __array__(self, dtype=None, copy=None):
        raise MemoryError("TiledImage is never materialised whole")


def tiled_slide(base, n: int, genes: list[str] | None):
    """``n`` spots: the base slide's spots and image repeated on a grid of tiles."""
    import anndata as ad
    import scipy.sparse as sp

    from storm_st.pp import gene_symbols

    lib = next(iter(base.uns["spatial"]))
    meta = base.uns["spatial"][lib]
    name, img = next(iter(meta["images"].items()))
    scale = float(meta["scalefactors"].get(f"tissue_{name}_scalef", 1.0))
    X = sp.csr_matrix(base.X)
    if genes is not None:
        sym = list(gene_symbols(base))
        pos = {g: i for i, g in enumerate(sym)}
        cols = [pos[g] for g in genes if g in pos]
        X = X[:, cols]
        var_names = [sym[c] for c in cols]
    else:
        var_names = list(base.var_names)
    nb = base.n_obs
    n_tiles = int(np.ceil(n / nb))
    nx = int(np.ceil(np.sqrt(n_tiles)))
    ny = int(np.ceil(n_tiles / nx))
    h, w = img.shape[0], img.shape[1]
    coords = np.asarray(base.obsm["spatial"], dtype=np.float64)
    cs, names = [], []
    for t in range(n_tiles):
        ty, tx = divmod(t, nx)
        cs.append(coords + np.array([tx * w / scale, ty * h / scale]))
        names.extend(f"t{t}_{o}" for o in base.obs_names)
    C = np.concatenate(cs)[:n]
    Xt = sp.vstack([X] * n_tiles).tocsr()[:n]
    a = ad.AnnData(Xt.astype(np.float32), obs={"library_id": [lib] * n})
    a.obs_names = names[:n]
    a.var_names = var_names
    a.obsm["spatial"] = C
    a.uns["spatial"] = {lib: {**meta, "images": {name: TiledImage(img, ny, nx) if n_tiles > 1 else img}}}
    return a, {"tiles": n_tiles, "grid": [ny, nx], "base_spots": nb}


def _device_tools(device):
    """``(device, sync, autocast)``: a GPU is synchronised around timed blocks and runs under bf16 autocast, as
    tl.embed and `storm-st pretrain` ("bf16-mixed") run there; the CPU runs in fp32."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return dev, torch.cuda.synchronize, torch.autocast("cuda", dtype=torch.bfloat16)
    return dev, (lambda: None), torch.autocast("cpu", enabled=False)


def breakdown(model, a, batch_size: int, naive_batch: int = 64, device="cpu") -> dict:
    import torch
    from _common import Timer

    from storm_st.data import prepare_slides

    dev, sync, amp = _device_tools(device)
    model = model.to(dev)
    T = Timer(sync=sync)
    with torch.no_grad(), amp:
        with T("prepare (windows, expression input)"):
            s = prepare_slides(a, model.config, use_he=True, use_gene=True)[0]
        toks, gtoks = [], []
        present = torch.from_numpy(s.present).to(dev)
        for b in range(0, s.n, batch_size):
            rows = np.arange(b, min(b + batch_size, s.n))
            with T("patch reading"):  # includes the host -> device copy on a GPU
                p = torch.from_numpy(s.read_patches(rows)).permute(0, 3, 1, 2).to(dev)
            with T("H&E backbone"):
                f = model.he_encoder(p)
            with T("H&E projection + gene encoder"):
                toks.append(model.he_proj(f))
                gtoks.append(model.encode_gene(torch.from_numpy(s.expr[rows]).to(dev), present))
        tables = {"he": torch.cat(toks), "gene": torch.cat(gtoks)}
        avail = {k: torch.ones(s.n, dtype=torch.bool, device=dev) for k in tables}
        nb, rel = torch.from_numpy(s.neighbors).to(dev), torch.from_numpy(s.rel_pos).to(dev)
        embs = []
        with T("spatial encoder"):
            for b in range(0, s.n, batch_size):
                embs.append(model(tables, avail, nb[b : b + batch_size], rel[b : b + batch_size]))
        emb = torch.cat(embs)
        with T("expression head"):
            if model.head is not None:
                model.predict_expression(model.head_features(emb, model.spot_tokens(tables)))
        # naive path: one batch of windows, backbone on every (valid) window member, then the spatial encoder
        B = min(naive_batch, s.n)
        w = s.neighbors[:B]
        valid = w >= 0
        n_patch = int(valid.sum())
        sync()
        t0 = time.perf_counter()
        pn = torch.from_numpy(s.read_patches(w[valid])).permute(0, 3, 1, 2).to(dev)
        sync()
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn = model.he_proj(model.he_encoder(pn))
        sync()
        t_bb = time.perf_counter() - t0
        t0 = time.perf_counter()
        vmask = torch.from_numpy(valid).to(dev)
        tab = torch.zeros(B, w.shape[1], fn.shape[1], dtype=fn.dtype, device=dev)
        tab[vmask] = fn
        gidx = torch.from_numpy(np.clip(w, 0, None)).reshape(-1).to(dev)
        flat = {"he": tab.reshape(B * w.shape[1], -1), "gene": tables["gene"][gidx]}
        idx = torch.arange(B * w.shape[1], device=dev).reshape(B, -1)
        idx[~vmask] = -1
        fav = {k: torch.ones(B * w.shape[1], dtype=torch.bool, device=dev) for k in flat}
        model(flat, fav, idx, rel[:B])
        sync()
        t_sp = time.perf_counter() - t0
    t_naive_batch = t_read + t_bb + t_sp
    ours = sum(v for k, v in T.t.items())
    naive_total = t_naive_batch * s.n / B
    return {
        "seconds": {k: round(v, 3) for k, v in T.t.items()},
        "total_s": round(ours, 3),
        "naive": {
            "batch_windows": B, "patches_in_batch": n_patch, "mean_valid_per_window": round(n_patch / B, 2),
            "batch_s": {"patch reading": round(t_read, 3), "H&E backbone": round(t_bb, 3), "spatial encoder": round(t_sp, 3)},
            "extrapolated_total_s": round(naive_total, 1),
            "ratio_naive_over_ours": round(naive_total / ours, 2),
            "note": "one batch timed, extrapolated linearly to all spots",
        },
    }


def train_steps(model, a, windows: int = 8, contiguous: bool = False, steps: int = 12, warm: int = 2, device="cpu") -> dict:
    """Time pretraining steps (forward, backward, AdamW) of ``model``'s architecture on slide ``a``.

    ``contiguous``: the window layout of :class:`storm_st.data.WindowSampler` (random centres, or a
    contiguous region of centres whose windows share spots).
    """

    from storm_st.data import WindowSampler, prepare_slides
    from storm_st.train import StormPretraining

    cfg = model.config
    slides = prepare_slides(a, cfg, use_he=True, use_gene=True, cache_patches=True)
    dev, sync, amp = _device_tools(device)
    module = StormPretraining(cfg.to_dict(), max_steps=steps, warmup_steps=1).to(dev)
    opt = module.configure_optimizers()["optimizer"]
    module.train()
    times, spots = [], []
    batches = WindowSampler(slides, windows=windows, steps=steps, contiguous=contiguous)
    for i, batch in enumerate(batches):
        sync()
        t0 = time.perf_counter()  # includes the host -> device copy of the batch
        batch = batch.to(dev)
        with amp:
            loss = module.compute_loss(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= warm:
            times.append(time.perf_counter() - t0)
            spots.append(int(batch.patches.shape[0]))
    step_s = float(np.mean(times))
    return {
        "windows_per_step": windows, "contiguous": contiguous, "timed_steps": len(times), "step_s": round(step_s, 3),
        "unique_spots_per_step": round(float(np.mean(spots)), 1),
        "backbone_spots_per_s": round(float(np.mean(spots)) / step_s, 1),
        "windows_per_s": round(windows / step_s, 2),
    }


def _nbytes(x) -> int:
    if hasattr(x, "data") and hasattr(x, "indices"):  # sparse
        return int(x.data.nbytes + x.indices.nbytes + x.indptr.nbytes)
    return int(getattr(x, "nbytes", 0))


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("op", choices=["embed", "impute", "impute_tta", "breakdown", "train_step", "embed_domains", "peer_input"])
    ap.add_argument("n", type=int)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--base", default="C6")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when available)")
    a = ap.parse_args()
    import torch
    from _common import read_slide

    import storm_st as st
    from storm_st._utils import resolve_device

    device = resolve_device(a.device)

    model = st.load_model(a.model) if a.model not in ("storm-small", "random") else None
    head_note = None
    if model is None:
        base0 = read_slide(a.base)
        torch.manual_seed(0)
        model = st.load_model("storm-small", gene_vocab=st.pp.select_hvgs(base0, 2000), he_backbone="resnet10t", image_size=112)
    if model.head is None:
        model.set_head(list(model.config.gene_vocab[:500]))
        head_note = "model had no expression head: a random 500-gene head was attached (cost, not accuracy)"
    model.eval()
    base = read_slide(a.base)
    if a.op == "peer_input":
        from domains import write_peer_input

        slide, tinfo = tiled_slide(base, a.n, None)
        write_peer_input(slide, Path(a.out).with_suffix(".h5ad"))
        Path(a.out).write_text(json.dumps({"op": a.op, "n_spots": a.n, "tiling": tinfo, "genes": int(slide.n_vars)}))
        return
    t0 = time.perf_counter()
    slide, tinfo = tiled_slide(base, a.n, list(model.config.gene_vocab))
    t_build = time.perf_counter() - t0
    res = {"op": a.op, "n_spots": a.n, "tiling": tinfo, "build_s": round(t_build, 2), "torch_threads": torch.get_num_threads(),
           "batch_size": a.batch_size, "head_note": head_note, "genes_in_slide": int(slide.n_vars), "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    keys0 = (set(slide.obsm), set(slide.layers))
    ret = None
    t0 = time.perf_counter()
    if a.op == "embed":
        st.tl.embed(slide, model, batch_size=a.batch_size, device=str(device), show_progress=False)
        res["modalities"] = slide.uns["storm"]["modalities"]
    elif a.op == "embed_domains":
        st.tl.embed(slide, model, batch_size=a.batch_size, device=str(device), show_progress=False)
        st.tl.domains(slide, n_domains=5)
        res["modalities"] = slide.uns["storm"]["modalities"]
    elif a.op in ("impute", "impute_tta"):
        tta = a.op == "impute_tta"
        ret = st.tl.impute_expression(slide, model, batch_size=a.batch_size, tta=tta, device=str(device), show_progress=False)
        res["tta"] = tta
    elif a.op == "train_step":
        # the layout of the previous default (8 random windows) and of contiguous 32-window batches
        res["train_step"] = [train_steps(model, slide, 8, False, device=device), train_steps(model, slide, 32, True, device=device)]
        if device.type == "cuda":  # a GPU has room for far larger batches than the CPU layouts above
            res["train_step"].append(train_steps(model, slide, 256, True, device=device))
    else:
        res["breakdown"] = breakdown(model, slide, a.batch_size, device=device)
    dt = time.perf_counter() - t0
    res["seconds"] = round(dt, 2)
    if a.op in ("embed", "impute", "impute_tta", "embed_domains"):  # a rate over the slide only means something for these
        res["spots_per_s"] = round(a.n / dt, 1)
    res["rss_before_op_mb"] = round(rss0 / 1024, 1)
    # size of what the operation returned / wrote (obsm, layers, returned AnnData): memory that must grow with N
    written = [slide.obsm[k] for k in set(slide.obsm) - keys0[0]] + [slide.layers[k] for k in set(slide.layers) - keys0[1]]
    if ret is not None and hasattr(ret, "X"):
        written.append(ret.X)
    res["result_mb"] = round(sum(_nbytes(x) for x in written) / 2**20, 1)
    res["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":  # peak of tensors allocated on the GPU by this process (torch's caching allocator)
        res["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
