"""storm_st: STORM, a multimodal foundation model of H&E histology and spatial transcriptomics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("storm-st")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from . import datasets, io, pl, pp, tl
from .models import load_model

__all__ = ["datasets", "io", "load_model", "pl", "pp", "tl", "__version__"]
