"""Analysis verbs: embeddings, spatial domains, virtual expression, enrichment."""

from ._crossval import cross_validate_expression
from ._domains import domains
from ._embed import embed
from ._enrichment import hallmark_enrichment, load_gene_sets, rank_domain_genes
from ._expression import expression_pcc, fit_expression_head, impute_expression
from ._metrics import domain_metrics

__all__ = [
    "cross_validate_expression",
    "domain_metrics",
    "domains",
    "embed",
    "expression_pcc",
    "fit_expression_head",
    "hallmark_enrichment",
    "impute_expression",
    "load_gene_sets",
    "rank_domain_genes",
]
