"""Spatial structure of each scored gene on the test sections (Moran's I), added to expression results.

    python benchmarks/gene_structure.py                         # quick_expression.json and full_expression.json
    python benchmarks/gene_structure.py --results benchmarks/results/quick_expression.json

A property of the measured test data, not of any model: for every gene of the results' gene sets and every test
slide, Moran's I of log1p(CP10k) (``pp.expression_input``) over the graph of immediate neighbours that
``tl.impute_expression(smooth=)`` uses (``pp._neighbors.ring_mean_operator``: within 1.6 lattice pitches), computed
by squidpy (``sq.gr.spatial_autocorr``, mode ``moran``). Written back into the results file as ``test_morans_i``
(``{slide: {gene: I}}``); ``report.py`` then splits the gene-wise PCC into spatially structured genes (I >= 0.1)
and the rest. Genes with no spatial structure on a section have no pattern to predict from an image, and their
PCC is noise around 0; a median over a gene list that is half such genes falls between the two groups and can move
a lot with small changes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, ROOT, read_slide

#: Moran's I at or above which a gene counts as spatially structured on a test section (report.py)
STRUCTURED_I = 0.1


def morans_i(adata, genes: list[str]) -> dict[str, float]:
    """Moran's I of each of ``genes`` measured on ``adata`` (NaN where a gene is not measured or constant)."""
    import anndata as ad
    import squidpy as sq

    import storm_st as st
    from storm_st.pp._neighbors import ring_mean_operator

    al = st.pp.align_genes(adata, genes)
    y = st.pp.expression_input(adata, al)
    keep = [j for j, g in enumerate(genes) if al.present[j] and np.std(y[:, j]) > 0]
    b = ad.AnnData(np.ascontiguousarray(y[:, keep], dtype=np.float64))
    b.var_names = [genes[j] for j in keep]
    b.obsp["ring_connectivities"] = ring_mean_operator(adata).astype(np.float64)
    sq.gr.spatial_autocorr(b, connectivity_key="ring_connectivities", mode="moran", n_perms=None, n_jobs=1)
    got = b.uns["moranI"]["I"]
    return {g: (round(float(got[g]), 4) if g in got.index else float("nan")) for g in genes}


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def add_to(path: Path) -> None:
    res = json.loads(path.read_text())
    genes = sorted({g for s in (res.get("gene_sets") or {}).values() for g in s})
    if not genes:
        raise ValueError(f"{path} records no gene_sets.")
    t0 = time.time()
    res["test_morans_i"] = {s: morans_i(read_slide(s), genes) for s in res["test"]}
    res["test_morans_i_info"] = {
        "command": f"python benchmarks/gene_structure.py --results {_rel(path)}",
        "graph": "ring_mean_operator (immediate neighbours, 1.6 lattice pitches)", "structured_if_at_least": STRUCTURED_I,
        "seconds": round(time.time() - t0, 1),
    }
    path.write_text(json.dumps(res, indent=1))
    for s, d in res["test_morans_i"].items():
        v = np.array([x for x in d.values() if np.isfinite(x)])
        print(f"{path.name} {s}: {int((v >= STRUCTURED_I).sum())} of {len(v)} genes with Moran's I >= {STRUCTURED_I}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", nargs="+", type=Path,
                    default=[RESULTS / "quick_expression.json", RESULTS / "full_expression.json"])
    for p in ap.parse_args().results:
        add_to(p)


if __name__ == "__main__":
    main()
