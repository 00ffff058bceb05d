"""Small helpers shared by the public verbs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData


def get_adata(data: Any, table_key: str | None = None) -> AnnData:
    """Return the AnnData to work on: ``data`` itself, or ``data.tables[table_key]`` for SpatialData.

    Parameters
    ----------
    data
        An :class:`~anndata.AnnData` or a :class:`~spatialdata.SpatialData` object.
    table_key
        Table of the SpatialData object; may be omitted when it has exactly one table.
    """
    from anndata import AnnData

    if isinstance(data, AnnData):
        if table_key is not None:
            raise ValueError("table_key is only meaningful for a SpatialData object; got an AnnData.")
        return data
    tables = getattr(data, "tables", None)
    if tables is None:
        raise TypeError(f"Expected an AnnData or SpatialData object, got {type(data).__name__}.")
    if table_key is None:
        if len(tables) != 1:
            raise ValueError(
                f"This SpatialData object has {len(tables)} tables ({', '.join(tables) or 'none'}); pass table_key=."
            )
        table_key = next(iter(tables))
    if table_key not in tables:
        raise KeyError(f"table_key {table_key!r} not found; tables are: {', '.join(tables)}.")
    return tables[table_key]


def data_dir() -> Path:
    """Root of the shared real datasets: ``$STORM_ST_DATA`` or ``../shared/data`` next to the project."""
    env = os.environ.get("STORM_ST_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared" / "data"
        if cand.is_dir():
            return cand
        cand = parent.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def check_counts(X: Any, *, integer: bool = True, what: str = "adata.X") -> None:
    """Raise a clear error for NaN, negative (and, if ``integer``, non-integer) expression values."""
    import scipy.sparse as sp

    vals = (X.data if sp.issparse(X) else np.asarray(X)).reshape(-1)
    if vals.size == 0:
        return
    non_finite = negative = non_integer = False
    step = 1 << 22  # checked in blocks: no full-size temporaries on large slides
    for s in range(0, vals.size, step):
        v = vals[s : s + step]
        non_finite = non_finite or not np.isfinite(v).all()
        negative = negative or bool((v < 0).any())
        non_integer = non_integer or (integer and not np.allclose(v, np.round(v)))
    if non_finite:
        raise ValueError(f"{what} contains NaN or infinite values; counts must be finite.")
    if negative:
        raise ValueError(f"{what} contains negative values; raw counts (or normalised non-negative values) are needed.")
    if non_integer:
        raise ValueError(
            f"{what} contains non-integer values where raw counts are expected. Pass raw counts (e.g. adata.layers"
            "['counts']) or tell the function the data are already normalised."
        )


def check_batch_size(batch_size: Any) -> None:
    """Raise a ``ValueError`` unless ``batch_size`` is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")


def resolve_device(device: str | None = None) -> Any:
    """``'cuda'`` when available (or as asked), else ``'cpu'``."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def gene_pcc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Column-wise Pearson r of ``(n, G)`` arrays ``y`` and ``p``; ``NaN`` where either column is constant."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    yc, pc = y - y.mean(0), p - p.mean(0)
    denom = np.sqrt((yc**2).sum(0) * (pc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 1e-12, (yc * pc).sum(0) / denom, np.nan)
