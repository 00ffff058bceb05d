"""Analysis verbs: embeddings, spatial domains, virtual expression, enrichment."""

from ._domains import domains
from ._embed import embed
from ._expression import fit_expression_head, impute_expression
from ._metrics import domain_metrics

__all__ = ["domain_metrics", "domains", "embed", "fit_expression_head", "impute_expression"]
