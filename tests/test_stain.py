"""Stain normalisation (Macenko): estimation, normalisation, and the model path that applies it."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import tiny_config, tiny_model

import storm_st as st
from storm_st.data import prepare_slides
from storm_st.io import slide_views
from storm_st.models import from_pretrained, save_pretrained
from storm_st.pp import StainParams, estimate_stains, normalize_stains
from storm_st.pp._patches import extract_patches

H = np.array([0.65, 0.70, 0.29])
E = np.array([0.07, 0.99, 0.11])


def _compose(conc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8-bit RGB pixels from stain concentrations ``(n, 2)`` and unit stain vectors ``(3, 2)``."""
    od = conc @ m.T
    return np.clip(np.rint(np.exp(-od) * 256.0 - 1.0), 0, 255).astype(np.uint8)


def _synthetic_he(n: int = 20000, h_gain: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = np.stack([H / np.linalg.norm(H), E / np.linalg.norm(E)], axis=1)
    conc = np.stack([rng.gamma(2.0, 0.35, n), rng.gamma(2.0, 0.25, n)], axis=1)
    conc[: n // 10] *= 0.05  # some near-white background
    conc[:, 0] *= h_gain
    return _compose(conc, m), m  # (n, 3) pixels


def test_estimate_recovers_stain_vectors_in_order():
    x, m = _synthetic_he()
    p = estimate_stains(x)
    cos = (p.stain_matrix * m).sum(axis=0)  # unit columns
    assert (cos > 0.98).all(), cos  # haematoxylin first, eosin second
    assert p.max_concentration[0] > p.max_concentration[1] > 0
    assert p.n_pixels > 1000


def test_normalize_is_identity_to_itself_and_undoes_a_stronger_haematoxylin():
    x, _ = _synthetic_he()
    p = estimate_stains(x)
    np.testing.assert_array_equal(normalize_stains(x, p, p), x)
    dark, _ = _synthetic_he(h_gain=1.5)  # same tissue, haematoxylin 1.5x stronger
    q = estimate_stains(dark)
    assert q.max_concentration[0] > 1.3 * p.max_concentration[0]
    back = normalize_stains(dark, q, p)
    before = np.abs(dark.astype(int) - x).mean()
    after = np.abs(back.astype(int) - x).mean()
    assert back.shape == dark.shape and back.dtype == np.uint8
    assert after < 0.35 * before, (before, after)


def test_bad_pixels_and_references_raise_clear_errors():
    with pytest.raises(ValueError, match="uint8 RGB"):
        estimate_stains(np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="stained pixels"):
        estimate_stains(np.full((4, 8, 8, 3), 250, dtype=np.uint8))  # background only
    with pytest.raises(ValueError, match="stain_matrix"):
        StainParams.from_dict({"max_concentration": [1.0, 1.0]})
    with pytest.raises(ValueError, match="positive max_concentration"):
        StainParams.from_dict({"stain_matrix": [[1, 0], [0, 1], [0, 0]], "max_concentration": [1.0, 0.0]})
    with pytest.raises(ValueError, match="stain_matrix"):
        tiny_config(stain_reference={"stain_matrix": [[1, 0]], "max_concentration": [1.0, 1.0]})


def test_load_model_switches_normalisation_to_the_training_stains():
    m = st.load_model(stain_normalize=True)  # the default checkpoint records the stains of HER2ST C2-C4
    assert m.config.stain_reference == StainParams.from_dict(m.extra["training_stains"]).to_dict()
    assert st.load_model().config.stain_reference == m.config.stain_reference  # on by default (design experiment 17)
    assert st.load_model(stain_normalize=False).config.stain_reference is None
    bare = tiny_model()
    with pytest.raises(ValueError, match="records no stains"):
        st.models.set_stain_normalization(bare, True)


def test_stain_reference_rides_in_the_checkpoint(tmp_path):
    x, _ = _synthetic_he()
    ref = estimate_stains(x).to_dict()
    m = tiny_model(stain_reference=ref)
    m2 = from_pretrained(save_pretrained(m, tmp_path / "ck"))
    assert m2.config.stain_reference == m.config.stain_reference
    np.testing.assert_allclose(m2.config.stain_reference["stain_matrix"], ref["stain_matrix"])


def test_model_with_a_reference_normalises_every_patch_it_reads():
    a = st.datasets.demo()
    lib = next(iter(a.uns["spatial"]))
    img_before = a.uns["spatial"][lib]["images"]["hires"].copy()
    own = st.pp.stain_reference(a)
    assert set(own) == {"stain_matrix", "max_concentration", "n_pixels"}
    other = estimate_stains(_synthetic_he()[0]).to_dict()  # another lab's stains
    plain = prepare_slides(a, tiny_config(), use_he=True, use_gene=False)[0]
    assert plain.stains is None
    rows = np.arange(8)
    raw = plain.read_patches(rows, 32)
    # a slide normalised to its own stains (the same sample of spots) comes back unchanged
    np.testing.assert_array_equal(
        prepare_slides(a, tiny_config(stain_reference=own), use_he=True, use_gene=False)[0].read_patches(rows, 32), raw
    )
    normed = prepare_slides(a, tiny_config(stain_reference=other), use_he=True, use_gene=False)[0]
    out = normed.read_patches(rows, 32)
    np.testing.assert_array_equal(out, normalize_stains(raw, *normed.stains))
    assert np.abs(out.astype(int) - raw).mean() > 5.0
    # cached patches (training) are normalised once, the same way; the user's image is untouched
    cached = prepare_slides(a, tiny_config(stain_reference=other), use_he=True, use_gene=False, cache_patches=32)[0]
    np.testing.assert_array_equal(cached.read_patches(rows, 32), out)
    np.testing.assert_array_equal(a.uns["spatial"][lib]["images"]["hires"], img_before)
    # and the embedding reads them: same weights, different stains, different embedding
    m_plain, m_norm = tiny_model(), tiny_model(stain_reference=other)
    b1 = st.tl.embed(a, m_plain, modalities="he", copy=True, show_progress=False)
    b2 = st.tl.embed(a, m_norm, modalities="he", copy=True, show_progress=False)
    e1, e2 = b1.obsm["X_storm"], b2.obsm["X_storm"]
    assert e1.shape == e2.shape and not np.allclose(e1, e2)
    assert b2.uns["storm"]["stain_normalized"] and not b1.uns["storm"]["stain_normalized"]


def test_real_patches_with_a_stronger_haematoxylin_come_back():
    a = st.datasets.demo()
    x = extract_patches(slide_views(a)[0], np.arange(60), size=48)
    p = estimate_stains(x)
    od = -np.log((x.reshape(-1, 3).astype(np.float64) + 1) / 256)
    conc = od @ np.linalg.pinv(p.stain_matrix).T
    resid = od - conc @ p.stain_matrix.T
    dark_od = (conc * [1.5, 1.0]) @ p.stain_matrix.T + resid
    dark = np.clip(np.rint(np.exp(-dark_od) * 256 - 1), 0, 255).astype(np.uint8).reshape(x.shape)
    back = normalize_stains(dark, estimate_stains(dark), p)
    assert np.abs(back.astype(int) - x).mean() < 0.35 * np.abs(dark.astype(int) - x).mean()


def test_a_slide_without_stain_says_how_to_switch_normalisation_off():
    a = st.datasets.demo()
    lib = next(iter(a.uns["spatial"]))
    img = a.uns["spatial"][lib]["images"]["hires"]
    a.uns["spatial"][lib]["images"]["hires"] = np.full_like(img, 245)  # background only, e.g. a failed scan
    before = set(a.obsm), set(a.uns)
    m = tiny_model(stain_reference=estimate_stains(_synthetic_he()[0]).to_dict())
    with pytest.raises(ValueError, match=r"cannot normalise its stains.*stain_normalize=False"):
        st.tl.embed(a, m, modalities="he", show_progress=False)
    assert (set(a.obsm), set(a.uns)) == before  # nothing written
    st.tl.embed(a, tiny_model(), modalities="he", show_progress=False)  # without normalisation it runs
    assert a.obsm["X_storm"].shape[0] == a.n_obs


def test_stain_jitter_scales_haematoxylin_and_eosin_and_keeps_the_rest():
    import torch
    from skimage.color import hed_from_rgb

    from storm_st.train._augment import augment, colour_jitter, dihedral, random_resized_crop, stain_jitter

    x, _ = _synthetic_he(n=16 * 16 * 4)
    img = torch.from_numpy(x.reshape(4, 16, 16, 3)).permute(0, 3, 1, 2).float()
    assert torch.allclose(stain_jitter(img, 0.0), img, atol=1e-3)  # strength 0: the identity

    torch.manual_seed(0)
    out = stain_jitter(img, 0.3)

    def hed(t):  # per-pixel stain densities, as skimage unmixes them
        od = -torch.log((t.double() + 1.0) / 256.0).permute(0, 2, 3, 1).reshape(len(t), -1, 3)
        return od @ torch.as_tensor(hed_from_rgb)

    before, after = hed(img), hed(out)
    stained = (before[..., :2] > 0.2).all(-1) & (out.permute(0, 2, 3, 1).reshape(4, -1, 3) > 1).all(-1)  # no clipping
    factors = []
    for i in range(4):
        ratio = after[i, stained[i], :2] / before[i, stained[i], :2]
        assert ratio.std(0).max() < 1e-3, ratio.std(0)  # one factor per image and stain
        factors.append(ratio.mean(0))
        assert torch.allclose(after[i, stained[i], 2], before[i, stained[i], 2], atol=1e-4)  # residual kept
    factors = torch.stack(factors)
    assert ((factors >= 0.7 - 1e-3) & (factors <= 1.3 + 1e-3)).all()
    assert factors.std(0).min() > 0.01  # images differ

    # stain = 0 draws no random numbers: the pipeline is the one every earlier run used
    u8 = torch.from_numpy(x.reshape(4, 16, 16, 3)).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(1)
    a = augment(u8, 12, crop_scale=(0.6, 1.0), jitter=0.1, stain=0.0)
    torch.manual_seed(1)
    b = colour_jitter(dihedral(random_resized_crop(u8, 12, (0.6, 1.0))), 0.1)
    assert torch.equal(a, b)
    torch.manual_seed(1)
    assert not torch.equal(augment(u8, 12, crop_scale=(0.6, 1.0), jitter=0.1, stain=0.2), a)
