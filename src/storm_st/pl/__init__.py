"""storm_st.pl: figures of what :mod:`storm_st.tl` wrote (matplotlib, scanpy conventions)."""

from ._benchmark import domain_metrics, enrichment, pcc
from ._embedding import embedding
from ._spatial import domains, expression

__all__ = ["domain_metrics", "domains", "embedding", "enrichment", "expression", "pcc"]
