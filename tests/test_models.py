import json
import math

import numpy as np
import pytest
import torch
from _helpers import GENES, synthetic_slide, tiny_config, tiny_model

import storm_st as st
from storm_st.data import make_batch, prepare_slides
from storm_st.models import StormConfig, StormModel, alibi_bias, alibi_slopes, from_pretrained, save_pretrained


def test_alibi_slopes_and_bias_values():
    s = alibi_slopes(8)
    assert torch.allclose(s, torch.tensor([2 ** (-(i + 1)) for i in range(8)], dtype=s.dtype))
    pos = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]])
    b = alibi_bias(pos, torch.tensor([0.5, 0.25]))
    assert b.shape == (1, 2, 3, 3)
    assert math.isclose(float(b[0, 0, 0, 1]), -0.5 * 5.0) and math.isclose(float(b[0, 1, 1, 0]), -0.25 * 5.0)
    assert float(b[0, 0, 2, 2]) == 0.0


def _slide_tensors(model, he=True, gene=True):
    a = synthetic_slide()
    s = prepare_slides(a, model.config, use_he=he, use_gene=gene)[0]
    return a, s


def test_window_radius_is_a_model_setting():
    m = tiny_model()
    a = synthetic_slide(9, 9)
    n_default = (prepare_slides(a, m.config, use_he=True, use_gene=False)[0].neighbors[:, 1:] >= 0).sum(1)
    m.config.window_radius = 1.05  # the six nearest spots of the hexagonal lattice only
    n_ring = (prepare_slides(a, m.config, use_he=True, use_gene=False)[0].neighbors[:, 1:] >= 0).sum(1)
    assert n_default.max() == 24 and n_ring.max() == 6 and (n_ring <= n_default).all()
    # checkpoints written before the setting existed read the default
    d = m.config.to_dict()
    assert d["window_radius"] == 1.05
    del d["window_radius"]
    assert type(m.config).from_dict(d).window_radius == 3.0
    with pytest.raises(ValueError, match="window_radius must be a positive number of lattice pitches"):
        type(m.config).from_dict({**d, "window_radius": 0})


def test_window_shapes_edge_padding_and_he_only():
    m = tiny_model()
    _, s = _slide_tensors(m)
    batch = make_batch(s, np.arange(s.n), image_size=32, use_he=True, use_gene=True)
    tables = {"he": m.encode_he(batch.patches)[1], "gene": m.encode_gene(batch.expr, batch.present)}
    avail = {"he": batch.has_he, "gene": batch.has_gene}
    wt = m.build_tokens(tables, avail, batch.window_index, batch.rel_pos)
    assert wt.tokens.shape == (s.n, 50, 32) and wt.segments == [("he", 25), ("gene", 25)]
    corner = 0
    assert not wt.valid[corner].all() and wt.valid[corner, 0]  # edge spot: padded window
    out = m.spatial_encode(wt)
    assert torch.isfinite(out).all() and (out[~wt.valid] == 0).all()
    # H&E-only input is simply fewer tokens
    wt_he = m.build_tokens({"he": tables["he"]}, avail, batch.window_index, batch.rel_pos)
    assert wt_he.tokens.shape[1] == 25 and wt_he.segments == [("he", 25)]
    emb = m(tables={"he": tables["he"]}, available=avail, window_index=batch.window_index, rel_pos=batch.rel_pos)
    assert emb.shape == (s.n, 32)


def test_expert_routing_gene_tokens_never_touch_he_ffn():
    m = tiny_model()
    seen = {"he": 0, "gene": 0}

    def hook(name):
        def f(module, inp, out):
            seen[name] += inp[0].shape[1]

        return f

    for blk in m.blocks:
        for name, ffn in blk.experts.items():
            ffn.register_forward_hook(hook(name))
    _, s = _slide_tensors(m, he=False)
    batch = make_batch(s, np.arange(s.n), image_size=32, use_he=False, use_gene=True)
    m({"gene": m.encode_gene(batch.expr, batch.present)}, {"gene": batch.has_gene}, batch.window_index, batch.rel_pos)
    assert seen["he"] == 0 and seen["gene"] == 25 * len(m.blocks)


