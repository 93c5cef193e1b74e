"""Sphinx configuration of the wandering documentation.

Build (warnings are errors; see docs/README.md):

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
if (ROOT / "src" / "wandering").is_dir():  # document this checkout, not an installed copy
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(DOCS))  # _ext: this site's own small extension

import wandering  # noqa: E402

project = "wandering"
author = "the wandering authors"
copyright = "the wandering authors, BSD-3-Clause"
release = version = wandering.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "_ext",
]
# No intersphinx: the build runs offline (CI machines reach only package registries).

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "README.md",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "**.md5",
    "auto_examples/*.zip",
    "sg_execution_times.rst",
]
templates_path = ["_templates"]

# -- every reference must resolve: a renamed function breaks the build -------------------
nitpicky = True
nitpick_ignore_regex = [
    # Types from other projects (no intersphinx inventories offline) and typing spellings.
    ("py:class", r"(torch|np|numpy|sklearn|collections|typing|weakref|abc)\..*"),
    ("py:class", r"(Tensor|Module|Optimizer|Parameter|Any|Callable|Iterator|optional|np\.ndarray)"),
    ("py:class", r"torch\.(device|dtype)"),
    ("py:obj", r"(torch|np|numpy)\..*"),
    ("py:exc", r"(torch\..*|sklearn\..*|NotFittedError)"),  # scikit-learn's when installed
    # The bump modules' private base, named in signatures for type checkers; the docstrings
    # name the public classes.
    ("py:class", r"wandering\.nn\.modules\._BumpModule"),
]

# -- autodoc / autosummary / napoleon (the code's docstrings are Google style) -------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    # Methods the wandering classes inherit from their own bases, not torch's or sklearn's.
    # Inherited members too (bound, pert_grads come from a private base); _ext skips every
    # member defined outside wandering (torch.nn.Module's, scikit-learn's).
    "inherited-members": True,
}
autodoc_typehints = "signature"
add_function_parentheses = False  # pages write `bump_sum` `(x, c, w, m, ...)` themselves
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = ["Shape"]
napoleon_attr_annotations = True

# -- Markdown pages ------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- gallery: only examples/plot_*.py run (each in seconds); the longer scripts are listed
# on their own page (examples.md) without running.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(^|[/\\])(?!plot_)[^/\\]+\.py$",  # only plot_*.py belong to the gallery
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "show_memory": False,
    "min_reported_time": 0,
    "first_notebook_cell": None,
}

# -- HTML ----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"wandering {version}"
html_static_path: list[str] = []
html_show_sourcelink = False
