"""Smoke test of the benchmark harness (benchmarks/run.py) on a tiny setting; slow (minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gene_pcc_and_scores():
    from _common import expression_scores, gene_pcc

    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 4))
    y[:, 3] = 1.0  # constant in the test slide -> NaN, excluded and counted
    p = y + rng.normal(scale=0.1, size=y.shape)
    r = gene_pcc(y, p)
    assert np.all(r[:3] > 0.9) and np.isnan(r[3])
    sc = expression_scores(y, p, np.array([True, True, True, True]))
    assert sc["n_const_truth"] == 1 and sc["pcc_n"] == 3
    const = np.repeat(y.mean(0, keepdims=True), len(y), axis=0)
    sc = expression_scores(y, const, np.ones(4, bool))
    assert np.isnan(sc["pcc_median"]) and sc["n_const_pred"] == 3 and np.isfinite(sc["mse"])


def test_speed_peers_reads_the_slide_the_worker_writes(tmp_path, monkeypatch):
    """The peers' input is the tiled slide that ``_speed_worker.py peer_input`` writes beside its JSON result."""
    import argparse

    import speed
    import speed_peers

    monkeypatch.setattr(speed, "RESULTS", tmp_path)

    def worker(args, out, timeout):  # the worker's contract: argv = [python, worker, op, n, model, OUT, ...]
        op, json_out = args[2], Path(args[5])
        assert json_out == out
        json_out.parent.mkdir(parents=True, exist_ok=True)
        if op == "peer_input":
            json_out.with_suffix(".h5ad").write_text("slide")
        json_out.write_text(json.dumps({"op": op, "n_spots": int(args[3])}))
        return {"status": "ok", "wall_s": 1.0, "peak_rss_mb": 1.0}

    seen = []

    def peer(name, n, inp, python, seed):
        seen.append((name, inp.exists()))
        return {"method": name, "n_spots": n, "status": "ok"}

    monkeypatch.setattr(speed, "measured_run", worker)
    monkeypatch.setattr(speed_peers, "_measure_peer", peer)
    args = argparse.Namespace(peer_python="python", sizes=[10], peers=["BANKSY"], model="default", speed_base="C6", seed=0)
    rows = speed_peers.run(args, "full")["rows"]
    assert seen == [("BANKSY", True)] and [r["status"] for r in rows] == ["ok", "ok"]
    assert not list(tmp_path.glob("_tmp/*.h5ad"))  # the input is removed once the peers have read it


def test_hest_ridge_shapes():
    from _common import hest_ridge

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 30)), rng.normal(size=(40, 5))
    P, info = hest_ridge(X, Y, rng.normal(size=(7, 30)))
    assert P.shape == (7, 5)
    assert info["pca_dim"] == 30 and info["alpha"] == pytest.approx(100 / (30 * 5))


@pytest.mark.slow
def test_quick_expression_tiny(tmp_path, shared_data):
    """Quick-suite expression task on one HER2ST slide split 80/20 along x, random small model, 10 genes."""
    if not (shared_data / "her2st" / "images" / "C2.jpg").exists():
        pytest.skip("HER2ST C2 image not in the shared data folder")
    tag = "pytest_smoke"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "run.py"), "--suite", "quick", "--train", "C2", "--test",
        "--gene-sets", "10", "--stnet-epochs", "1", "--encoder-epochs", "1", "--model", "storm-small", "--tasks", "expression",
        "--tag", tag, "--out", str(tmp_path / "bench.md"), "--data", str(shared_data),
    ]
    res_file = ROOT / "benchmarks" / "results" / f"{tag}_expression.json"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-3000:]
        res = json.loads(res_file.read_text())
        assert res["status"] == "ok"
        methods = {r["method"] for r in res["rows"]}
        assert "STORM + expression head" in methods and "STORM + expression head (reads centre+spot)" in methods
        assert "STORM spot tokens (no spatial encoder) + expression head" in methods
        assert "STORM + expression head (encoder tuned, 1 epochs)" in methods
        assert "training-slide mean (constant)" in methods
        # the same neighbour smoothing for the spot-token head and the CNN (storm-small has no shipped head)
        assert {"STORM spot tokens (no spatial encoder) + expression head + smooth 0.5",
                "ST-Net-like CNN (from scratch) + smooth 0.5"} <= methods
        mean_row = next(r for r in res["rows"] if r["method"] == "training-slide mean (constant)")
        assert mean_row["pcc_median"] != mean_row["pcc_median"]  # NaN, reported honestly
        assert (tmp_path / "bench.md").read_text().count("### H&E → expression") >= 1
    finally:
        res_file.unlink(missing_ok=True)
        for f in (ROOT / "docs" / "_static" / "benchmarks").glob(f"{tag}_*"):
            f.unlink()


