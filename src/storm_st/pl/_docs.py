"""Docstring fragments shared by the plotting functions (filled in by :func:`fill_doc`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_FRAGMENTS = {
    "table_key": """\
table_key
    Table of a SpatialData object.""",
    "ax": """\
ax
    Axes to draw into; default: a new figure.""",
    "show_return_fig": """\
show
    Show the figure; default: when no ``ax`` is given and ``return_fig`` is False.
return_fig
    Return the :class:`~matplotlib.figure.Figure`.""",
    "returns": """\
Returns
-------
The Figure with ``return_fig=True``; the Axes with ``show=False``; else ``None``.""",
}


def fill_doc(func: F) -> F:
    """Replace ``{name}`` lines of ``func``'s docstring by the shared fragment ``name``."""
    doc = inspect.cleandoc(func.__doc__ or "")
    for name, text in _FRAGMENTS.items():
        doc = doc.replace("{" + name + "}", text)
    func.__doc__ = doc
    return func
