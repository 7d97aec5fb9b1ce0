"""The documentation builds cleanly (warnings are errors) and documents the whole public API.

Sphinx comes with the ``docs`` extra (``pip install -e '.[docs]'``).  Without it these tests
fail rather than skip: an unbuildable documentation is a failure like any other.  The build
needs no network and no broker.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys

import pytest

import puka
import puka.asyncio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def require_sphinx() -> None:
    if importlib.util.find_spec("sphinx") is None:
        pytest.fail(
            "Sphinx is not installed, so the documentation cannot be built: "
            "install the 'docs' extra (pip install -e '.[docs]', also part of the 'test' extra)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> str:
    """Build the HTML documentation once, as CI does: ``sphinx-build -W --keep-going -b html``."""
    require_sphinx()
    out = tmp_path_factory.mktemp("docs-html")
    doctrees = tmp_path_factory.mktemp("docs-doctrees")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(doctrees), DOCS, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    if done.returncode != 0:
        pytest.fail(
            "sphinx-build -W failed (exit %d):\n%s\n%s" % (done.returncode, done.stdout[-4000:], done.stderr[-8000:]),
            pytrace=False,
        )
    return str(out)


def read(built: str, page: str) -> str:
    with open(os.path.join(built, page), encoding="utf-8") as f:
        return f.read()


def anchors(html: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', html))


def public_names(cls: type, own_only: bool = False) -> list[str]:
    """Public methods and properties of a class (its own only, or with those it inherits from puka)."""
    names = vars(cls) if own_only else {name: inspect.getattr_static(cls, name) for name in dir(cls)}
    return sorted(
        name
        for name, value in names.items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod)))
    )


def test_the_documentation_builds_without_warnings(built):
    for page in ("index.html", "quickstart.html", "promises.html", "reliability.html", "api/client.html"):
        assert os.path.exists(os.path.join(built, page)), page


def test_every_public_client_method_is_in_the_api_reference(built):
    documented = anchors(read(built, "api/client.html"))
    names = public_names(puka.Client)
    assert len(names) >= 30, names  # the introspection found the API
    missing = [name for name in names if "puka.Client.%s" % name not in documented]
    assert not missing, "puka.Client members missing from docs/api/client.rst: %s" % ", ".join(missing)


def test_every_public_asyncio_client_method_is_in_the_api_reference(built):
    documented = anchors(read(built, "api/asyncio.html"))
    names = public_names(puka.asyncio.Client, own_only=True)
    assert "wait_async" in names and "messages" in names
    missing = [name for name in names if "puka.asyncio.Client.%s" % name not in documented]
    assert not missing, "puka.asyncio.Client members missing from docs/api/asyncio.rst: %s" % ", ".join(missing)


def test_every_exported_exception_is_documented(built):
    documented = anchors(read(built, "api/exceptions.html"))
    exported = [name for name in puka.__all__ if isinstance(getattr(puka, name), type)]
    errors = [name for name in exported if issubclass(getattr(puka, name), BaseException)]
    assert len(errors) >= len(puka.spec.ERRORS) + 8, errors
    missing = [name for name in errors if "puka.%s" % name not in documented]
    assert not missing, "exceptions missing from docs/api/exceptions.rst: %s" % ", ".join(missing)


def test_the_reply_code_table_is_generated_from_the_spec(built):
    html = read(built, "api/exceptions.html")
    for code, cls in puka.spec.ERRORS.items():
        assert re.search(r"<p>%d</p>" % code, html), "reply code %d is not in the table" % code
        assert "puka.%s" % cls.__name__ in html


def test_the_performance_page_has_the_latest_ratios_table(built):
    html = read(built, "performance.html")
    assert "Latest ratios" in html