def test_spot_token_head_bypasses_spatial_encoder():
    """Ablation (b): the head on each spot's own H&E token must not depend on the spatial encoder."""
    import torch
    from _helpers import GENES, synthetic_slide, tiny_model
    from expression import _spot_token_head, _spot_tokens

    from storm_st._inference import D4

    train, test = synthetic_slide(seed=0, library_id="a"), synthetic_slide(seed=1, library_id="b")
    model = tiny_model()

    def run():
        return _spot_token_head(model, [train], _spot_tokens(model, [train], D4), _spot_tokens(model, [test], D4), GENES[:5], 0)

    p1, info = run()
    assert p1[0].shape == (test.n_obs, 5) and (p1[0] >= 0).all() and len(info["loss"]) == 10
    with torch.no_grad():  # scramble the spatial encoder: the ablation's predictions stay the same
        for p in model.blocks.parameters():
            p.add_(torch.randn_like(p))
    p2, _ = run()
    np.testing.assert_allclose(p1[0], p2[0], rtol=1e-5, atol=1e-6)
    assert model.head is None or model.config.head_genes != GENES[:5]  # the caller's model is not modified


def test_protocol_gene_rules_and_targets():
    import anndata as ad
    import scipy.sparse as sp
    from protocol import RULES, select_genes, targets

    rng = np.random.default_rng(0)
    slides = []
    for _ in range(2):
        X = rng.poisson(5.0, size=(60, 30)).astype(np.float32)
        X[:, 0] = rng.poisson(rng.choice([1.0, 200.0], size=60))  # the most variable gene after log1p(CP10k)
        X[:, 1] = rng.poisson(50.0, size=60)  # the highest mean
        X[:, 2] = 0  # never detected: no rule may pick it except seurat_v3 ranks after filtering
        a = ad.AnnData(sp.csr_matrix(X))
        a.var_names = [f"G{i}" for i in range(30)]
        slides.append(a)
    for rule in RULES:
        g = select_genes(slides, rule, 5)
        assert len(g) == 5 == len(set(g)) and "G2" not in g, rule
    assert select_genes(slides, "variance", 1) == ["G0"]
    assert select_genes(slides, "mean", 1) == ["G1"]
    y_cp, y_ct = targets(slides[:1], ["G1", "ABSENT"], "log1p_cp10k")[0], targets(slides[:1], ["G1", "ABSENT"], "log1p_counts")[0]
    X0 = slides[0].X.toarray()
    assert np.allclose(y_ct[:, 0], np.log1p(X0[:, 1])) and (y_ct[:, 1] == 0).all()
    assert np.allclose(y_cp[:, 0], np.log1p(X0[:, 1] / X0.sum(1) * 1e4), rtol=1e-5)

    # heads reach the log1p-count scale through a layer named by the normalisation record; the slides are not touched
    from protocol import with_scale

    from storm_st.tl._expression import _targets

    scaled, layer = with_scale(slides, "log1p_counts")
    assert layer is not None and all(layer not in a.layers and "storm_normalization" not in a.uns for a in slides)
    np.testing.assert_allclose(_targets(scaled[0], ["G1", "ABSENT"], layer)[0], y_ct, rtol=1e-5)
    same, none = with_scale(slides, "log1p_cp10k")
    assert none is None and same[0] is slides[0]
    np.testing.assert_allclose(_targets(same[0], ["G1", "ABSENT"], none)[0], y_cp, rtol=1e-5)


