"""Sphinx configuration for puka's documentation.

Build (offline, warnings are errors, as tests/test_docs.py does)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Needs only Sphinx and the furo theme (the ``docs`` extra).  The package is imported from this
checkout, not from site-packages; OpenTelemetry is not needed to build.
"""

from __future__ import annotations

import os
import re
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
# Code colours: furo's own (a light and a dark style, following the reader's system).

# autodoc: the reference is built from the docstrings, in source order.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# A signature longer than this shows one parameter a line (puka.Client has ten).
python_maximum_signature_line_length = 88
autodoc_default_options = {"show-inheritance": True}
# puka.tracing.otel imports OpenTelemetry: without the otel extra, document it from mocks,
# so that building these pages needs nothing but Sphinx.
try:
    import opentelemetry.trace  # noqa: F401
except ImportError:
    autodoc_mock_imports = ["opentelemetry"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# furo (as pip, urllib3 and attrs use): a wide content column, a sidebar that folds away on a
# phone, dark mode that follows the reader's system.
html_theme = "furo"
html_theme_options = {
    "sidebar_hide_name": False,
    "navigation_with_keys": True,
}
html_title = "puka %s" % release
html_short_title = "puka"
html_static_path = ["_static"]
html_css_files = ["puka.css"]
html_show_sourcelink = False
html_copy_source = False

# A test id (tests/test_x.py::test_a_long_name) may break after "/", "::" and "_", so that the
# tables naming tests (reliability.rst) fit the page; <wbr> leaves the copied text unchanged.
_TEST_ID = re.compile(r'(<span class="pre">)(tests/[\w/.-]+\.py::\w+)(</span>)')


def _breakable_test_ids(app, pagename, templatename, context, doctree):  # type: ignore[no-untyped-def]
    body = context.get("body")
    if body and "tests/" in body:
        context["body"] = _TEST_ID.sub(
            lambda m: m.group(1) + re.sub(r"(/|::|_)", r"\1<wbr>", m.group(2)) + m.group(3), body
        )


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("html-page-context", _breakable_test_ids)
