"""CUDA paths: inference, head fitting and pretraining on a GPU agree with the CPU (skipped without a GPU).

On a GPU the package runs the backbone and the spatial encoder under bf16 autocast, so GPU results are
compared with the CPU's within bf16 accuracy, not bit for bit.
"""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _helpers import tiny_config

import storm_st as st
from storm_st._utils import gene_pcc
from storm_st.data import WindowSampler, prepare_slides
from storm_st.train import StormPretraining

pytestmark = pytest.mark.gpu


def _rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embed_on_gpu_matches_cpu():
    a = st.datasets.demo()
    cpu, gpu = a.copy(), a.copy()
    model = st.load_model("default")
    st.tl.embed(cpu, model, device="cpu", show_progress=False)
    st.tl.embed(gpu, model, device="cuda", show_progress=False)
    for key in ("X_storm", "X_storm_he", "X_storm_gene"):
        x, y = np.asarray(cpu.obsm[key]), np.asarray(gpu.obsm[key])
        assert x.shape == y.shape and np.isfinite(y).all(), key
        assert _rowwise_cosine(x, y).min() > 0.98, key
    # a downstream result, not only the vectors: the same nearest neighbour for nearly every spot
    def nn(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return d.argmin(1)

    assert (nn(np.asarray(cpu.obsm["X_storm"])) == nn(np.asarray(gpu.obsm["X_storm"]))).mean() > 0.8


def test_impute_on_gpu_matches_cpu():
    a = st.datasets.demo()
    model = st.load_model("default")
    p_cpu = st.tl.impute_expression(a, model, device="cpu", tta=False, show_progress=False)
    p_gpu = st.tl.impute_expression(a, model, device="cuda", tta=False, show_progress=False)
    x, y = np.asarray(p_cpu.X), np.asarray(p_gpu.X)
    assert x.shape == y.shape and np.isfinite(y).all()
    r = gene_pcc(x, y)
    assert np.nanmedian(r) > 0.98
    assert np.abs(x - y).max() < 0.1 * (np.abs(x).max() + 1e-6)


def test_fit_expression_head_on_gpu():
    a = st.datasets.demo()
    genes = st.pp.select_hvgs(a, 20)
    fitted = st.tl.fit_expression_head(a, "default", genes=genes, epochs=2, device="cuda", show_progress=False)
    pred = st.tl.impute_expression(a, fitted, genes=genes, device="cuda", tta=False, show_progress=False)
    assert pred.shape == (a.n_obs, len(genes)) and np.isfinite(np.asarray(pred.X)).all()
    # the head learned something about the slide it was fitted on
    y = st.pp.expression_input(a, st.pp.align_genes(a, genes))
    assert np.nanmedian(gene_pcc(y, np.asarray(pred.X))) > 0.1


def test_loss_decreases_under_bf16_autocast():
    torch.manual_seed(0)
    a = st.datasets.demo()
    cfg = tiny_config(gene_vocab=st.pp.select_hvgs(a, 100))
    module = StormPretraining(cfg.to_dict(), lr=2e-3, backbone_lr=2e-3, warmup_steps=1, max_steps=30, p_he_only=0.5).cuda()
    slides = prepare_slides(a, cfg, use_he=True, use_gene=True, cache_patches=32)
    batch = next(iter(WindowSampler(slides, windows=8, steps=1, patch_size=32))).to("cuda")
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed precision, fp32 master weights


def test_pretrain_cli_on_gpu(tmp_path):
    import anndata as ad

    from storm_st.cli import main
    from storm_st.models import from_pretrained

    # pandas >= 3 makes string indexes Arrow-backed, which anndata writes only when allowed to
    with ad.settings.override(allow_write_nullable_strings=True):
        st.datasets.demo().write_h5ad(tmp_path / "demo.h5ad")
    out = tmp_path / "run"
    cfg = {
        "output": str(out),
        "model": {k: v for k, v in tiny_config().to_dict().items() if k not in ("gene_vocab", "head_genes")},
        "vocab": {"n_top_genes": 50},
        "data": {"slides": [{"path": str(tmp_path / "demo.h5ad")}], "windows_per_batch": 8},
        "training": {"max_steps": 6, "warmup_steps": 1},
        "trainer": {"checkpoint_every_n_steps": 3, "log_every_n_steps": 1},  # accelerator / precision: auto
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", "--config", str(path)]) == 0
    model = from_pretrained(out / "model")  # a GPU-trained checkpoint loads on the CPU
    assert next(model.parameters()).device.type == "cpu"
    assert model.extra["pretraining"]["steps"] == 6
    metrics = pd.read_csv(next(out.glob("logs/**/metrics.csv")))
    loss = metrics.filter(like="loss").stack().to_numpy(dtype=float)
    assert len(loss) and np.isfinite(loss).all()
