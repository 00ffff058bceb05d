"""Shared helpers of the storm_st benchmark harness: slides, machine description, metrics, HEST ridge."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from storm_st._utils import gene_pcc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STATIC = ROOT / "docs" / "_static" / "benchmarks"

#: HEST-Benchmark linear-probe protocol (mahmoodlab/HEST, src/hest/bench/benchmark.py + trainer.py):
#: StandardScaler -> PCA(256, random_state=seed) -> Ridge(solver="lsqr", alpha=100 / (n_features * n_targets),
#: fit_intercept=False, max_iter=1000).
HEST_PCA_DIM = 256


# ----------------------------------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------------------------------
def machine() -> dict:
    """Machine description recorded next to every absolute number."""
    import psutil

    try:
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
            platform.processor(),
        )
    except OSError:
        cpu = platform.processor()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    import torch

    return {
        "uname": " ".join(platform.uname()),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
    }


def versions(extra: tuple[str, ...] = ()) -> dict:
    """Versions of the packages the numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("storm-st", "torch", "timm", "numpy", "scikit-learn", "scanpy", "anndata", "squidpy", *extra):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    try:
        out["storm_st_git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        code = ["src", "configs", *(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("*.py"))]
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *code], cwd=ROOT, timeout=10).returncode
        if dirty:  # the code that ran is not exactly the commit named
            out["storm_st_git"] += "+uncommitted"
    except Exception:  # noqa: BLE001
        out["storm_st_git"] = None
    return out


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


class Timer:
    """Accumulating named timers; ``sync`` (e.g. ``torch.cuda.synchronize``) runs at both ends of a block."""

    def __init__(self, sync=None):
        self.t = {}
        self.sync = sync or (lambda: None)

    def __call__(self, key):
        timer = self

        class _T:
            def __enter__(self):
                timer.sync()
                self.s = time.perf_counter()

            def __exit__(self, *a):
                timer.sync()
                timer.t[key] = timer.t.get(key, 0.0) + time.perf_counter() - self.s

        return _T()


# ----------------------------------------------------------------------------------------------------------------------
# slides
# ----------------------------------------------------------------------------------------------------------------------
def read_slide(spec: str):
    """A slide by name or path.

    ``C2`` (a HER2ST section of the shared data folder), ``dlpfc:151673`` (a DLPFC sample) or a path to an
    ``.h5ad`` file, a ``.zarr`` SpatialData store or a Space Ranger folder (read with
    :func:`storm_st.train._runner.read_slide_spec`).
    """
    import storm_st as st
    from storm_st.train._runner import read_slide_spec

    s = str(spec)
    if s.lower().startswith("dlpfc:"):
        return st.datasets.dlpfc(s.split(":", 1)[1])
    p = Path(s)
    if p.suffix in (".h5ad", ".zarr") or p.is_dir() or os.sep in s:
        a = read_slide_spec({"path": str(p.resolve())})
    else:
        a = st.datasets.her2st(s)
    if "library_id" not in a.obs:
        a.obs["library_id"] = p.stem if p.suffix else s
    return a


def x_split(adata, frac: float = 0.8):
    """Spatially contiguous split of one slide: spots left of the ``frac`` x-quantile train, the rest test."""
    x = np.asarray(adata.obsm["spatial"])[:, 0]
    thr = np.quantile(x, frac)
    tr = x <= thr
    return adata[tr].copy(), adata[~tr].copy()


def load_split(train: list[str], test: list[str]):
    """Training and test slides; with one training slide and no test slide, an x-coordinate 80/20 split."""
    tr = [read_slide(s) for s in train]
    if test:
        te = [read_slide(s) for s in test]
        names_tr, names_te = list(train), list(test)
    else:
        if len(tr) != 1:
            raise ValueError("Without --test give exactly one --train slide (it is split 80/20 along x).")
        a, b = x_split(tr[0])
        tr, te = [a], [b]
        names_tr, names_te = [f"{train[0]}[x<=q80]"], [f"{train[0]}[x>q80]"]
    return tr, te, names_tr, names_te


# ----------------------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------------------
def expression_scores(y: np.ndarray, p: np.ndarray, measured: np.ndarray) -> dict:
    """Scores of a prediction ``p`` of log1p(CP10k) ``y`` over the genes ``measured`` on the slide."""
    y = y[:, measured]
    p = p[:, measured]
    const_truth = y.std(0) <= 1e-12
    const_pred = p.std(0) <= 1e-12
    r = gene_pcc(y, p)
    ok = ~const_truth & ~const_pred
    rv = r[ok]
    sse = ((y - p) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1 - sse / sst
    r2 = r2[~const_truth]
    return {
        "n_spots": int(y.shape[0]),
        "n_genes": int(measured.sum()),
        "n_not_measured": int((~measured).sum()),
        "n_const_truth": int(const_truth.sum()),
        "n_const_pred": int((const_pred & ~const_truth).sum()),
        "pcc_median": float(np.median(rv)) if len(rv) else float("nan"),
        "pcc_mean": float(np.mean(rv)) if len(rv) else float("nan"),
        "pcc_n": int(len(rv)),
        "mse": float(np.mean((y - p) ** 2)),
        "r2_median": float(np.median(r2)) if len(r2) else float("nan"),
        "pcc_per_gene": [None if not np.isfinite(v) else round(float(v), 5) for v in r],
    }


def hest_ridge(Xtr: np.ndarray, Ytr: np.ndarray, Xte: np.ndarray, seed: int = 0) -> tuple[np.ndarray, dict]:
    """HEST-Benchmark ridge probe; returns test predictions in the target space and the settings used.

    HEST fits without intercept on centred PCA features, which equals fitting the same ridge with an
    intercept and dropping it; PCC is unchanged by the intercept, so we add it back (the training mean of
    each gene) to make MSE comparable with the other methods.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    n_comp = int(min(HEST_PCA_DIM, Xtr.shape[0] - 1, Xtr.shape[1]))
    pipe = Pipeline([("scaler", StandardScaler()), ("pca", PCA(n_components=n_comp, random_state=seed))])
    Ztr = pipe.fit_transform(Xtr.astype(np.float64))
    Zte = pipe.transform(Xte.astype(np.float64))
    alpha = 100.0 / (Ztr.shape[1] * Ytr.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, fit_intercept=False, max_iter=1000, random_state=seed)
    reg.fit(Ztr, Ytr)
    pred = reg.predict(Zte) + Ytr.mean(0, keepdims=True)
    return pred.astype(np.float32), {"pca_dim": n_comp, "alpha": alpha, "solver": "lsqr", "fit_intercept": False}


def save_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def _default(o):
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return None if not np.isfinite(o) else float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    path.write_text(json.dumps(obj, indent=1, default=_default, allow_nan=True))
