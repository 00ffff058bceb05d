import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _helpers import tiny_config

import storm_st as st
from storm_st.data import WindowSampler, prepare_slides
from storm_st.train import StormPretraining, cosine_with_warmup, sample_visible


def test_sample_visible_counts():
    valid = torch.ones(4, 25, dtype=torch.bool)
    valid[1, 3:] = False
    v = sample_visible(valid, 5)
    assert v.sum(1).tolist() == [5, 3, 5, 5] and not (v & ~valid).any()


def test_schedule():
    assert cosine_with_warmup(0, 10, 100) == pytest.approx(0.1)
    assert cosine_with_warmup(10, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 10, 100) == pytest.approx(0.01)


def test_loss_decreases_on_real_demo_data():
    torch.manual_seed(0)
    a = st.datasets.demo()
    genes = st.pp.select_hvgs(a, 100)
    cfg = tiny_config(gene_vocab=genes)
    module = StormPretraining(cfg.to_dict(), lr=2e-3, backbone_lr=2e-3, warmup_steps=1, max_steps=30, p_he_only=0.5)
    slides = prepare_slides(a, cfg, use_he=True, use_gene=True, cache_patches=32)
    batch = next(iter(WindowSampler(slides, windows=8, steps=1, patch_size=32)))
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        torch.manual_seed(1)  # same masks each step: the loss on this batch must go down
        loss = module.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


def test_sampler_is_stateless_in_step():
    a = st.datasets.demo()
    cfg = tiny_config(gene_vocab=["ERBB2"])
    slides = prepare_slides(a, cfg, use_he=False, use_gene=True)
    s1 = WindowSampler(slides, windows=4, steps=6, patch_size=32, use_he=False)
    full = [b.centre_rows.tolist() for b in s1]
    s2 = WindowSampler(slides, windows=4, steps=6, patch_size=32, use_he=False)
    s2.start = 3
    assert [b.centre_rows.tolist() for b in s2] == full[3:]


def test_contiguous_sampler_shares_spots_between_windows():
    a = st.datasets.demo()
    cfg = tiny_config(gene_vocab=["ERBB2"])
    slides = prepare_slides(a, cfg, use_he=False, use_gene=True)
    kw = {"windows": 24, "steps": 5, "patch_size": 32, "use_he": False, "seed": 3}
    rand = list(WindowSampler(slides, **kw))
    cont = list(WindowSampler(slides, contiguous=True, **kw))
    for b in cont:
        c = b.centre_rows.numpy()
        assert len(c) == 24 == len(set(c.tolist()))
        # connected: every centre has another centre among its window neighbours
        nb = slides[0].neighbors[c][:, 1:]
        assert all(np.isin(nb[i][nb[i] >= 0], c).any() for i in range(len(c)))
    # the point of it: far fewer unique spots to encode per window
    n_rand = np.mean([len(b.expr) for b in rand])
    n_cont = np.mean([len(b.expr) for b in cont])
    assert n_cont < 0.6 * n_rand
    # stateless in the step number, like the random layout
    s2 = WindowSampler(slides, contiguous=True, **kw)
    s2.start = 2
    assert [b.centre_rows.tolist() for b in s2] == [b.centre_rows.tolist() for b in cont[2:]]