def test_report_renders_protocol_methods():
    import report

    rows = [{"method": m, "rule": rule, "target": t, "slide": sl, "pcc_median": v, "pcc_mean": v}
            for m, v in (("random-init ViT-S/16 + HEST ridge [floor]", 0.1), ("ST-Net-like CNN (from scratch)", 0.4))
            for rule in ("seurat_v3", "mean") for t in ("log1p_cp10k", "log1p_counts") for sl in ("C5", "C6")]
    res = {"command": "python benchmarks/run.py", "date": "d0", "date_end": "d1", "wall_s": 1.0, "status": "ok",
           "machine": {}, "versions": {}, "features": "f", "train": ["C2"], "n_genes": 50, "rows": rows,
           "methods": ["ST-Net-like CNN (from scratch)"], "model": {"name": "default", "sha256": "x"}, "seed": 0, "reference": [0.36, 0.23],
           "reference_cnn": [0.44, 0.42]}
    text = report.section_protocol(res, "quick-methods")
    assert "| seurat_v3 | log1p_cp10k | 0.100 (0.100) | 0.100 (0.100) |" in text  # the floor table, floor rows only
    assert "| gene rule | target scale | random-init ViT-S/16 + HEST ridge [floor] | ST-Net-like CNN (from scratch) |" in text
    assert "| mean | log1p_counts | 0.100 / 0.100 | 0.400 / 0.400 |" in text
    assert "**seurat_v3, log1p_cp10k** (0.100 (0.100); 0.100 (0.100))" in text  # closest to the brief: a floor row
    assert "comes closest to the brief's reference for it (0.44 / 0.42): **seurat_v3, log1p_cp10k** (0.400 / 0.400); " \
        "there: random-init ViT-S/16 + HEST ridge [floor] 0.100 / 0.100." in text
    old = {**res, "rows": [{k: v for k, v in r.items() if k != "method"} for r in rows[:8]]}  # results before the methods
    text = report.section_protocol(old, "quick")
    assert "ST-Net-like CNN" not in text and "| mean | log1p_counts | 0.100 (0.100) | 0.100 (0.100) |" in text


