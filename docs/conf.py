"""Sphinx configuration for puka's documentation.

Build (offline, warnings are errors, as tests/test_docs.py does)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Needs only Sphinx (the ``docs`` extra).  The package is imported from this
checkout, not from site-packages; OpenTelemetry is not needed to build.
"""

from __future__ import annotations

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, ROOT)  # document this checkout's puka
sys.path.insert(0, os.path.join(DOCS, "_ext"))

import puka  # noqa: E402

project = "puka"
author = "puka contributors"
copyright = "puka contributors"  # noqa: A001
version = release = puka.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    # Loaded for :external: references, but with no inventories: the build must work
    # offline, so nothing is ever fetched (add an intersphinx_mapping for an online build).
    "sphinx.ext.intersphinx",
    "pukadocs",  # docs/_ext/pukadocs.py: tables generated from puka.spec at build time
]
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []
default_role = "literal"
highlight_language = "python3"
pygments_style = "sphinx"

# autodoc: the reference is built from the docstrings, in source order.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}
# puka.tracing.otel imports OpenTelemetry: without the otel extra, document it from mocks,
# so that building these pages needs nothing but Sphinx.
try:
    import opentelemetry.trace  # noqa: F401
except ImportError:
    autodoc_mock_imports = ["opentelemetry"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_theme_options = {
    "description": "A promise-based RabbitMQ client",
    "fixed_sidebar": True,
    "show_relbars": True,
}
html_title = "puka %s" % release
html_static_path: list[str] = []
html_show_sourcelink = False
