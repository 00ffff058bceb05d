"""Datasets: real data embedded in the package, readers of the shared data folder, and a registry of public data."""

from ._embedded import demo, hallmarks
from ._registry import REGISTRY, fetch
from ._shared import dlpfc, her2st

__all__ = ["REGISTRY", "demo", "dlpfc", "fetch", "hallmarks", "her2st"]