def _write_cfg(tmp_path, out, steps):
    cfg = {
        "output": str(out),
        "model": {k: v for k, v in tiny_config().to_dict().items() if k not in ("gene_vocab", "head_genes")},
        "vocab": {"n_top_genes": 50},
        "data": {"slides": [{"path": str(tmp_path / "demo.h5ad")}], "windows_per_batch": 4},
        "training": {"max_steps": steps, "warmup_steps": 1},
        "trainer": {"checkpoint_every_n_steps": 2, "log_every_n_steps": 1, "accelerator": "cpu"},
    }
    p = tmp_path / f"cfg_{out.name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_resumed_log_is_kept_by_rank_zero_only(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    from storm_st.train._runner import _keep_earlier_log, _merge_logs

    pd.DataFrame({"step": [0, 1, 2, 3], "loss": [4.0, 3.0, 2.0, 1.0]}).to_csv(tmp_path / "metrics.csv", index=False)
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # another DDP rank: leaves the log to rank 0
    _keep_earlier_log(tmp_path, 2)
    assert not list(tmp_path.glob("metrics_part*.csv"))
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    _keep_earlier_log(tmp_path, 2)
    assert pd.read_csv(tmp_path / "metrics_part0.csv")["step"].tolist() == [0, 1]
    pd.DataFrame({"step": [2, 3], "loss": [2.5, 1.5]}).to_csv(tmp_path / "metrics.csv", index=False)  # the resumed run
    _merge_logs(tmp_path)
    merged = pd.read_csv(tmp_path / "metrics.csv")
    assert merged["step"].tolist() == [0, 1, 2, 3] and merged["loss"].tolist() == [4.0, 3.0, 2.5, 1.5]


def test_pretrain_cli_resume_reaches_the_uninterrupted_result(tmp_path):
    from storm_st.cli import main
    from storm_st.models import from_pretrained

    st.datasets.demo().write_h5ad(tmp_path / "demo.h5ad")
    full = tmp_path / "full"
    assert main(["pretrain", "--config", str(_write_cfg(tmp_path, full, 4))]) == 0
    part = tmp_path / "part"
    cfg = _write_cfg(tmp_path, part, 4)
    assert main(["pretrain", "--config", str(cfg), "--stop-at-step", "2"]) == 0  # "killed" after 2 steps
    ck = torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 2
    step2 = from_pretrained(part / "model")
    assert main(["pretrain", "--config", str(cfg), "--resume"]) == 0
    ck = torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 4  # continued to the schedule's end, not restarted from step 0
    resumed, uninterrupted = from_pretrained(part / "model"), from_pretrained(full / "model")
    assert resumed.extra["pretraining"]["steps"] == 4
    assert resumed.extra["pretraining"]["resumed_from_step"] == 2  # its wall time covers steps 2-4 only
    assert "resumed_from_step" not in uninterrupted.extra["pretraining"]
    logged = pd.read_csv(part / "logs" / "version_0" / "metrics.csv")["step"].tolist()  # both processes' rows, in order
    assert logged == pd.read_csv(full / "logs" / "version_0" / "metrics.csv")["step"].tolist() and logged[0] < 2 <= logged[-1]
    assert not list((part / "logs" / "version_0").glob("metrics_part*.csv"))
    ref = uninterrupted.state_dict()
    moved = [k for k, v in resumed.state_dict().items() if v.is_floating_point() and not torch.equal(v, step2.state_dict()[k])]
    assert moved  # the resumed steps trained the step-2 weights further
    for k, v in resumed.state_dict().items():  # ... and reached exactly the uninterrupted run's weights
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=f"{k} differs from the uninterrupted run")


def test_data_seed_changes_the_data_stream_but_not_the_start(tmp_path):
    """--set trainer.data_seed=N: same initial weights as seed's run, other windows / masks (runs to average)."""
    from storm_st.cli import main
    from storm_st.models import from_pretrained

    st.datasets.demo().write_h5ad(tmp_path / "demo.h5ad")
    cfg = str(_write_cfg(tmp_path, tmp_path / "unused", 2))
    runs = {}
    for name, sets in (("base", []), ("ds0", ["trainer.data_seed=0"]), ("ds1", ["trainer.data_seed=1"]),
                       ("base_lr0", ["training.lr=0", "training.backbone_lr=0"]),
                       ("ds1_lr0", ["training.lr=0", "training.backbone_lr=0", "trainer.data_seed=1"])):
        args = ["pretrain", "--config", cfg, "--set", f"output={tmp_path / name}"]
        assert main(args + [x for kv in sets for x in ("--set", kv)]) == 0
        runs[name] = dict(from_pretrained(tmp_path / name / "model").named_parameters())
    resolved = json.loads((tmp_path / "ds1" / "config_resolved.json").read_text())["config"]
    assert resolved["trainer"]["data_seed"] == 1 and resolved["output"] == str(tmp_path / "ds1")

    def same(a, b):
        return all(torch.equal(v, runs[b][k]) for k, v in runs[a].items())

    assert same("base", "ds0")  # data_seed defaults to seed: runs made before the option are reproduced
    assert not same("base", "ds1")  # another data stream trains other weights ...
    assert same("base_lr0", "ds1_lr0")  # ... from the same start