def test_report_renders_speed_scaling_and_peer_speed(tmp_path, monkeypatch):
    """Results files named <tag>_speed_peers.json are routed to their own section; scaling is derived from rows."""
    import report

    tag = "pytest_report"
    env = {"command": "python benchmarks/run.py", "date": "d0", "date_end": "d1", "wall_s": 1.0, "status": "ok",
           "machine": {}, "versions": {}}
    row = {"status": "ok", "tiling": {"tiles": 1}}
    speed = {**env, "task": "speed", "base_slide": "C6", "rows": [
        {**row, "op": "embed", "n_spots": 1000, "seconds": 10.0, "spots_per_s": 100.0, "peak_rss_mb": 2000.0},
        {**row, "op": "embed", "n_spots": 100000, "seconds": 1100.0, "spots_per_s": 90.9, "peak_rss_mb": 2100.0,
         "result_mb": 390.6, "rss_before_op_mb": 2050.0, "self_peak_rss_mb": 2100.0},
        {**row, "op": "breakdown", "n_spots": 1000, "breakdown": {
            "seconds": {"patch reading": 1.0, "H&E backbone": 6.0, "spatial encoder": 3.0}, "total_s": 10.0,
            "naive": {"mean_valid_per_window": 20, "batch_windows": 64, "patches_in_batch": 1280,
                      "batch_s": {"H&E backbone": 9.0}, "extrapolated_total_s": 150.0, "ratio_naive_over_ours": 15.0}}},
    ]}
    peers = {**env, "task": "speed_peers", "base_slide": "C6", "k": 5, "rows": [
        {"method": "STORM (tl.embed + tl.domains)", "n_spots": 1000, "status": "ok", "seconds": 12.0,
         "spots_per_s": 83.3, "peak_rss_mb": 2100.0},
        {"method": "NOVAE", "n_spots": 10000, "status": "timeout after 900 s"},
    ]}
    # the same task on a GPU: GPU peak column and the speed-up over the full suite's CPU rows
    gpu = {**env, "task": "speed", "base_slide": "C6", "device": "cuda", "machine": {"gpu": "Some GPU"}, "rows": [
        {**row, "op": "embed", "n_spots": 1000, "seconds": 1.0, "spots_per_s": 1000.0, "peak_rss_mb": 2200.0,
         "gpu_peak_mb": 344.0},
        {**row, "op": "impute", "n_spots": 1000, "seconds": 1.0, "spots_per_s": 900.0, "peak_rss_mb": 2200.0,
         "gpu_peak_mb": 344.0},
    ]}
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / f"{tag}_speed.json").write_text(json.dumps(speed))
    (res_dir / f"{tag}_speed_peers.json").write_text(json.dumps(peers))
    (res_dir / f"{tag}gpu_speed.json").write_text(json.dumps(gpu))
    (res_dir / "full_speed.json").write_text(json.dumps(speed))
    monkeypatch.setattr(report, "RESULTS", res_dir)
    monkeypatch.setattr(report, "STATIC", tmp_path / "static")  # figures too: never overwrite the docs' own
    report.render(tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    assert (tmp_path / "static" / f"{tag}_speed.png").exists()
    assert f"## Suite: {tag}\n" in md and "## Suite: pytest_report_speed" not in md
    assert f"### Speed of the domain peers ({tag})" in md and "timeout after 900 s" in md
    assert "from 1,000 to 100,000 spots (100x): time x110.0" in md and "2000 → 2100 MB (x1.05)" in md
    assert "i.e. 1.0 KB per added spot; what the call returns or writes" in md and "4.0 KB per spot (391 MB here)" in md
    assert "the call raised the process's peak from 2050 MB (slide built) to 2100 MB" in md
    assert "The largest cost is the **H&E backbone** (60 %" in md
    gpu_md = md.split(f"### Speed and memory ({tag}gpu)")[1]
    assert "Device: **cuda** (Some GPU)" in gpu_md and "| GPU peak (MB) |" in gpu_md and "| 344 |" in gpu_md
    assert "embed 1,000: 100.0 → 1000.0 spots/s (x10)" in gpu_md and "impute 1,000" not in gpu_md  # no CPU row to compare
    assert "| GPU peak (MB) |" not in md.split(f"### Speed and memory ({tag}gpu)")[0]


def test_report_domains_mean_over_her2st_sections(tmp_path, monkeypatch):
    """Domain sections name the checkpoint and average ARI over the labelled HER2ST sections a method ran on."""
    import report

    env = {"command": "python benchmarks/run.py", "date": "d0", "date_end": "d1", "wall_s": 1.0, "status": "ok",
           "machine": {}, "versions": {}, "task": "domains", "model": {"name": "default", "sha256": "abcdef0123456789"}}
    slide = {"n_spots": 10, "n_dropped_unlabelled": 0, "K": 2, "labels_key": "label", "classes": ["a", "b"], "has_image": False}
    metrics = dict.fromkeys(("NMI", "FMI", "HOM", "COM", "CHAOS", "PAS", "ASW"), 0.5)
    rows = [
        {"slide": "dlpfc:151673", "method": "STORM (st)", "status": "ok", "ARI": 0.9, **metrics},
        {"slide": "A1", "method": "STORM (st)", "status": "ok", "ARI": 0.2, **metrics},
        {"slide": "C1", "method": "STORM (st)", "status": "ok", "ARI": 0.4, **metrics},
        {"slide": "A1", "method": "KMeans", "status": "ok", "ARI": 0.1, **metrics},
        {"slide": "C1", "method": "KMeans", "status": "error: boom"},
    ]
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    res = {**env, "slides": {"dlpfc:151673": slide, "A1": slide, "C1": slide}, "rows": rows}
    (res_dir / "t_domains.json").write_text(json.dumps(res))
    monkeypatch.setattr(report, "RESULTS", res_dir)
    monkeypatch.setattr(report, "STATIC", tmp_path / "static")
    report.render(tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    assert "- STORM model: `default` (sha256 abcdef012345…)" in md
    assert "mean over the 2 (methods run on all of them)" in md
    summary = md.split("mean over the 2 (methods run on all of them)")[1].split("\n\n")[1]
    assert "| method | A1 | C1 | mean |" in summary
    assert "| STORM (st) | 0.200 | 0.400 | 0.300 |" in summary  # dlpfc is not a HER2ST section: not in the mean
    assert "KMeans" not in summary  # failed on C1: no mean
    assert "HER2ST A1, C1 are among the default checkpoint's" in md


def test_report_flags_suites_of_an_earlier_checkpoint(tmp_path, monkeypatch):
    """A suite measured on another checkpoint than the shipped one says so and comes after the shipped one's."""
    import report

    def domains(sha, note=None):
        res = {"command": "c", "date": "d0", "date_end": "d1", "wall_s": 1.0, "status": "ok", "machine": {},
               "versions": {}, "task": "domains", "model": {"name": "default", "sha256": sha}, "slides": {}, "rows": []}
        return {**res, "note": note} if note else res

    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "aaa-old_domains.json").write_text(json.dumps(domains("0ld0ld0ld0ld0ld")))
    (res_dir / "exp_domains.json").write_text(json.dumps(domains("0ld0ld0ld0ld0ld", "**Experiment, not shipped.**")))
    (res_dir / "zzz-new_domains.json").write_text(json.dumps(domains("5h1pped5h1pped")))
    monkeypatch.setattr(report, "RESULTS", res_dir)
    monkeypatch.setattr(report, "STATIC", tmp_path / "static")
    monkeypatch.setattr(report, "_shipped_sha", lambda: "5h1pped5h1pped")
    report.render(tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    suites = [line for line in md.splitlines() if line.startswith("## Suite: ")]
    assert suites == ["## Suite: zzz-new", "## Suite: aaa-old", "## Suite: exp"]
    old = md.split("## Suite: aaa-old")[1].split("## Suite: exp")[0]
    assert "**Earlier checkpoint.** Measured on sha256 0ld0ld0ld0ld…, not on the checkpoint this version ships (5h1pped5h1pp…)" in old
    assert "Earlier checkpoint" not in md.split("## Suite: aaa-old")[0]  # the shipped checkpoint's suite: no note
    assert "Earlier checkpoint" not in md.split("## Suite: exp")[1]  # an experiment already says what it is


def test_morans_i_separates_a_spatial_pattern_from_noise():
    """gene_structure.py: Moran's I on the ring graph is high for a smooth gradient, near 0 for shuffled counts."""
    from _helpers import synthetic_slide
    from gene_structure import morans_i

    a = synthetic_slide(12, 12, seed=0)
    x = np.asarray(a.obsm["spatial"])[:, 0]
    rng = np.random.default_rng(0)
    X = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X).astype(np.float32)
    X[:, 0] = np.round(1 + 20 * (x - x.min()) / np.ptp(x))  # counts rising left to right
    X[:, 1] = rng.permutation(X[:, 0])  # the same counts, shuffled over the spots
    a.X = X
    g = [str(v).upper() for v in a.var_names]
    i = morans_i(a, g)
    assert i[g[0]] > 0.8 and abs(i[g[1]]) < 0.2


def test_report_pairs_each_method_with_the_shipped_head(tmp_path, monkeypatch):
    import report

    genes = [f"G{k}" for k in range(50)]
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.5, 50)
    ship = report.SHIPPED

    def row(method, slide, r):
        return {"method": method, "genes": 50, "slide": slide, "n_spots": 10, "n_genes": 50, "n_not_measured": 0,
                "n_const_truth": 0, "n_const_pred": 0, "pcc_median": float(np.median(r)), "pcc_mean": float(np.mean(r)),
                "pcc_n": 50, "mse": 0.2, "r2_median": 0.0, "pcc_per_gene": [float(v) for v in r]}

    better = base + np.where(np.arange(50) < 40, 0.05, -0.01)  # better on 40 of 50 genes
    rows = [row(ship, "C5", base), row("CNN", "C5", better), row("training-slide mean (constant)", "C5", np.full(50, np.nan))]
    res = {"task": "expression", "suite": "t", "command": "python benchmarks/run.py", "date": "d0", "date_end": "d1",
           "wall_s": 1.0, "status": "ok", "machine": {}, "versions": {}, "train": ["C2"], "test": ["C5"],
           "n_train_spots": 10, "n_test_spots": [10], "gene_sets": {"50": genes}, "head_genes": 50, "rows": rows,
           "model": {"name": "default", "sha256": "abc", "he_backbone": "resnet10t", "image_size": 112, "hidden_dim": 256, "vocab": 2000},
           "test_morans_i": {"C5": {g: (0.5 if k < 30 else 0.0) for k, g in enumerate(genes)}},
           "test_morans_i_info": {"command": "python benchmarks/gene_structure.py", "structured_if_at_least": 0.1}}
    note = report._paired_note(res)
    cnn = next(line for line in note.splitlines() if line.startswith("| CNN |")).split(" | ")
    assert cnn[1] == "+0.050" and cnn[2] == "40 / 50" and cnn[3] == "< 0.001"
    assert cnn[4].endswith("(30 / 20 genes) |")
    assert f"{np.median(better[:30]):.3f} / {np.median(better[30:]):.3f}" in cnn[4]
    mean_row = next(line for line in note.splitlines() if line.startswith("| training-slide mean"))
    assert "+" not in mean_row  # no r on any gene: nothing to pair
    assert report._paired_note({**res, "rows": rows[1:]}) == ""  # no shipped head in the results: no table