def test_masked_positions_do_not_leak():
    m = tiny_model()
    _, s = _slide_tensors(m)
    centre = 24
    batch = make_batch(s, np.array([centre]), image_size=32, use_he=True, use_gene=True)
    tables = {"he": m.encode_he(batch.patches)[1], "gene": m.encode_gene(batch.expr, batch.present)}
    avail = {"he": batch.has_he, "gene": batch.has_gene}
    vis = {"he": torch.zeros(1, 25, dtype=torch.bool), "gene": torch.zeros(1, 25, dtype=torch.bool)}
    vis["he"][0, :5] = True
    vis["gene"][0, :5] = True
    wt = m.build_tokens(tables, avail, batch.window_index, batch.rel_pos, vis)
    out = m.spatial_encode(wt)
    # change every masked spot's tokens: the visible outputs must not move
    masked_rows = batch.window_index[0, 5:]
    t2 = {k: v.clone() for k, v in tables.items()}
    for k in t2:
        t2[k][masked_rows] = torch.randn_like(t2[k][masked_rows]) * 10
    out2 = m.spatial_encode(m.build_tokens(t2, avail, batch.window_index, batch.rel_pos, vis))
    torch.testing.assert_close(out, out2)


def test_gene_encoder_is_panel_agnostic():
    m = tiny_model()
    e = torch.rand(4, len(GENES))
    full = torch.ones(len(GENES), dtype=torch.bool)
    panel = full.clone()
    panel[10:] = False
    a = m.encode_gene(e, panel)
    e2 = e.clone()
    e2[:, 10:] = 99.0  # absent genes do not matter
    torch.testing.assert_close(a, m.encode_gene(e2, panel))


def test_checkpoint_round_trip_bit_exact(tmp_path):
    m = tiny_model(head_genes=["GENE1", "GENE2"])
    save_pretrained(m, tmp_path / "ck")
    m2 = from_pretrained(tmp_path / "ck")
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert m2.config == m.config and not m2.training
    again = st.load_model(tmp_path / "ck")
    assert again.config.head_genes == ["GENE1", "GENE2"]