def test_config_overrides_are_checked():
    from storm_st.train._runner import load_config

    user = {"training": {"max_steps": 5}}
    cfg = load_config(user, ["training.max_steps=7", "trainer.data_seed=3", "output=runs/x"])
    assert cfg["training"]["max_steps"] == 7 and cfg["trainer"]["data_seed"] == 3 and cfg["output"] == "runs/x"
    assert user == {"training": {"max_steps": 5}}  # the caller's config is left as it was
    assert load_config({}, ["model.hidden_dim=64"])["model"]["hidden_dim"] == 64
    for bad, match in (("trainer.data_seed", "section.key=value"), ("data_seed=1", "section.key=value"),
                       ("optim.lr=1", "unknown section 'optim'"), ("training.lrr=1", "Unknown keys \\['lrr'\\]")):
        with pytest.raises(ValueError, match=match):
            load_config({}, [bad])


def test_config_extends_another_section_by_section(tmp_path):
    from storm_st.train._runner import load_config

    (tmp_path / "base.yaml").write_text(
        "output: runs/base\nmodel: {hidden_dim: 64, depth: 2}\n"
        "data: {paired_fraction: 0.3, slides: [{path: a.h5ad, use: he+st}, {path: b.h5ad, use: st}]}\n"
        "training: {max_steps: 9}\n"
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "child.yaml").write_text(
        "extends: ../base.yaml\noutput: runs/child\nmodel: {depth: 3}\ndata: {slides: [{path: c.h5ad, use: he}]}\n"
    )
    cfg = load_config(sub / "child.yaml", ["training.max_steps=4"])
    assert cfg["output"] == "runs/child" and cfg["model"]["hidden_dim"] == 64 and cfg["model"]["depth"] == 3
    assert cfg["data"]["paired_fraction"] == 0.3 and cfg["data"]["slides"] == [{"path": "c.h5ad", "use": "he"}]
    assert cfg["training"]["max_steps"] == 4 and cfg["_base"] == str(sub)  # paths read from the named file's folder
    assert "extends" not in cfg
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loop"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="named by 'extends'"):
        load_config(tmp_path / "c.yaml")


def test_every_committed_config_loads():
    """The configs of the repository (the default recipe and every design experiment's) resolve, extends included."""
    from pathlib import Path

    from storm_st.train._runner import load_config

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert any(p.name == "default.yaml" for p in configs)
    for p in configs:
        cfg = load_config(p)
        assert cfg["data"]["slides"] and cfg["output"], p.name


