"""Leave-one-slide-out estimate of H&E -> expression on a user's own paired slides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storm_st._constants import Keys
from storm_st._utils import get_adata

from ._common import resolve_model
from ._expression import expression_pcc, fit_expression_head, impute_expression

if TYPE_CHECKING:
    from anndata import AnnData

    from storm_st.models import StormModel


def _slide_names(adatas: Sequence[AnnData]) -> list[str]:
    """One name per slide: its library id (``io._slide.library_ids``) when it has one, else its position."""
    from storm_st.io._slide import library_ids

    names = []
    for i, a in enumerate(adatas):
        ids = library_ids(a)
        names.append(ids[0] if len(ids) == 1 and ids != ["slide"] else f"slide_{i}")
    if len(set(names)) < len(names):  # two slides with one library id: positions tell them apart
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def cross_validate_expression(
    adatas: Sequence[AnnData] | Mapping[str, AnnData],
    model: StormModel | str | None = None,
    *,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 50,
    layer: str | None = None,
    tta: bool = True,
    show_progress: bool = True,
    **fit_kwargs: Any,
) -> pd.DataFrame:
    """How well H&E predicts expression on slides like these: leave one slide out, fit on the rest, score it.

    For each slide in turn, :func:`fit_expression_head` is fitted on all the other slides, the held-out slide's
    expression is predicted from its H&E alone with :func:`impute_expression`, and every scored gene's Pearson
    correlation between prediction and measurement is computed with :func:`expression_pcc`. It answers, before
    imputing an H&E-only cohort, what to expect on a slide the head has not seen — the protocol of the package's
    benchmarks and design experiments, on your own data. The slides are not modified.

    Parameters
    ----------
    adatas
        Two or more paired H&E + ST slides (raw counts and an image), as a list or a ``{name: adata}`` mapping;
        SpatialData objects are read through their table.
    model
        Starting model (default: the embedded one); it is not modified.
    genes
        Genes to score on every fold. Default: the ``n_top_genes`` most variable genes of each fold's training slides
        (:func:`storm_st.pp.select_hvgs`), chosen without the held-out slide, as in the benchmarks.
    n_top_genes
        Number of highly variable genes per fold when ``genes`` is not given.
    layer
        Layer of raw counts (default ``layers['counts']`` when present, else ``X``).
    tta
        Average predictions over the 8 flips / rotations of each patch (:func:`impute_expression`).
    show_progress
        Print one line per fold.
    **fit_kwargs
        Passed to :func:`fit_expression_head` (e.g. ``encoder_epochs=10``, ``seed=1``, ``head_input="spot"``).

    Returns
    -------
    One row per held-out slide and gene: columns ``held_out`` (slide name: the mapping's key, else the slide's
    library id or ``slide_<i>``), ``gene``, ``pearson_r`` (``NaN`` where a gene is constant on the held-out slide)
    and ``n_train_spots``. Summarise with e.g. ``df.groupby("held_out")["pearson_r"].median()``.

    Notes
    -----
    The estimate is honest only if the starting model has not seen the slides: a model pretrained or tuned on them
    (as the embedded default was on HER2ST C2-C4, its spatial encoder tuned with a head there) scores them
    optimistically. Fitting with ``encoder_epochs`` on such a model also warns once per fold.

    Examples
    --------
    >>> cv = st.tl.cross_validate_expression([a1, a2, a3], encoder_epochs=10)  # doctest: +SKIP
    >>> cv.groupby("held_out")["pearson_r"].median()  # doctest: +SKIP
    """
    if isinstance(adatas, Mapping):
        names = [str(k) for k in adatas]
        slides = [get_adata(a) for a in adatas.values()]
    elif isinstance(adatas, Sequence) and not isinstance(adatas, str | bytes):
        slides = [get_adata(a) for a in adatas]
        names = _slide_names(slides)
    else:
        raise TypeError(f"adatas must be a list or a {{name: adata}} mapping of slides, not {type(adatas).__name__}.")
    if len(slides) < 2:
        raise ValueError(
            f"Leave-one-slide-out needs at least 2 slides, got {len(slides)}: a head must be fitted on the others. "
            "With one slide, fit on it and score another section with fit_expression_head / expression_pcc."
        )
    if genes is not None:
        genes = [str(g).upper() for g in genes]
        if not genes:
            raise ValueError("genes is empty: give at least one gene to score, or None for each fold's HVGs.")
    elif int(n_top_genes) < 1:
        raise ValueError(f"n_top_genes must be >= 1, got {n_top_genes}.")
    base = resolve_model(model)
    from storm_st.pp import select_hvgs

    rows = []
    for i, held in enumerate(slides):
        train = [s for j, s in enumerate(slides) if j != i]
        fold_genes = list(genes) if genes is not None else select_hvgs(train, n_top_genes, layer=layer)
        fitted = fit_expression_head(train, base, genes=fold_genes, layer=layer, show_progress=False, **fit_kwargs)
        out = impute_expression(held, fitted, genes=fold_genes, tta=tta, show_progress=False, copy=True)
        if Keys.VIRTUAL in out.layers:  # a copy of the slide carrying the prediction as a layer
            r = expression_pcc(out, genes=fold_genes, layer=layer)
        else:  # a new AnnData of the predicted genes
            r = expression_pcc(held, out, genes=fold_genes, layer=layer)
        n_train = int(sum(s.n_obs for s in train))
        rows.append(pd.DataFrame({"held_out": names[i], "gene": r.index.astype(str), "pearson_r": r.to_numpy(float),
                                  "n_train_spots": n_train}))
        if show_progress:
            print(f"held out {names[i]}: median r {np.nanmedian(r.to_numpy(float)):.3f} over {len(r)} genes "
                  f"(head fitted on {n_train} spots of {len(train)} slides)", flush=True)
    df = pd.concat(rows, ignore_index=True)
    df["held_out"] = pd.Categorical(df["held_out"], categories=names)
    return df
