"""Sphinx configuration: Markdown pages (MyST) plus an API reference from the docstrings.

Build with ``nox -s docs`` or ``sphinx-build -W --keep-going -b html docs build/docs``.
"""

from __future__ import annotations

import freezeflow

project = "freezeflow"
author = "freezeflow developers"
copyright = "freezeflow developers"
release = freezeflow.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "img/*.txt"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# The docstrings are Google style with reStructuredText roles (:func:`freeze`); napoleon
# reads the sections, Sphinx resolves the roles into links.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, so dataclass fields are not listed twice
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
add_module_names = False
default_role = "code"

html_theme = "furo"
html_title = f"freezeflow {release}"
html_static_path: list[str] = []