def test_resume_of_a_moved_run_folder_keeps_one_last_checkpoint(tmp_path):
    """A run folder copied elsewhere and resumed twice continues from where it stopped each time."""
    import shutil

    from storm_st.cli import main
    from storm_st.models import from_pretrained

    st.datasets.demo().write_h5ad(tmp_path / "demo.h5ad")
    first = tmp_path / "first"
    cfg = _write_cfg(tmp_path, first, 4)
    assert main(["pretrain", "--config", str(cfg), "--stop-at-step", "2"]) == 0
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    assert main(["pretrain", "--config", str(cfg), "--output", str(moved), "--resume", "--stop-at-step", "3"]) == 0
    assert main(["pretrain", "--config", str(cfg), "--output", str(moved), "--resume"]) == 0
    assert [p.name for p in (moved / "checkpoints").iterdir()] == ["last.ckpt"]
    ck = torch.load(moved / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 4
    assert from_pretrained(moved / "model").extra["pretraining"]["resumed_from_step"] == 3


def test_crop_windows_cuts_windows_to_the_crop():
    from storm_st.train._head import crop_windows

    a = st.datasets.demo()
    s = prepare_slides(a, tiny_config(gene_vocab=["ERBB2"]), use_he=False, use_gene=True)[0]
    rows, nb, rp = crop_windows(s.neighbors, s.rel_pos, 40, np.random.default_rng(0))
    assert len(rows) == 40 == len(set(rows.tolist()))
    assert nb.shape == (40, s.neighbors.shape[1]) and rp.shape == (40, *s.rel_pos.shape[1:])
    assert (nb[:, 0] == np.arange(40)).all()  # each spot is the centre of its own window
    for i, r in enumerate(rows):  # a kept neighbour is the same spot; a dropped one was outside the crop
        for k, j in enumerate(s.neighbors[r]):
            if j < 0:
                assert nb[i, k] == -1
            elif j in rows:
                assert rows[nb[i, k]] == j
            else:
                assert nb[i, k] == -1
    # contiguous: every spot of the crop has a window-neighbour in the crop
    assert ((nb[:, 1:] >= 0).sum(1) > 0).all()
    all_rows, _, _ = crop_windows(s.neighbors, s.rel_pos, 10_000, np.random.default_rng(0))
    assert len(all_rows) == s.n


def test_st_loss_l1l2_ignores_the_predicted_variance():
    a = st.datasets.demo()
    genes = st.pp.select_hvgs(a, 20)
    cfg = tiny_config(gene_vocab=genes)
    slides = prepare_slides(a, cfg, use_he=False, use_gene=True)
    batch = next(iter(WindowSampler(slides, windows=6, steps=1, patch_size=32, use_he=False)))
    with pytest.raises(ValueError, match="st_loss"):
        StormPretraining(cfg.to_dict(), st_loss="poisson")
    losses = {}
    for kind in ("gaussian", "l1l2"):
        torch.manual_seed(0)
        m = StormPretraining(cfg.to_dict(), st_loss=kind).eval()
        torch.manual_seed(1)
        base = m.compute_loss(batch, train=False)
        with torch.no_grad():  # shift only the log-variance half of the ST decoder's output
            m.st_decoder.out.bias[len(genes) :] += 3.0
        torch.manual_seed(1)
        shifted = m.compute_loss(batch, train=False)
        losses[kind] = (float(base["loss_st"]), float(shifted["loss_st"]), float(base["mse_st"]))
    g0, g1, _ = losses["gaussian"]
    l0, l1, mse = losses["l1l2"]
    assert g0 != pytest.approx(g1)  # the NLL depends on the variance ...
    assert l0 == pytest.approx(l1) and l0 > mse  # ... eq. 4 does not, and adds |y - ŷ| to the squared error


def test_pretrain_with_an_obsm_gene_encoder(tmp_path):
    """model.gene_input: obsm:<key> pretrains end to end; the embedding width is read from the slides."""
    from storm_st.cli import main
    from storm_st.models import FeatureGeneEncoder, from_pretrained

    a = st.datasets.demo()
    a.obsm["emb"] = np.random.default_rng(0).normal(size=(a.n_obs, 12)).astype(np.float32)
    a.write_h5ad(tmp_path / "demo.h5ad")
    cfg = yaml.safe_load(_write_cfg(tmp_path, tmp_path / "run", 2).read_text())
    cfg["model"].update(gene_input="obsm:emb", gene_input_dim=0)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", "--config", str(tmp_path / "cfg.yaml")]) == 0
    m = from_pretrained(tmp_path / "run" / "model")
    assert m.config.gene_input_dim == 12 and isinstance(m.gene_encoder, FeatureGeneEncoder)
    del a.obsm["emb"]
    a.write_h5ad(tmp_path / "demo.h5ad")
    with pytest.raises(KeyError, match="novae_model"):
        main(["pretrain", "--config", str(tmp_path / "cfg.yaml")])


def test_pretrain_with_stain_reference_auto(tmp_path):
    """model.stain_reference: auto estimates the training slides' stains; the checkpoint carries them."""
    from storm_st.cli import main
    from storm_st.models import from_pretrained

    a = st.datasets.demo()
    a.write_h5ad(tmp_path / "demo.h5ad")
    cfg = yaml.safe_load(_write_cfg(tmp_path, tmp_path / "run", 2).read_text())
    cfg["model"]["stain_reference"] = "auto"
    cfg["training"]["stain_jitter"] = 0.2  # stain augmentation on top: the two are independent
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", "--config", str(tmp_path / "cfg.yaml")]) == 0
    m = from_pretrained(tmp_path / "run" / "model")
    assert m.config.stain_reference == st.pp.stain_reference(a) == m.extra["training_stains"]
    assert m.extra["pretraining"]["config"]["training"]["stain_jitter"] == 0.2
    # every pretrained checkpoint records its training stains, so normalisation can be switched on when loading
    cfg["model"]["stain_reference"] = None
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", "--config", str(tmp_path / "cfg.yaml"), "--output", str(tmp_path / "run2")]) == 0
    assert st.load_model(tmp_path / "run2" / "model").config.stain_reference is None
    m2 = st.load_model(tmp_path / "run2" / "model", stain_normalize=True)
    assert m2.config.stain_reference == m.config.stain_reference
    assert st.load_model(tmp_path / "run" / "model", stain_normalize=False).config.stain_reference is None


def test_pretrain_with_an_he_only_wsi_slide(tmp_path):
    """A ``reader: wsi`` slide (an H&E image tiled into virtual spots) feeds H&E-only windows; bad specs are refused."""
    from PIL import Image

    from storm_st.cli import main
    from storm_st.models import from_pretrained
    from storm_st.train._runner import read_slide_spec

    a = st.datasets.demo()
    a.write_h5ad(tmp_path / "demo.h5ad")
    lib = next(iter(a.uns["spatial"]))
    name, img = next(iter(a.uns["spatial"][lib]["images"].items()))
    Image.fromarray(np.asarray(img)).save(tmp_path / "he.png")
    scale = a.uns["spatial"][lib]["scalefactors"]
    mpp = float(scale["microns_per_pixel"]) / float(scale.get(f"tissue_{name}_scalef", 1.0))
    wsi = {"reader": "wsi", "path": "he.png", "mpp": mpp, "spot_diameter_um": 100.0, "pitch_um": 500.0,
           "lattice": "square", "tissue_only": False, "use": "he", "weight": 2.0}
    tiles = read_slide_spec(wsi, tmp_path)
    assert tiles.n_vars == 0 and tiles.n_obs > 10
    cfg = yaml.safe_load(_write_cfg(tmp_path, tmp_path / "run", 2).read_text())
    cfg["data"]["slides"].append(wsi)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", "--config", str(tmp_path / "cfg.yaml")]) == 0
    resolved = json.loads((tmp_path / "run" / "config_resolved.json").read_text())
    assert len(resolved["slides"]) == 2 and resolved["n_spots"] == a.n_obs + tiles.n_obs
    assert from_pretrained(tmp_path / "run" / "model").extra["pretraining"]["steps"] == 2
    with pytest.raises(ValueError, match="needs mpp"):
        read_slide_spec({k: v for k, v in wsi.items() if k != "mpp"}, tmp_path)
    cfg["data"]["slides"][-1] = {**wsi, "use": "he+st"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="no expression"):
        main(["pretrain", "--config", str(tmp_path / "cfg.yaml")])


def test_window_sampler_slide_weights_and_paired_fraction():
    a = st.datasets.demo()
    cfg = tiny_config(gene_vocab=["ERBB2", "GAPDH"])
    paired = prepare_slides(a, cfg, use_he=True, use_gene=True)[0]
    st_only = prepare_slides(a, cfg, use_he=False, use_gene=True)[0]
    he_only = prepare_slides(a, cfg, use_he=True, use_gene=False)[0]
    slides = [paired, st_only, he_only]
    kw = {"windows": 4, "steps": 1, "patch_size": 32}
    p = WindowSampler(slides, paired_fraction=0.8, **kw).slide_probabilities()
    np.testing.assert_allclose(p, [0.8, 0.1, 0.1])  # the unpaired share split by size (equal here)
    p = WindowSampler(slides, paired_fraction=0.8, weights=[1, 1, 3], **kw).slide_probabilities()
    np.testing.assert_allclose(p, [0.8, 0.05, 0.15])  # an H&E-only slide weighted 3x within the unpaired share
    p = WindowSampler(slides, paired_fraction=0.8, weights=[1, 0, 0], **kw).slide_probabilities()
    np.testing.assert_allclose(p, [1, 0, 0])  # weight 0 leaves a slide out
    p = WindowSampler(slides, weights=[2, 1, 1], **kw).slide_probabilities()
    np.testing.assert_allclose(p, [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="one per slide"):
        WindowSampler(slides, weights=[1, 1], **kw)
    with pytest.raises(ValueError, match="not all 0"):
        WindowSampler(slides, weights=[0, 0, 0], **kw)
    with pytest.raises(ValueError, match=">= 0"):
        WindowSampler(slides, weights=[1, -1, 1], **kw)


def test_init_backbone_loads_student_and_teacher(tmp_path):
    from safetensors.torch import save_file

    from storm_st.models import StormModel

    cfg = tiny_config()
    torch.manual_seed(123)
    donor = StormModel(cfg).he_encoder.backbone.state_dict()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in donor.items()}, str(path))
    torch.manual_seed(0)
    module = StormPretraining(cfg.to_dict(), init_backbone=str(path))
    for k, v in donor.items():
        torch.testing.assert_close(module.model.he_encoder.backbone.state_dict()[k], v, rtol=0, atol=0)
        torch.testing.assert_close(module.teacher.backbone.state_dict()[k], v, rtol=0, atol=0)  # EMA target starts there too
    # a file for another architecture is refused with the missing keys, not silently half-loaded
    other = {k: v for k, v in donor.items() if not k.startswith("layer1")}
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing keys"):
        StormPretraining(cfg.to_dict(), init_backbone=str(tmp_path / "partial.safetensors"))


