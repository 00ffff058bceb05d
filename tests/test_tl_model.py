import numpy as np
import pandas as pd
import pytest
from _helpers import GENES, synthetic_slide, tiny_model

import storm_st as st


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def model_with_head(model):
    a = synthetic_slide()
    return st.tl.fit_expression_head([a], model, genes=GENES[:10], epochs=2, augment=False, show_progress=False)


def test_embed_writes_keys_and_provenance(model):
    a = synthetic_slide()
    assert st.tl.embed(a, model, show_progress=False) is None
    assert a.obsm["X_storm"].shape == (a.n_obs, 32)
    assert a.obsm["X_storm_he"].shape[0] == a.n_obs and a.obsm["X_storm_gene"].shape == (a.n_obs, 32)
    assert a.obsm["storm_neighbors"].shape == (a.n_obs, 25)
    assert a.uns["storm"]["modalities"] == "he+st" and a.uns["storm"]["version"]
    assert np.isfinite(a.obsm["X_storm"]).all()


@pytest.mark.parametrize(("modalities", "expected"), [("he", "he"), ("st", "st"), ("he+st", "he+st")])
def test_embed_modalities(model, modalities, expected):
    a = synthetic_slide()
    b = st.tl.embed(a, model, modalities=modalities, copy=True, show_progress=False)
    assert "X_storm" not in a.obsm and b.uns["storm"]["modalities"] == expected
    assert ("X_storm_he" in b.obsm) == ("he" in expected)


def test_embed_multislide_matches_single(model):
    a, b = synthetic_slide(library_id="a"), synthetic_slide(library_id="b", seed=3)
    both = st.io.concat_slides([a, b])
    st.tl.embed(both, model, show_progress=False)
    st.tl.embed(a, model, show_progress=False)
    np.testing.assert_allclose(both.obsm["X_storm"][: a.n_obs], a.obsm["X_storm"], rtol=1e-4, atol=1e-5)


