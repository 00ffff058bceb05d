"""Preprocessing: spot patches at physical scale, neighbour windows, gene vocabulary, normalisation."""

from ._genes import (
    ExpressionRows,
    GeneAlignment,
    align_genes,
    expression_input,
    expression_rows,
    gene_symbols,
    log_normalize,
    normalize,
    select_hvgs,
)
from ._neighbors import knn_window, neighbor_windows
from ._novae import novae_embeddings
from ._patches import extract_patches, spot_patches
from ._stain import StainParams, estimate_stains, normalize_stains, stain_reference

__all__ = [
    "ExpressionRows",
    "GeneAlignment",
    "align_genes",
    "expression_input",
    "expression_rows",
    "extract_patches",
    "StainParams",
    "estimate_stains",
    "normalize_stains",
    "stain_reference",
    "gene_symbols",
    "knn_window",
    "log_normalize",
    "neighbor_windows",
    "normalize",
    "novae_embeddings",
    "select_hvgs",
    "spot_patches",
]