def test_resume_does_not_need_the_backbone_start_file(tmp_path):
    """The start weights are read once: resuming (and exporting) uses the checkpoint even if the file is gone."""
    from safetensors.torch import save_file

    from storm_st.cli import main
    from storm_st.models import StormModel, from_pretrained

    st.datasets.demo().write_h5ad(tmp_path / "demo.h5ad")
    start = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in StormModel(tiny_config()).he_encoder.backbone.state_dict().items()}, str(start))
    run = tmp_path / "run"
    path = _write_cfg(tmp_path, run, 4)
    cfg = yaml.safe_load(path.read_text())
    cfg["training"]["init_backbone"] = str(start)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", "--config", str(path), "--stop-at-step", "2"]) == 0
    start.unlink()
    assert main(["pretrain", "--config", str(path), "--resume"]) == 0
    assert from_pretrained(run / "model").extra["pretraining"]["steps"] == 4


def test_sampler_draws_different_windows_on_each_ddp_process(monkeypatch):
    import storm_st.data._dataset as ds

    a = st.datasets.demo()
    slides = prepare_slides(a, tiny_config(gene_vocab=["ERBB2"]), use_he=False, use_gene=True)
    kw = {"windows": 4, "steps": 5, "patch_size": 32, "use_he": False, "seed": 1}
    single = [b.centre_rows.tolist() for b in WindowSampler(slides, **kw)]
    monkeypatch.setattr(ds, "_process_rank", lambda: 0)
    assert [b.centre_rows.tolist() for b in WindowSampler(slides, **kw)] == single  # rank 0 = a single-process run
    monkeypatch.setattr(ds, "_process_rank", lambda: 1)
    rank1 = [b.centre_rows.tolist() for b in WindowSampler(slides, **kw)]
    assert rank1 != single
    assert [b.centre_rows.tolist() for b in WindowSampler(slides, **kw)] == rank1  # still a function of (seed, step)