def test_corrupted_checkpoint_refused(tmp_path):
    m = tiny_model()
    path = save_pretrained(m, tmp_path / "ck")
    w = path / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="Checksum mismatch"):
        from_pretrained(path)
    path2 = save_pretrained(m, tmp_path / "ck2")
    meta = json.loads((path2 / "config.json").read_text())
    meta["config"]["hidden_dim"] = 48
    (path2 / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match the architecture"):
        from_pretrained(path2)
    meta["config"]["bogus_field"] = 1
    (path2 / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Unknown model config fields"):
        from_pretrained(path2)
    with pytest.raises(FileNotFoundError, match="not a storm_st checkpoint"):
        from_pretrained(tmp_path)


def test_average_models_averages_weights_and_refuses_other_architectures(tmp_path):
    from storm_st.models import average_models

    a = tiny_model()
    torch.manual_seed(1)
    b = StormModel(tiny_config()).eval()
    a.extra = {"training_stains": {"s": 1}}
    b.extra = {"training_stains": {"s": 1}}
    before = {k: v.clone() for k, v in a.state_dict().items()}
    soup = average_models([a, b])
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in soup.state_dict().items():
        if v.is_floating_point():  # BatchNorm running statistics too
            torch.testing.assert_close(v, (sa[k] + sb[k]) / 2, rtol=0, atol=1e-6)
        else:  # e.g. num_batches_tracked
            assert torch.equal(v, sa[k])
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # two different models went in
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items())  # inputs untouched
    assert soup.extra["training_stains"] == {"s": 1} and len(soup.extra["averaged_from"]) == 2
    assert not soup.training and soup.checkpoint_sha256 is None
    back = from_pretrained(save_pretrained(soup, tmp_path / "soup"))  # a checkpoint like any other
    assert back.extra["averaged_from"] == soup.extra["averaged_from"]
    b.extra = {"training_stains": {"s": 2}}
    assert "training_stains" not in average_models([a, b]).extra  # no single record of the stains
    with pytest.raises(ValueError, match="differs in \\['hidden_dim'"):
        average_models([a, StormModel(tiny_config(hidden_dim=48, num_heads=4))])
    with pytest.raises(ValueError, match="at least two"):
        average_models([a])


def test_load_model_names(tmp_path):
    with pytest.raises(ValueError, match="Unknown model"):
        st.load_model("no-such-model")
    m = st.load_model("storm-small", gene_vocab=["a", "b"], he_backbone="resnet10t", image_size=32, hidden_dim=32, num_heads=4)
    assert isinstance(m, StormModel) and m.config.gene_vocab == ["A", "B"]


def test_storm_base_architecture_is_h0mini_like():
    cfg = tiny_config()
    from storm_st.models import PRESETS

    base = PRESETS["storm-base"]
    assert base["he_backbone"] == "vit_base_patch14_reg4_dinov2" and base["he_backbone_kwargs"]["mlp_layer"] == "swiglu_packed"
    assert cfg.hidden_dim == 32


@pytest.mark.slow
def test_storm_base_builds_and_loads_backbone_weights(tmp_path):
    from safetensors.torch import save_file

    m = st.load_model("storm-base", gene_vocab=GENES)
    assert m.he_encoder.out_dim == 768 and m.he_encoder.backbone.num_reg_tokens == 4
    save_file({k: v.contiguous() for k, v in m.he_encoder.backbone.state_dict().items()}, str(tmp_path / "h0.safetensors"))
    m2 = st.load_model("storm-base", gene_vocab=GENES, he_weights=tmp_path / "h0.safetensors")
    k = "blocks.0.attn.qkv.weight"
    assert torch.equal(m2.he_encoder.backbone.state_dict()[k], m.he_encoder.backbone.state_dict()[k])


def test_backbone_weights_load_into_a_model_or_an_encoder_alone(tmp_path):
    """One loader serves a STORM model and a bare H&E encoder (scripts/supervised_backbone.py --init); a file of
    another architecture is refused with the backbone's name."""
    from safetensors.torch import save_file

    from storm_st.models import HEEncoder, load_backbone_weights

    src = tiny_model()
    path = tmp_path / "backbone.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in src.he_encoder.backbone.state_dict().items()}, str(path))
    torch.manual_seed(1)
    enc = HEEncoder(src.config)
    dst = tiny_model()
    with torch.no_grad():
        for w in dst.he_encoder.backbone.parameters():
            w.zero_()
    k0 = next(iter(src.he_encoder.backbone.state_dict()))
    for m in (enc, dst.he_encoder):
        assert not torch.equal(m.backbone.state_dict()[k0], src.he_encoder.backbone.state_dict()[k0])
    load_backbone_weights(enc, path)
    load_backbone_weights(dst, path)
    for k, v in src.he_encoder.backbone.state_dict().items():
        assert torch.equal(enc.backbone.state_dict()[k], v) and torch.equal(dst.he_encoder.backbone.state_dict()[k], v)
    other = tmp_path / "other.safetensors"
    save_file({"stem.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(ValueError, match=f"does not fit backbone {src.config.he_backbone!r}"):
        load_backbone_weights(enc, other)


def test_default_model_loads_offline():
    m = st.load_model()
    assert m.head is not None and len(m.config.gene_vocab) > 100
    assert m.checkpoint_sha256


def test_gene_encoder_reads_an_obsm_embedding(tmp_path):
    """gene_input='obsm:<key>' (the paper's frozen NOVAE encoder): gene tokens come from the embedding alone."""
    from storm_st.models import FeatureGeneEncoder, StormConfig

    with pytest.raises(ValueError, match="obsm:<key>"):
        tiny_config(gene_input="novae")
    with pytest.raises(ValueError, match="gene_input_dim"):
        tiny_config(gene_input="obsm:emb")
    m = tiny_model(gene_input="obsm:emb", gene_input_dim=8)
    assert isinstance(m.gene_encoder, FeatureGeneEncoder) and m.config.gene_obsm_key == "emb"
    assert StormConfig.from_dict(m.config.to_dict()) == m.config
    a = synthetic_slide()
    rng = np.random.default_rng(0)
    a.obsm["emb"] = rng.normal(size=(a.n_obs, 8)).astype(np.float32)
    s = prepare_slides(a, m.config, use_he=False, use_gene=True)[0]
    assert s.gene_feats.shape == (a.n_obs, 8)
    b = make_batch(s, np.arange(5), image_size=None, use_he=False, use_gene=True)
    with torch.no_grad():
        tok = m.encode_gene(b.expr, b.present, b.gene_feats)
        assert torch.equal(tok, m.encode_gene(b.expr * 0 + 7, b.present, b.gene_feats))  # expression is not read
        assert not torch.allclose(tok, m.encode_gene(b.expr, b.present, b.gene_feats.flip(1)))
    with pytest.raises(ValueError, match="obsm"):
        m.encode_gene(b.expr, b.present)
    # the whole API path: embedding, checkpoint round trip
    before = a.copy()
    st.tl.embed(a, m, modalities="st", show_progress=False)
    assert a.obsm["X_storm"].shape == (a.n_obs, m.config.hidden_dim) and np.isfinite(a.obsm["X_storm"]).all()
    save_pretrained(m, tmp_path / "ck")
    m2 = st.load_model(tmp_path / "ck")
    e2 = st.tl.embed(before.copy(), m2, modalities="st", show_progress=False, copy=True).obsm["X_storm"]
    np.testing.assert_allclose(e2, a.obsm["X_storm"], rtol=1e-5, atol=1e-5)
    # bad input: clear errors, the AnnData left untouched
    for bad, err, msg in (
        (lambda x: x.obsm.pop("emb"), KeyError, "missing"),
        (lambda x: x.obsm.__setitem__("emb", np.zeros((x.n_obs, 5))), ValueError, "expects"),
        (lambda x: x.obsm.__setitem__("emb", np.full((x.n_obs, 8), np.nan)), ValueError, "NaN"),
    ):
        x = before.copy()
        bad(x)
        keys = set(x.obsm)
        with pytest.raises(err, match=msg):
            st.tl.embed(x, m, modalities="st", show_progress=False)
        assert set(x.obsm) == keys
    with pytest.raises(KeyError, match="novae_embeddings"):
        st.tl.embed(before.copy(), tiny_model(gene_input="obsm:novae_latent", gene_input_dim=8), modalities="st",
                    show_progress=False)


def test_patch_mpp_reads_every_platform_at_one_pixel_size():
    """patch_mpp fixes the pixel size: a patch's side follows its field; None keeps image_size px for every field."""
    plain, fixed = tiny_config(), tiny_config(patch_mpp=2.75)
    assert plain.patch_px(110.0) == plain.patch_px(200.0) == 32
    assert fixed.patch_px(110.0) == 40 and fixed.patch_px(220.0) == 80
    assert fixed.patch_px(10.0) == 32  # never below MIN_PATCH_PX
    assert StormConfig.from_dict(fixed.to_dict()).patch_mpp == 2.75
    for bad in (0, -1.0, True, "2.5"):
        with pytest.raises(ValueError, match="patch_mpp must be a positive number"):
            tiny_config(patch_mpp=bad)
    a = synthetic_slide(mpp=2.0)  # 55 µm spots; fov_scale 2 -> a 110 µm field
    s_fixed = prepare_slides(a, tiny_config(patch_mpp=2.75, fov_scale=2.0), use_he=True, use_gene=False)[0]
    s_plain = prepare_slides(a, tiny_config(fov_scale=2.0), use_he=True, use_gene=False)[0]
    assert s_fixed.patch_px == 40 and s_plain.patch_px == 32
    rows = np.arange(5)
    assert s_fixed.read_patches(rows).shape == (5, 40, 40, 3)
    np.testing.assert_array_equal(s_fixed.read_patches(rows), st.pp.extract_patches(s_fixed.view, rows, fov_um=110.0, size=40))
    cached = prepare_slides(a, tiny_config(patch_mpp=2.75, fov_scale=2.0), use_he=True, use_gene=False, cache_patches=True)[0]
    assert cached.patches.shape[1] == 40


def test_patch_mpp_reaches_the_backbone_at_inference():
    """A model with patch_mpp embeds exactly like the same weights told to read patches of that side."""
    torch.manual_seed(0)
    m = tiny_model(patch_mpp=2.75, fov_scale=2.0)
    same = StormModel(tiny_config(image_size=40, fov_scale=2.0)).eval()
    same.load_state_dict(m.state_dict())
    other = StormModel(tiny_config(fov_scale=2.0)).eval()  # 32 px: a different input
    other.load_state_dict(m.state_dict())
    out = {}
    for name, model in (("fixed", m), ("same", same), ("other", other)):
        a = synthetic_slide(mpp=2.0)
        st.tl.embed(a, model, modalities="he", show_progress=False)
        out[name] = a.obsm["X_storm"]
    np.testing.assert_allclose(out["fixed"], out["same"], rtol=0, atol=1e-6)
    assert not np.allclose(out["fixed"], out["other"], atol=1e-3)


def test_patch_geometry_is_recorded_in_provenance(tmp_path):
    """uns['storm'] / uns['storm_virtual'] say at which field, side and pixel size each slide's patches were read."""
    m = tiny_model(patch_mpp=2.75, fov_scale=2.0)
    a = synthetic_slide(mpp=2.0)
    st.tl.embed(a, m, show_progress=False)
    assert a.uns["storm"]["patches"] == {"s1": {"field_um": 110.0, "px": 40, "um_per_px": 2.75}}
    a.write_h5ad(tmp_path / "a.h5ad")  # provenance stays writable
    st.tl.embed(a, m, modalities="st", show_progress=False)
    assert "patches" not in a.uns["storm"]  # no H&E read
    fitted = st.tl.fit_expression_head([synthetic_slide(mpp=2.0)], m, genes=GENES[:5], epochs=1, show_progress=False)
    virtual = st.tl.impute_expression(synthetic_slide(mpp=2.0, seed=1)[:, :0].copy(), fitted, show_progress=False)
    assert virtual.uns["storm_virtual"]["patches"]["s1"]["px"] == 40


def _first_bn_normalised(model, slide):
    """The first BatchNorm layer's inputs over every patch of ``slide`` while it is encoded, standardised by the
    statistics that layer held at the time (timm's BatchNormAct2d applies its activation after; this is before it)."""
    from storm_st._inference import batchnorm_layers, encode_slide

    seen = []

    def grab(mod, inp):
        if not mod.training:
            mean, var = mod.running_mean.view(1, -1, 1, 1), mod.running_var.view(1, -1, 1, 1)
            seen.append((inp[0].detach() - mean) / torch.sqrt(var + mod.eps))

    hook = batchnorm_layers(model.he_encoder)[0].register_forward_pre_hook(grab)
    try:
        encode_slide(model, slide, use_he=True, use_gene=False, batch_size=16)
    finally:
        hook.remove()
    return torch.cat(seen)


def test_bn_stats_slide_normalises_each_slide_with_its_own_statistics():
    m = tiny_model()
    a = synthetic_slide(9, 9)  # 81 spots: batches of 16 would leave a lone patch, which the estimate must avoid
    s = prepare_slides(a, m.config, use_he=True, use_gene=False)[0]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    z = _first_bn_normalised(m, s)  # training statistics (a fresh model's: mean 0, variance 1)
    assert z.mean(dim=(0, 2, 3)).abs().max() > 0.1  # not centred by statistics the slide did not give
    st.models.set_bn_stats(m, "slide")
    z = _first_bn_normalised(m, s)
    # standardised by its own statistics, the slide's first-layer activations have mean 0 and variance 1 per channel
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(z.shape[1]), atol=1e-4)
    assert torch.allclose(z.var(dim=(0, 2, 3)), torch.ones(z.shape[1]), rtol=1e-3)
    # the model's own statistics, weights and modes are back afterwards
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not any(x.training for x in m.modules())
    one = prepare_slides(synthetic_slide(1, 1), m.config, use_he=True, use_gene=False)[0]
    with pytest.raises(ValueError, match="has 1 spot: use bn_stats='training'"):
        _first_bn_normalised(m, one)


def test_bn_stats_setting_is_validated_and_saved(tmp_path):
    m = tiny_model()
    assert m.config.bn_stats == "training"
    with pytest.raises(ValueError, match="bn_stats must be one of"):
        st.models.set_bn_stats(m, "batch")
    st.models.set_bn_stats(m, "slide")
    save_pretrained(m, tmp_path / "m")
    assert from_pretrained(tmp_path / "m").config.bn_stats == "slide"
    assert st.load_model(tmp_path / "m", bn_stats="training").config.bn_stats == "training"
    d = m.config.to_dict()
    del d["bn_stats"]  # checkpoints written before the setting existed use the training statistics
    assert StormConfig.from_dict(d).bn_stats == "training"
    vit = tiny_model(he_backbone="vit_tiny_patch16_224", he_backbone_kwargs={"img_size": 32})
    with pytest.raises(ValueError, match="has no BatchNorm layers"):
        st.models.set_bn_stats(vit, "slide")
    vit.config.bn_stats = "slide"  # set in a config by hand: encoding is simply unaffected
    s = prepare_slides(synthetic_slide(), vit.config, use_he=True, use_gene=False)[0]
    from storm_st._inference import encode_slide

    a = encode_slide(vit, s, use_he=True, use_gene=False).embedding
    vit.config.bn_stats = "training"
    np.testing.assert_array_equal(a, encode_slide(vit, s, use_he=True, use_gene=False).embedding)


def test_build_default_model_averages_several_runs(tmp_path):
    """scripts/build_default_model.py --run A B: the runs' exported models are averaged (design experiment 47), each
    run's facts kept for the docs, and the averaged pretrained model saved where --average-out says."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "build_default_model.py"
    spec = importlib.util.spec_from_file_location("build_default_model", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    runs = []
    for i, data_seed in enumerate((None, 1)):
        torch.manual_seed(i)
        m = StormModel(tiny_config()).eval()
        m.extra = {"pretraining": {"steps": 3, "wall_time_s": 10.0 + i,
                                   "config": {"trainer": {"seed": 0, "data_seed": data_seed}}}}
        run = tmp_path / ("default" if i == 0 else "default_ds1")
        save_pretrained(m, run / "model")
        runs.append(run)
    one = script._pretrained(runs[:1], str(tmp_path / "unused"))
    assert "averaged_runs" not in one.extra["pretraining"] and not (tmp_path / "unused").exists()
    soup = script._pretrained(runs, str(tmp_path / "avg"))
    a, b = (from_pretrained(r / "model").state_dict() for r in runs)
    for k, v in soup.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a[k] + b[k]) / 2, rtol=0, atol=1e-6)
    assert from_pretrained(tmp_path / "avg").checkpoint_sha256 == soup.checkpoint_sha256
    info = soup.extra["pretraining"]
    assert [r["data_seed"] for r in info["averaged_runs"]] == [0, 1] and info["wall_time_s"] == 21.0
    assert info["steps"] == 3 and info["averaged_runs"][1]["sha256"] != info["averaged_runs"][0]["sha256"]
    averaged = [{**r, "run": f"runs/{Path(r['run']).name}"} for r in info["averaged_runs"]]
    assert script._pretrain_commands(averaged).splitlines() == [
        "storm-st pretrain --config configs/default.yaml",
        "storm-st pretrain --config configs/default.yaml --output runs/default_ds1 --set trainer.data_seed=1",
    ]
    assert "runs/default 10.0 s, runs/default_ds1 11.0 s" in script._averaged_wall_time(averaged)
