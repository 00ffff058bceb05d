"""Sphinx configuration of the storm_st documentation.

Build (offline, warnings are errors)::

    python -m sphinx -b html -W --keep-going docs docs/_build/html
"""

from __future__ import annotations

import sys
import warnings
from datetime import datetime
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

HERE = Path(__file__).parent
# sphinx-autodoc-typehints 3.6 calls an API deprecated in Sphinx 9 (a Python warning, not a Sphinx one)
warnings.filterwarnings("ignore", message=".*_RstSnippetParser.set_application.*")
sys.path.insert(0, str(HERE.parent / "src"))  # so a source checkout builds without installing
sys.path.insert(0, str(HERE / "extensions"))

# -- Project information -----------------------------------------------------
try:
    info = metadata("storm-st")
    release = info["Version"]
except PackageNotFoundError:  # pragma: no cover - not installed
    release = "0.0.0"
project = "storm_st"
author = "storm_st developers"
copyright = f"{datetime.now():%Y}, {author}"
version = release

# -- General configuration ---------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",  # after napoleon
    "sphinx.ext.mathjax",
    "sphinx_copybutton",
    "typed_returns",  # docs/extensions: prose Returns sections
    "storm_refs",  # docs/extensions: bare :func:`name` references in docstrings
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "generated/*.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
default_role = "literal"
pygments_style = "default"

# autodoc / autosummary: stubs are generated into docs/generated/ at build time (git-ignored)
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "groupwise"
autodoc_default_options = {"show-inheritance": False}
autoclass_content = "class"
autodoc_inherit_docstrings = False  # Lightning / torch hook docstrings are not ours (and not valid here)

# napoleon: numpy-style docstrings
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]

# sphinx-autodoc-typehints: types live in the signatures
typehints_defaults = "braces"
always_use_bars_union = True
typehints_document_rtype = True

# myst / myst-nb
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist", "html_image", "substitution"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # notebooks are committed with their outputs
nb_merge_streams = True
nb_output_stderr = "remove"  # warnings stay in the committed notebooks, not in the rendered pages

# No intersphinx: the build must work offline (no inventory downloads).

# -- Nitpicky mode -------------------------------------------------------------
# Every cross-reference must resolve. Without intersphinx, types of third-party libraries cannot be
# linked, so they are ignored by name here (and only those).
nitpicky = True
_THIRD_PARTY = (
    "anndata",
    "AnnData",
    "spatialdata",
    "SpatialData",
    "pandas",
    "pd",
    "numpy",
    "np",
    "scipy",
    "torch",
    "nn",
    "matplotlib",
    "mpl",
    "plt",
    "Axes",
    "Figure",
    "lightning",
    "L",
    "pooch",
    "timm",
    "PIL",
    "Path",
    "pathlib",
    "os",
    "collections",
    "typing",
    "Sequence",
    "Mapping",
    "Iterable",
    "Callable",
    "Literal",
    "Any",
    "NDArray",
    "ArrayLike",
    "DataFrame",
    "Series",
    "optional",
    "sklearn",
    "scanpy",
    "sc",
    "squidpy",
    "gseapy",
    "decoupler",
    "tifffile",
    "safetensors",
    "huggingface_hub",
    "zarr",
    "dask",
)
nitpick_ignore_regex = [
    (r"py:(class|obj|data|func|meth|attr|exc|mod)", rf"({'|'.join(_THIRD_PARTY)})(\..*)?"),
]
# Targets in storm_st docstrings that are private or do not exist (reported to the maintainers).
nitpick_ignore = [
    ("py:class", "storm_st._constants.Platform"),  # io.SlideView: private registry class
    ("py:meth", "encode_spots"),  # models.StormModel: the methods are encode_he / encode_gene
    ("py:meth", "encode_windows"),  # models.StormModel: the method is build_tokens + spatial_encode
]

# -- HTML output ---------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "storm_st"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_show_sphinx = False