def test_pretrain_cli_ddp_on_two_cpu_processes(tmp_path):
    """Lightning's DDP strategy (gloo, 2 CPU processes): trains, checkpoints and exports once, from rank 0."""
    import subprocess
    import sys

    from storm_st.models import from_pretrained

    st.datasets.demo().write_h5ad(tmp_path / "demo.h5ad")
    cfg = yaml.safe_load(_write_cfg(tmp_path, tmp_path / "ddp", 2).read_text())
    cfg["trainer"].update({"devices": 2, "strategy": "ddp"})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        [sys.executable, "-m", "storm_st.cli", "pretrain", "--config", str(path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    model = from_pretrained(tmp_path / "ddp" / "model")
    assert model.extra["pretraining"]["world_size"] == 2
    assert model.extra["pretraining"]["steps"] == 2
    ck = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 2


def test_he_to_st_term_supervises_the_encoder_outputs_of_he_only_windows():
    a = st.datasets.demo()
    genes = st.pp.select_hvgs(a, 20)
    cfg = tiny_config(gene_vocab=genes)
    slides = prepare_slides(a, cfg, use_he=True, use_gene=True, cache_patches=32)
    batch = next(iter(WindowSampler(slides, windows=6, steps=1, patch_size=32)))
    assert StormPretraining(cfg.to_dict()).st_probe is None  # off by default: nothing added
    torch.manual_seed(0)
    m = StormPretraining(cfg.to_dict(), he_to_st_weight=0.5, p_he_only=1.0).eval()
    torch.manual_seed(1)
    out = m.compute_loss(batch, train=False)
    assert torch.isfinite(out["loss_he_to_st"])
    assert "loss_he" not in out  # every H&E token is visible in an H&E-only window
    assert float(out["loss"]) == pytest.approx(float(out["loss_st"] + 0.5 * out["loss_he_to_st"]), rel=1e-5)
    m.zero_grad()
    out["loss_he_to_st"].backward()  # the term reaches the spatial encoder, not the masked decoders
    assert sum(float(p.grad.abs().sum()) for p in m.model.blocks.parameters() if p.grad is not None) > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.st_decoder.parameters())
    torch.manual_seed(1)
    none = StormPretraining(cfg.to_dict(), he_to_st_weight=0.5, p_he_only=0.0).eval().compute_loss(batch, train=False)
    assert "loss_he_to_st" not in none  # only H&E-only windows carry it


def test_pretrain_continues_a_checkpoint(tmp_path):
    """training.init_model: architecture, vocabulary and every encoder weight come from the checkpoint."""
    from storm_st.models import StormModel, from_pretrained, save_pretrained
    from storm_st.train import pretrain

    demo = st.datasets.demo()
    demo.write_h5ad(tmp_path / "demo.h5ad")
    genes = st.pp.select_hvgs(demo, 40)
    torch.manual_seed(0)
    save_pretrained(StormModel(tiny_config(gene_vocab=genes, head_genes=genes[:3])), tmp_path / "start")
    start = from_pretrained(tmp_path / "start")
    cfg = yaml.safe_load(_write_cfg(tmp_path, tmp_path / "cont", 2).read_text())
    del cfg["model"], cfg["vocab"]
    cfg["training"].update(init_model=str(tmp_path / "start"), lr=0.0, backbone_lr=0.0)  # lr 0: weights stay put
    cont = from_pretrained(pretrain(cfg))
    assert cont.config.gene_vocab == start.config.gene_vocab and cont.config.hidden_dim == 32
    assert cont.head is None and not cont.config.head_genes  # a head would no longer fit the continued encoder
    assert cont.extra["pretraining"]["init_model"] == {"name": str(tmp_path / "start"), "sha256": start.checkpoint_sha256}
    got = dict(cont.named_parameters())
    for k, v in start.named_parameters():
        if not k.startswith("head."):
            torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=f"{k} did not start from the checkpoint")
    # what cannot be continued is refused before any slide is read
    for change, match in (
        ({"model": {"hidden_dim": 64}}, "model.hidden_dim"),
        ({"vocab": {"genes": genes}}, "vocab.genes"),
        ({"training": {**cfg["training"], "init_backbone": "x.safetensors"}}, "init_backbone"),
    ):
        with pytest.raises(ValueError, match=match):
            pretrain({**cfg, **change, "data": {"slides": [{"path": "missing.h5ad"}]}})