def test_bn_stats_slide_gives_each_slide_its_own_statistics(model):
    import copy

    m = copy.deepcopy(model)
    st.models.set_bn_stats(m, "slide")
    a, b = synthetic_slide(library_id="a"), synthetic_slide(library_id="b", seed=3)
    img = b.uns["spatial"]["b"]["images"]["hires"]
    b.uns["spatial"]["b"]["images"]["hires"] = (img * 0.5).astype(np.uint8)  # a fainter slide beside it
    both = st.io.concat_slides([a, b])
    kw = {"modalities": "he", "copy": True, "show_progress": False}
    e_both, e_a = st.tl.embed(both, m, **kw), st.tl.embed(a, m, **kw)
    # each slide is normalised by its own statistics, whatever slides share its AnnData
    np.testing.assert_allclose(e_both.obsm["X_storm"][: a.n_obs], e_a.obsm["X_storm"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(st.tl.embed(a, model, **kw).obsm["X_storm"], e_a.obsm["X_storm"], atol=1e-3)
    assert e_a.uns["storm"]["bn_stats"] == "slide"
    head = st.tl.fit_expression_head([a], m, genes=GENES[:4], epochs=1, augment=False, show_progress=False)
    assert head.config.bn_stats == "slide"  # a head fitted under the setting predicts under it
    v = st.tl.impute_expression(b, head, tta=False, show_progress=False)
    assert v.uns["storm_virtual"]["bn_stats"] == "slide" and np.isfinite(v.X).all()


def test_embed_and_impute_spatialdata(model_with_head):
    a = synthetic_slide()
    sdata = st.io.to_spatialdata(a)
    table_key = next(iter(sdata.tables))
    st.tl.embed(sdata, model_with_head, table_key=table_key, show_progress=False)
    assert "X_storm" in sdata.tables[table_key].obsm


def test_embed_warns_about_spots_with_almost_no_counts(model):
    import warnings

    a = synthetic_slide()
    a.X = a.X.toarray()
    a.X[3] = 0
    a.X[3, 0] = 1  # one read: normalised, an extreme profile
    with pytest.warns(UserWarning, match=r"1 of \d+ spots have fewer than 10 counts"):
        st.tl.embed(a, model, modalities="st", show_progress=False)
    c = a.copy()  # raw counts in layers['counts'] are what the expression input reads, whatever X holds
    c.layers["counts"] = c.X.copy()
    c.X = np.full(c.shape, 100.0, dtype=np.float32)
    with pytest.warns(UserWarning, match=r"1 of \d+ spots have fewer than 10 counts"):
        st.tl.embed(c, model, modalities="st", show_progress=False)
    b = a[np.asarray(a.X.sum(1)).ravel() >= 10].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        st.tl.embed(b, model, modalities="st", show_progress=False)
        st.tl.embed(a, model, modalities="he", show_progress=False)  # expression unused: nothing to warn about


def test_embed_bad_inputs_leave_object_untouched(model):
    a = synthetic_slide()
    a.X = a.X.toarray()
    a.X[0, 0] = np.nan
    keys = set(a.obsm)
    with pytest.raises(ValueError, match="NaN"):
        st.tl.embed(a, model, modalities="st", show_progress=False)
    assert set(a.obsm) == keys and "storm" not in a.uns
    b = synthetic_slide()
    del b.uns["spatial"]["s1"]["images"]["hires"]
    with pytest.raises(ValueError, match="has no image"):
        st.tl.embed(b, model, modalities="he", show_progress=False)
    c = synthetic_slide()
    c.var_names = [f"X{i}" for i in range(c.n_vars)]
    with pytest.raises(ValueError, match="0 of 30 vocabulary genes matched"):
        st.tl.embed(c, model, modalities="st", show_progress=False)
    with pytest.raises(ValueError, match="no spots"):
        st.tl.embed(synthetic_slide()[:0].copy(), model, show_progress=False)
    with pytest.raises(ValueError, match="modalities must be"):
        st.tl.embed(synthetic_slide(), model, modalities="rna", show_progress=False)
    d = synthetic_slide()
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad!r}"):
            st.tl.embed(d, model, batch_size=bad, show_progress=False)
    assert "X_storm" not in d.obsm and "storm" not in d.uns


def test_fit_head_and_impute_new_anndata(model_with_head):
    assert model_with_head.config.head_genes == GENES[:10]
    a = synthetic_slide(seed=5)
    v = st.tl.impute_expression(a, model_with_head, tta=False, show_progress=False)
    assert v.shape == (a.n_obs, 10) and list(v.var_names) == GENES[:10]
    assert (v.obs_names == a.obs_names).all() and "storm_virtual" not in a.layers
    assert (v.X >= 0).all()
    pcc = st.tl.expression_pcc(a, v)
    const = np.asarray(v.X).std(0) == 0  # undefined correlation only where the prediction is constant
    assert pcc.shape == (10,) and (np.isnan(pcc.to_numpy()) == const).all()


def test_impute_into_layer_when_genes_match(model_with_head):
    a = synthetic_slide()[:, GENES[:10]].copy()
    assert st.tl.impute_expression(a, model_with_head, tta=False, show_progress=False) is None
    assert a.layers["storm_virtual"].shape == a.shape
    sub = st.tl.impute_expression(synthetic_slide(), model_with_head, genes=["gene2"], tta=False, show_progress=False)
    assert list(sub.var_names) == ["GENE2"]
    with pytest.raises(ValueError, match="not predicted by this model"):
        st.tl.impute_expression(a, model_with_head, genes=["NOPE"], show_progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -1"):
        st.tl.impute_expression(a, model_with_head, batch_size=-1, show_progress=False)


def test_impute_needs_head_and_image(model, model_with_head):
    with pytest.raises(ValueError, match="no expression head"):
        st.tl.impute_expression(synthetic_slide(), model, show_progress=False)
    b = synthetic_slide()
    del b.uns["spatial"]["s1"]["images"]["hires"]
    with pytest.raises(ValueError, match="has no image"):
        st.tl.impute_expression(b, model_with_head, show_progress=False)


def test_impute_from_he_only_wsi(model_with_head, tmp_path):
    from PIL import Image

    a = synthetic_slide(nx=12, ny=12)
    img = a.uns["spatial"]["s1"]["images"]["hires"]
    Image.fromarray(img).save(tmp_path / "he.png")
    he = st.io.read_wsi(tmp_path / "he.png", mpp=5.0, tissue_only=False)
    assert he.n_vars == 0 and he.n_obs > 0
    v = st.tl.impute_expression(he, model_with_head, tta=False, show_progress=False)
    assert v.shape == (he.n_obs, 10)


def test_chain_with_scanpy(model):
    import scanpy as sc

    a = synthetic_slide()
    st.tl.embed(a, model, show_progress=False)
    sc.pp.neighbors(a, use_rep="X_storm")
    sc.tl.umap(a)
    st.tl.domains(a, n_domains=3)
    assert a.obs["storm_domain"].nunique() == 3 and "X_umap" in a.obsm


def test_auto_drops_an_image_too_coarse_for_morphology(model):
    a = synthetic_slide(mpp=5.0)  # tiny model: 55 µm over 32 px needs 1.7 µm/px; 5 µm/px is < 4x coarser
    st.tl.embed(a, model, show_progress=False)
    assert a.uns["storm"]["modalities"] == "he+st"
    b = synthetic_slide(mpp=5.0)
    lib = b.uns["spatial"]["s1"]
    lib["images"]["hires"] = lib["images"]["hires"][::8, ::8].copy()
    lib["scalefactors"]["tissue_hires_scalef"] = 1 / 8
    with pytest.warns(UserWarning, match="too coarse"):
        st.tl.embed(b, model, show_progress=False)
    assert b.uns["storm"]["modalities"] == "st"


def test_head_reading_the_spot_token_beside_the_centre_embedding(model, tmp_path):
    import torch

    a = synthetic_slide()
    m = st.tl.fit_expression_head(
        [a], model, genes=GENES[:6], epochs=2, augment=False, head_input="centre+spot", show_progress=False
    )
    assert m.config.head_input == "centre+spot" and model.config.head_input == "centre"  # input model untouched
    assert m.head[0].normalized_shape == (2 * m.config.hidden_dim,) and m.extra["head"]["head_input"] == "centre+spot"
    v = st.tl.impute_expression(a, m, tta=False, show_progress=False)
    # the head's input is [spatial-encoder output of the centre ; the centre's own H&E token]
    from storm_st._inference import encode_slide
    from storm_st.data import prepare_slides

    (s,) = prepare_slides(a, m.config, use_he=True, use_gene=False)
    enc = encode_slide(m.eval(), s, use_he=True, use_gene=False)
    with torch.no_grad():
        _, tok = m.encode_he(torch.from_numpy(s.read_patches(np.arange(s.n), m.config.image_size)).permute(0, 3, 1, 2))
        np.testing.assert_allclose(enc.spot_token, tok.numpy(), atol=1e-5)
        x = torch.from_numpy(np.concatenate([enc.embedding, enc.spot_token], axis=1))
        ref = m.predict_expression(x).clamp_min(0).numpy()
        # the token half matters: zeroing it changes the prediction
        zeroed = m.predict_expression(torch.cat([x[:, : m.config.hidden_dim], torch.zeros_like(tok)], 1)).numpy()
    np.testing.assert_allclose(np.asarray(v.X)[s.obs_indices], ref, atol=1e-4)
    assert not np.allclose(zeroed, ref.clip(min=0), atol=1e-4)
    # saved and loaded with its head input; a fresh head keeps it unless told otherwise
    st.models.save_pretrained(m, tmp_path / "ck")
    m2 = st.load_model(tmp_path / "ck")
    assert m2.config.head_input == "centre+spot"
    np.testing.assert_allclose(np.asarray(st.tl.impute_expression(a, m2, tta=False, show_progress=False).X), v.X, atol=1e-5)
    # whole-network fine-tuning trains through the same input
    ft = st.tl.fit_expression_head(
        [a], model, genes=GENES[:6], epochs=1, augment=False, head_input="centre+spot", finetune_epochs=1,
        show_progress=False,
    )
    assert np.isfinite(ft.extra["head"]["finetune_loss"]).all()
    with pytest.raises(ValueError, match="head_input must be one of"):
        st.tl.fit_expression_head([a], model, genes=GENES[:6], head_input="context", show_progress=False)
    with pytest.raises(ValueError, match="head_input must be one of"):
        st.models.StormConfig(head_input="neighbours")


def test_head_reading_the_spot_token_alone_ignores_the_spatial_encoder(model):
    import torch

    a = synthetic_slide()
    m = st.tl.fit_expression_head([a], model, genes=GENES[:4], epochs=1, augment=False, head_input="spot", show_progress=False)
    before = np.asarray(st.tl.impute_expression(a, m, tta=False, show_progress=False).X)
    with torch.no_grad():
        for p in m.blocks.parameters():
            p.add_(torch.randn_like(p))
    after = np.asarray(st.tl.impute_expression(a, m, tta=False, show_progress=False).X)
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_cross_validate_expression_leaves_each_slide_out(model):
    slides = [synthetic_slide(seed=i, library_id=f"lib{i}") for i in range(3)]
    before = [(s.X.copy(), dict(s.layers), set(s.uns), s.obs.copy()) for s in slides]
    kw = {"epochs": 1, "augment": False, "seed": 2}
    cv = st.tl.cross_validate_expression(slides, model, genes=GENES[:5], tta=False, show_progress=False, **kw)
    assert list(cv.columns) == ["held_out", "gene", "pearson_r", "n_train_spots"]
    assert list(cv["held_out"].cat.categories) == ["lib0", "lib1", "lib2"] and len(cv) == 3 * 5
    assert (cv["n_train_spots"] == 2 * slides[0].n_obs).all()
    for s, (x, layers, uns, obs) in zip(slides, before, strict=True):  # the slides are left as they were
        assert (s.X != x).nnz == 0 and dict(s.layers) == layers and set(s.uns) == uns
        pd.testing.assert_frame_equal(s.obs, obs)
    # the fold holding out lib1 is the head fitted on lib0 + lib2, scored on lib1
    m = st.tl.fit_expression_head([slides[0], slides[2]], model, genes=GENES[:5], show_progress=False, **kw)
    v = st.tl.impute_expression(slides[1], m, genes=GENES[:5], tta=False, show_progress=False, copy=True)
    ref = st.tl.expression_pcc(slides[1], v, genes=GENES[:5])
    got = cv[cv["held_out"] == "lib1"].set_index("gene")["pearson_r"]
    np.testing.assert_allclose(got.loc[ref.index].to_numpy(), ref.to_numpy(), atol=1e-6)
    # per-fold HVGs of the training slides when no genes are given; a mapping names the slides
    hv = st.tl.cross_validate_expression({"a": slides[0], "b": slides[1]}, model, n_top_genes=4, tta=False,
                                         show_progress=False, **kw)
    assert list(hv["held_out"].cat.categories) == ["a", "b"] and hv.groupby("held_out", observed=True).size().tolist() == [4, 4]
    assert set(hv[hv["held_out"] == "a"]["gene"]) == set(st.pp.select_hvgs([slides[1]], 4))
    with pytest.raises(ValueError, match="at least 2 slides"):
        st.tl.cross_validate_expression(slides[:1], model, show_progress=False)
    with pytest.raises(KeyError, match="layer 'counts' not in adata.layers"):
        st.tl.cross_validate_expression(slides[:2], model, layer="counts", show_progress=False)


def test_tuning_the_spatial_encoder_with_the_head(model, tmp_path):
    import torch

    from storm_st.tl._expression import _targets

    a = synthetic_slide()
    genes = GENES[:6]
    kw = {"genes": genes, "epochs": 2, "augment": False, "seed": 0, "show_progress": False}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = st.tl.fit_expression_head([a], model, **kw)
    tuned = st.tl.fit_expression_head([a], model, encoder_epochs=5, encoder_lr=1e-3, **kw)
    info = tuned.extra["head"]
    assert info["encoder_epochs"] == 5 and len(info["encoder_loss"]) == 5 and np.isfinite(info["encoder_loss"]).all()
    assert frozen.extra["head"]["encoder_loss"] == []
    ref = dict(model.named_parameters())
    for name, p in tuned.named_parameters():
        same = torch.equal(p, ref[name]) if name in ref else True
        if name.startswith(("he_encoder.", "he_proj.", "gene_encoder.")) or ".experts.gene." in name or name == "modality_embed.gene":
            assert same, f"{name} changed, but only the spatial encoder's H&E path and the head are trained"
        elif name.startswith("blocks.") and ".experts.gene." not in name:
            assert not same, f"{name} was not trained"
    # the input model is untouched, and the tuned encoder fits the training spots better than the frozen one
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    y, m = _targets(a, genes, None)

    def loss(mdl):
        v = np.asarray(st.tl.impute_expression(a, mdl, tta=False, show_progress=False)[:, genes].X)
        return float(np.mean(np.abs(v - y)[m] + ((v - y) ** 2)[m]))

    assert loss(tuned) < loss(frozen)
    # the encoder's tuning history survives a new head and a save / load; tuning again warns
    assert frozen.extra["encoder_tuning"] == [] and tuned.extra["encoder_tuning"][0]["epochs"] == 5
    st.models.save_pretrained(tuned, tmp_path / "tuned")
    reloaded = st.load_model(tmp_path / "tuned")
    new_head = st.tl.fit_expression_head([a], reloaded, **kw)
    assert new_head.extra["head"]["encoder_epochs"] == 0 and new_head.extra["encoder_tuning"] == tuned.extra["encoder_tuning"]
    with pytest.warns(UserWarning, match="already tuned with an expression head"):
        again = st.tl.fit_expression_head([a], new_head, encoder_epochs=1, **kw)
    assert [t["epochs"] for t in again.extra["encoder_tuning"]] == [5, 1]
    with pytest.raises(ValueError, match="head_input='spot'"):
        st.tl.fit_expression_head([a], model, genes=genes, head_input="spot", encoder_epochs=1, show_progress=False)
    with pytest.raises(ValueError, match="must be >= 0"):
        st.tl.fit_expression_head([a], model, genes=genes, encoder_epochs=-1, show_progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        st.tl.fit_expression_head([a], model, genes=genes, batch_size=0, show_progress=False)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        st.tl.fit_expression_head([a], model, genes=genes, epochs=0, show_progress=False)
    with pytest.raises(ValueError, match=r"lr and encoder_lr must be positive learning rates, got 0.0005 and -0.0001"):
        st.tl.fit_expression_head([a], model, genes=genes, encoder_lr=-1e-4, show_progress=False)


def test_encoder_tuning_on_every_spot_of_the_window(model):
    import copy

    import torch

    from storm_st.models._heads import expression_loss
    from storm_st.train._head import tune_encoder_with_head

    rng = np.random.default_rng(0)
    n, h, g = 12, model.config.hidden_dim, 5
    tab = rng.normal(size=(n, h)).astype(np.float32)
    y = rng.normal(size=(n, g)).astype(np.float32)
    msk = rng.random((n, g)) > 0.2
    grid = np.array([(dx, dy) for dy in range(-2, 3) for dx in range(-2, 3) if (dx, dy) != (0, 0)], dtype=np.float32)
    rel = np.concatenate([np.zeros((n, 1, 2), np.float32), np.broadcast_to(grid, (n, 24, 2))], axis=1)
    nb = np.where(rng.random((n, 24)) < 0.5, rng.integers(0, n, (n, 24)), -1)
    nb = np.concatenate([np.arange(n)[:, None], nb], axis=1)
    base = copy.deepcopy(model)
    base.set_head([f"G{i}" for i in range(g)], head_input="centre")

    def tune(targets_from, windows, **kw):
        m = copy.deepcopy(base)
        hist = tune_encoder_with_head(m, [tab], [windows], [y], [msk], epochs=2, batch_size=n, seed=0,
                                      targets_from=targets_from, **kw)
        return m, hist

    # one batch, nothing learned (lr 0): the first epoch's loss is eq. 4 over every spot each window holds, each
    # against its own row of the targets
    m0, hist = tune("window", (nb, rel), lr=0.0, encoder_lr=0.0)
    with torch.no_grad():
        win = torch.as_tensor(nb)
        out = m0.spatial_encode(m0.build_tokens({"he": torch.as_tensor(tab)}, {"he": torch.ones(n, dtype=torch.bool)},
                                                 win, torch.as_tensor(rel)))
        keep = nb >= 0
        pred = m0.predict_expression(out[torch.as_tensor(keep)])
        expected = expression_loss(pred, torch.as_tensor(y[nb[keep]]), torch.as_tensor(msk[nb[keep]])).item()
    assert keep.sum() > 3 * n and hist[0] == pytest.approx(expected, rel=1e-5)
    _, centre_hist = tune("centre", (nb, rel), lr=0.0, encoder_lr=0.0)
    assert centre_hist[0] != pytest.approx(expected, rel=1e-3)  # the centre loss reads other outputs
    # windows that hold their centre alone: both target choices are the same training, step for step
    alone = np.where(np.arange(25)[None] == 0, nb, -1)
    mw, hw = tune("window", (alone, rel), lr=1e-3, encoder_lr=1e-3)
    mc, hc = tune("centre", (alone, rel), lr=1e-3, encoder_lr=1e-3)
    assert hw == pytest.approx(hc, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(mw.parameters(), mc.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"targets_from must be one of \('centre', 'window'\), got 'all'"):
        tune("all", (nb, rel))
    # context dropout: dropping (almost) every neighbour trains as on windows that hold their centre alone; 0 is the
    # default, step for step
    _, h_alone = tune("centre", (alone, rel), lr=0.0, encoder_lr=0.0)
    _, h_drop = tune("centre", (nb, rel), lr=0.0, encoder_lr=0.0, context_dropout=1 - 1e-9)
    assert h_drop[0] == pytest.approx(h_alone[0], rel=1e-6) and h_drop[0] != centre_hist[0]
    m_def, h_def = tune("centre", (nb, rel), lr=1e-3, encoder_lr=1e-3)
    m_zero, h_zero = tune("centre", (nb, rel), lr=1e-3, encoder_lr=1e-3, context_dropout=0.0)
    assert h_def == h_zero
    _, h_some = tune("centre", (nb, rel), lr=1e-3, encoder_lr=1e-3, context_dropout=0.3)
    assert h_some != h_def  # neighbours were dropped (the fixture's windows move its loss only a little)
    for bad in (1.0, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="context_dropout must be a number in \\[0, 1\\)"):
            tune("centre", (nb, rel), context_dropout=bad)


def test_fit_expression_head_with_window_targets(model):
    a = synthetic_slide()
    kw = {"genes": GENES[:6], "epochs": 1, "augment": False, "seed": 0, "show_progress": False}
    tuned = st.tl.fit_expression_head([a], model, encoder_epochs=2, encoder_targets="window", **kw)
    assert tuned.extra["head"]["encoder_targets"] == "window"
    assert tuned.extra["encoder_tuning"][0]["targets"] == "window" and len(tuned.extra["head"]["encoder_loss"]) == 2
    with pytest.raises(ValueError, match=r"encoder_targets must be one of \('centre', 'window'\), got 'every'"):
        st.tl.fit_expression_head([a], model, encoder_epochs=1, encoder_targets="every", **kw)
    dropped = st.tl.fit_expression_head([a], model, encoder_epochs=1, context_dropout=0.25, **kw)
    assert dropped.extra["head"]["context_dropout"] == 0.25 and tuned.extra["head"]["context_dropout"] == 0.0
    with pytest.raises(ValueError, match=r"context_dropout must be a number in \[0, 1\) \(0 = whole windows\), got 1"):
        st.tl.fit_expression_head([a], model, encoder_epochs=1, context_dropout=1, **kw)


def test_encoder_mix_interpolates_between_the_frozen_and_the_tuned_fit(model):
    import torch

    from storm_st.train._head import interpolate_weights

    a = synthetic_slide()
    kw = {"genes": GENES[:6], "epochs": 1, "augment": False, "seed": 0, "show_progress": False}
    frozen = st.tl.fit_expression_head([a], model, **kw)
    tuned = st.tl.fit_expression_head([a], model, encoder_epochs=2, encoder_lr=1e-3, **kw)
    half = st.tl.fit_expression_head([a], model, encoder_epochs=2, encoder_lr=1e-3, encoder_mix=0.5, **kw)
    back = st.tl.fit_expression_head([a], model, encoder_epochs=2, encoder_lr=1e-3, encoder_mix=0.0, **kw)
    f, t, h, b = (m.state_dict() for m in (frozen, tuned, half, back))
    changed = [k for k in t if t[k].is_floating_point() and not torch.equal(t[k], f[k])]
    assert any(k.startswith("blocks.") for k in changed) and any(k.startswith("head.") for k in changed)
    for k in t:  # the midpoint of the head fitted on the frozen encoder and its tuned continuation; 0 returns to it
        torch.testing.assert_close(h[k], (f[k] + t[k]) / 2 if k in changed else t[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(b[k], f[k], rtol=0, atol=1e-6)
    assert half.extra["head"]["encoder_mix"] == 0.5 and half.extra["encoder_tuning"][0]["mix"] == 0.5
    assert tuned.extra["head"]["encoder_mix"] == 1.0
    with pytest.raises(ValueError, match=r"encoder_mix must be a number in \[0, 1\]"):
        st.tl.fit_expression_head([a], model, encoder_epochs=1, encoder_mix=1.5, **kw)
    with pytest.raises(ValueError, match="encoder_epochs=0 skips that stage"):
        st.tl.fit_expression_head([a], model, encoder_mix=0.5, **kw)
    with pytest.raises(ValueError, match="keys differ"):
        interpolate_weights(tuned, {"x": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]"):
        interpolate_weights(tuned, t, -0.5)


def test_impute_smoothing_blends_neighbours_and_checks_its_weight(model_with_head):
    from storm_st.pp._neighbors import ring_mean_operator

    a = synthetic_slide(seed=5)
    raw = st.tl.impute_expression(a, model_with_head, tta=False, show_progress=False)
    sm = st.tl.impute_expression(a, model_with_head, tta=False, smooth=0.5, show_progress=False)
    expected = 0.5 * raw.X + 0.5 * (ring_mean_operator(a) @ raw.X)
    np.testing.assert_allclose(sm.X, expected, rtol=1e-5, atol=1e-6)
    assert sm.uns["storm_virtual"]["smooth"] == 0.5 and raw.uns["storm_virtual"]["smooth"] == 0.0
    assert not np.allclose(sm.X, raw.X)
    for bad in (-0.1, 1.5, "a lot", True):
        with pytest.raises(ValueError, match="smooth must be a number in"):
            st.tl.impute_expression(a, model_with_head, smooth=bad, show_progress=False)
    assert "storm_virtual" not in a.layers and "storm_virtual" not in a.uns


def test_fit_head_on_neighbour_smoothed_targets(model, monkeypatch):
    import storm_st.train._head as head_mod
    from storm_st.pp._neighbors import ring_mean_operator
    from storm_st.tl._expression import TARGET_SMOOTHING, _targets

    a = synthetic_slide(seed=7)
    genes = GENES[:5]
    seen = []
    real = head_mod.fit_head

    def spy(model_, embeddings, targets, masks, **kw):
        seen.append(np.array(targets))
        return real(model_, embeddings, targets, masks, **kw)

    monkeypatch.setattr(head_mod, "fit_head", spy)
    kw = {"genes": genes, "epochs": 1, "augment": False, "show_progress": False}
    own = st.tl.fit_expression_head([a], model, smooth_targets=0, **kw)
    half = st.tl.fit_expression_head([a], model, smooth_targets=0.5, **kw)
    default = st.tl.fit_expression_head([a], model, **kw)  # a Visium slide: the platform default
    y, _ = _targets(a, genes, None)
    ring = ring_mean_operator(a) @ y
    np.testing.assert_allclose(seen[0], y, rtol=1e-6)
    np.testing.assert_allclose(seen[1], 0.5 * y + 0.5 * ring, rtol=1e-5, atol=1e-6)
    w = TARGET_SMOOTHING
    np.testing.assert_allclose(seen[2], (1 - w) * y + w * ring, rtol=1e-5, atol=1e-6)
    assert not np.allclose(seen[0], seen[2])
    assert own.extra["head"]["smooth_targets"] == 0.0 and half.extra["head"]["smooth_targets"] == 0.5
    assert default.extra["head"]["smooth_targets_per_slide"] == [w]
    # cell-level slides keep their own expression by default: a cell's neighbours are other cells
    cells = a.copy()
    cells.uns["spatial"]["s1"]["metadata"]["platform"] = "xenium"
    st.tl.fit_expression_head([cells], model, **kw)
    np.testing.assert_allclose(seen[3], y, rtol=1e-6)
    for bad in (-0.5, 2, "yes", False):
        with pytest.raises(ValueError, match="smooth_targets must be a number in"):
            st.tl.fit_expression_head([a], model, smooth_targets=bad, **kw)


def test_embed_records_and_warns_about_vocabulary_coverage(model):
    import warnings

    a = synthetic_slide()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        st.tl.embed(a, model, modalities="st", show_progress=False)
    assert a.uns["storm"]["vocab_coverage"] == 1.0
    few = a[:, : max(1, len(GENES) // 10)].copy()  # another panel: a tenth of the vocabulary measured
    with pytest.warns(UserWarning, match=rf"Only {few.n_vars} of the model's {len(GENES)} vocabulary genes"):
        st.tl.embed(few, model, modalities="st", show_progress=False)
    assert few.uns["storm"]["vocab_coverage"] == round(few.n_vars / len(GENES), 4)
    st.tl.embed(a, model, modalities="he", show_progress=False)  # expression unused: nothing to record
    assert "vocab_coverage" not in a.uns["storm"]
