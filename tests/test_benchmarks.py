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
        "--gene-sets", "10", "--stnet-epochs", "1", "--model", "storm-small", "--tasks", "expression",
        "--tag", tag, "--out", str(tmp_path / "bench.md"), "--data", str(shared_data),
    ]
    res_file = ROOT / "benchmarks" / "results" / f"{tag}_expression.json"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-3000:]
        res = json.loads(res_file.read_text())
        assert res["status"] == "ok"
        methods = {r["method"] for r in res["rows"]}
        assert any(m.startswith("STORM + expression head") for m in methods)
        assert "training-slide mean (constant)" in methods
        mean_row = next(r for r in res["rows"] if r["method"] == "training-slide mean (constant)")
        assert mean_row["pcc_median"] != mean_row["pcc_median"]  # NaN, reported honestly
        assert (tmp_path / "bench.md").read_text().count("### H&E → expression") >= 1
    finally:
        res_file.unlink(missing_ok=True)
        for f in (ROOT / "docs" / "_static" / "benchmarks").glob(f"{tag}_*"):
            f.unlink()