def test_pretrain_from_objects_in_memory(tmp_path):
    """From Python, slides may be AnnData objects and init_model a model object; neither is modified or printed."""
    from storm_st.models import StormModel
    from storm_st.train import pretrain

    demo = st.datasets.demo()
    before = demo.copy()
    genes = st.pp.select_hvgs(demo, 40)
    torch.manual_seed(0)
    start = StormModel(tiny_config(gene_vocab=genes))
    start.name = "mine"
    weights = {k: v.clone() for k, v in start.state_dict().items()}
    cfg = {"training": {"init_model": start, "max_steps": 2, "warmup_steps": 1},
           "data": {"windows_per_batch": 4, "slides": [{"adata": demo, "use": "st"}]},
           "trainer": {"accelerator": "cpu", "checkpoint_every_n_steps": 2, "log_every_n_steps": 1,
                       "enable_progress_bar": False}}
    out = pretrain(cfg, output=tmp_path / "run")
    resolved = json.loads((tmp_path / "run" / "config_resolved.json").read_text())
    assert resolved["config"]["data"]["slides"][0]["adata"] == f"<in-memory AnnData {demo.n_obs} x {demo.n_vars}>"
    assert resolved["init_model"]["name"] == "mine" and resolved["config"]["training"]["init_model"] == "mine"
    cont = st.load_model(out)
    assert cont.config.gene_vocab == [g.upper() for g in genes]
    assert any(not torch.equal(v, weights[k]) for k, v in cont.state_dict().items() if k in weights)  # it trained
    for k, v in start.state_dict().items():  # ... a copy: the model given is unchanged
        assert torch.equal(v, weights[k])
    assert np.array_equal(demo.X.toarray(), before.X.toarray()) and demo.obs.equals(before.obs)
    assert list(demo.obsm) == list(before.obsm) and list(demo.uns) == list(before.uns) and list(demo.layers) == list(before.layers)


