"""The wheel: carries the XML and a current generated spec module; an installed puka writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    files = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            st = os.stat(path)
            files[path] = (st.st_size, st.st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), ROOT],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (path,) = out.glob("puka-*.whl")
    return str(path)


def test_wheel_carries_the_xml_the_generated_module_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "puka/py.typed",
        "puka/spec/_generated.py",
        "puka/spec/amqp0-9-1.stripped.extended.xml",
        "puka/spec/puka-overlay.xml",
    ):
        assert required in names


def test_installed_wheel_imports_without_writing_any_file(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", wheel], check=True, capture_output=True, timeout=600)
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["XDG_CACHE_HOME"] = str(cache)
    before = snapshot(str(venv))
    done = subprocess.run(
        [python, "-c", "import sys, puka, puka.spec; print(puka.spec.GENERATED); print('lxml' in sys.modules)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=env,
        timeout=60,
    )
    generated, lxml_loaded = done.stdout.split()
    assert generated.endswith(os.path.join("site-packages", "puka", "spec", "_generated.py"))
    assert lxml_loaded == "False"
    assert snapshot(str(venv)) == before, "importing the installed puka wrote files"
    assert not any(cache.iterdir())
