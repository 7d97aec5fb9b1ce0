"""The documentation builds cleanly (warnings are errors) and documents the whole public API.

Sphinx comes with the ``docs`` extra (``pip install -e '.[docs]'``).  Without it these tests
fail rather than skip: an unbuildable documentation is a failure like any other.  The build
needs no network and no broker.
"""

from __future__ import annotations

import glob
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


def sources() -> list[str]:
    """Every page of the documentation (``.rst`` under docs/), as a path relative to it without the suffix."""
    pages = []
    for directory, dirs, files in os.walk(DOCS):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        pages += [os.path.relpath(os.path.join(directory, f), DOCS)[:-4] for f in files if f.endswith(".rst")]
    return sorted(pages)


def test_every_page_is_built_and_reachable_from_the_index(built):
    pages = sources()
    assert {"index", "quickstart", "promises", "reliability", "api/client"} <= set(pages)
    linked = set()
    for page in pages:
        html = read(built, page + ".html")
        here = os.path.dirname(page)
        for href in re.findall(r'href="([^"#]+\.html)', html):
            linked.add(os.path.normpath(os.path.join(here, href))[:-5])
    orphans = [page for page in pages if page != "index" and page not in linked]
    assert not orphans, "pages no other page links to (missing from a toctree?): %s" % orphans


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


def test_every_name_puka_exports_is_in_the_api_reference(built):
    documented = set()
    for page in sources():
        if page.startswith("api/"):
            documented |= anchors(read(built, page + ".html"))
    missing = []
    for name in puka.__all__:
        obj = getattr(puka, name)
        # Documented where it is defined or where it is exported: puka.X, puka.client.X, the module puka.spec...
        modules = [module for module in list(sys.modules.values()) if module is not None]
        homes = {m.__name__ for m in modules if m.__name__.split(".")[0] == "puka" and getattr(m, name, None) is obj}
        ids = {"%s.%s" % (home, name) for home in homes} | {"module-puka.%s" % name}
        if not ids & documented:
            missing.append(name)
    assert not missing, "names in puka.__all__ missing from docs/api/: %s" % ", ".join(missing)


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


def test_every_file_the_documentation_names_exists():
    """Paths such as ``tools/bench.py`` or ``tests/test_memory.py`` in the docs and the README are real files."""
    texts = [os.path.join(DOCS, page + ".rst") for page in sources()] + [os.path.join(ROOT, "README.md")]
    named = set()
    for path in texts:
        with open(path, encoding="utf-8") as f:
            named |= set(re.findall(r"\b((?:tools|benchmarks|tests|examples|puka)/[\w/*.-]+\.py)\b", f.read()))
    assert {"tools/bench.py", "tests/test_memory.py", "benchmarks/test_tracing_overhead.py"} <= named
    missing = sorted(p for p in named if not glob.glob(os.path.join(ROOT, p)))
    assert not missing, "the documentation names files that do not exist: %s" % ", ".join(missing)


def cell_text(cell: str) -> str:
    """A table cell's text; "a. ..." (which Sphinx renders as a lettered list) keeps its letter."""
    lettered = re.match(r'<ol class="loweralpha simple"(?: start="(\d+)")?>', cell)
    text = re.sub(r"<[^>]+>", "", cell).replace("&gt;", ">").replace("&lt;", "<").strip()
    if lettered:
        text = "%s. %s" % (chr(ord("a") + int(lettered.group(1) or 1) - 1), text)
    return text


def ratio_rows(html: str) -> list[list[str]]:
    """The rows of the performance page's "Latest ratios" table, as cell texts."""
    section = html[html.index('id="latest-ratios"') :]
    table = section[section.index("<tbody>") : section.index("</tbody>")]
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
        rows.append([cell_text(cell) for cell in cells])
    return rows


def test_the_latest_ratios_give_a_measure_for_every_goal_and_scenario(built):
    """docs/performance.rst: every row has a goal (or is informational) and a measured value; every
    end-to-end scenario of benchmarks/bench_common.py is reported."""
    rows = ratio_rows(read(built, "performance.html"))
    assert len(rows) >= 10
    for scenario, ratio, goal, latest in rows:
        assert scenario and ratio, (scenario, ratio)
        assert goal == "(info)" or re.fullmatch(r"[<>]=? \d+(\.\d+)?( ms| s)?", goal), (scenario, goal)
        assert re.match(r"\d+(\.\d+)?", latest), (scenario, latest)
    with open(os.path.join(ROOT, "benchmarks", "bench_common.py"), encoding="utf-8") as f:
        letters = re.findall(r'^    "([a-z])": "', f.read(), flags=re.M)
    assert len(letters) >= 5, letters  # the scenarios were found
    reported = {scenario[0] for scenario, *_ in rows if re.match(r"[a-z]\. ", scenario)}
    assert reported == set(letters)
