"""Resolve bare cross-references inside storm_st docstrings.

Docstrings in ``src/storm_st`` often write ``:func:`save_pretrained``` or ``:meth:`to_dict``` relative to the
private module that defines them. Rendered from the public namespace (``storm_st.models``, ``storm_st``, or
an autosummary table), Python's domain looks in the wrong module. When the standard lookup fails, this
handler resolves the reference to the documented ``storm_st`` object whose full name ends with
``.<target>``: the only one, the one in the module the reference was written from, or, for re-exports of
one object under two names (``storm_st.load_model`` / ``storm_st.models.load_model``), the deepest name.
"""

from __future__ import annotations

import importlib

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.nodes import make_refnode


def _python_object(name: str) -> object | None:
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _pick(matches: list[tuple[str, object]], module: str) -> tuple[str, object] | None:
    if len(matches) == 1:
        return matches[0]
    local = [m for m in matches if module and m[0].startswith(module + ".")]
    if len(local) == 1:
        return local[0]
    objects = {id(_python_object(name)) for name, _ in matches}
    if len(objects) == 1 and None not in {_python_object(name) for name, _ in matches}:
        return max(matches, key=lambda m: m[0].count("."))
    return None


def _resolve(app: Sphinx, env: BuildEnvironment, node: nodes.Element, contnode: nodes.Element) -> nodes.Element | None:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    if not target or target.startswith("storm_st."):
        return None
    domain = env.get_domain("py")
    matches = sorted(
        (name, obj)
        for name, obj in domain.objects.items()
        if name.startswith("storm_st.") and name.endswith("." + target) and not obj.aliased
    )
    picked = _pick(matches, node.get("py:module") or "")
    if picked is None:
        return None
    name, obj = picked
    return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, name)


def setup(app: Sphinx) -> dict[str, bool]:
    """Connect the fallback resolver."""
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