def test_pretraining_reads_patches_at_patch_mpp(tmp_path, monkeypatch):
    """model.patch_mpp: pretraining caches and augments each slide's patches at field / patch_mpp px."""
    from storm_st.cli import main
    from storm_st.models import from_pretrained
    from storm_st.train import _pretrain

    st.datasets.demo().write_h5ad(tmp_path / "demo.h5ad")  # legacy ST: 100 µm spots, tiny_config's fov_scale 1
    cfg = _write_cfg(tmp_path, tmp_path / "run", 2)
    sizes = []
    real = _pretrain.augment
    monkeypatch.setattr(_pretrain, "augment", lambda x, size, **kw: sizes.append((x.shape[-1], size)) or real(x, size, **kw))
    assert main(["pretrain", "--config", str(cfg), "--set", "model.patch_mpp=2.5"]) == 0
    assert sizes and set(sizes) == {(40, 40)}  # 100 µm / 2.5 µm/px, not image_size (32)
    assert from_pretrained(tmp_path / "run" / "model").config.patch_mpp == 2.5
    with pytest.raises(ValueError, match="cache_patch_size cannot be combined with model.patch_mpp"):
        main(["pretrain", "--config", str(cfg), "--set", "model.patch_mpp=2.5", "--set", "data.cache_patch_size=48",
              "--set", f"output={tmp_path / 'run2'}"])
