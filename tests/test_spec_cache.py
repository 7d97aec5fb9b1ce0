"""The generated spec module cache (puka.spec.codegen), exercised in fresh interpreters.

Each scenario imports a private copy of the ``puka`` package in a subprocess
(PYTHONPATH = the copy, XDG_CACHE_HOME = a private cache) and reports which
generated module it used and whether lxml -- needed only to parse the XML --
was imported.  Bytecode writing stays on: stale ``.pyc`` files are part of
what the cache must get right.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from puka.spec import codegen

REPO = Path(__file__).resolve().parents[1]
BESIDE = "_generated.py"
SPEC_XML = ("amqp0-9-1.stripped.extended.xml", "puka-overlay.xml")

#: Run in the subprocess: import puka, report as one JSON line.
PROBE = r"""
import json, os, sys, time

go = os.environ.get("PROBE_GO")
if go:  # wait for the starting gun, so concurrent probes really overlap
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.001)

if os.environ.get("PROBE_SAME_MTIME"):
    # Simulate a module rewritten within the same second as the one it replaces:
    # the replacement keeps the old file's mtime, so a stale .pyc of the same
    # size would look fresh to the import system.
    _replace = os.replace

    def _same_mtime_replace(src, dst, *args, **kwargs):
        try:
            old = os.stat(dst)
        except OSError:
            old = None
        _replace(src, dst, *args, **kwargs)
        if old is not None:
            os.utime(dst, ns=(old.st_atime_ns, old.st_mtime_ns))

    os.replace = _same_mtime_replace

import puka
import puka.spec as spec

print(json.dumps({
    "generated": spec.GENERATED,
    "lxml": "lxml" in sys.modules,
    "puka": puka.__file__,
    "methods": sorted(spec.METHODS),
    "ack": spec.METHODS_BY_NAME["basic.ack"].encode(delivery_tag=5, multiple=True).hex(),
    "not_found": puka.NotFound.reply_code,
}))
"""

EXPECTED_ACK = (b"\x00\x3c\x00\x50" + (5).to_bytes(8, "big") + b"\x01").hex()


class Sandbox:
    """A copy of the puka package and a private cache directory."""

    def __init__(self, root: Path, cache: Path) -> None:
        self.root = root
        self.cache = cache
        self.package = root / "puka"
        self.spec_dir = self.package / "spec"
        self.beside = self.spec_dir / BESIDE
        shutil.copytree(REPO / "puka", self.package, ignore=shutil.ignore_patterns("__pycache__", BESIDE, ".tmp-*"))
        cache.mkdir(parents=True, exist_ok=True)

    @property
    def xml_paths(self) -> list[str]:
        return [str(self.spec_dir / name) for name in SPEC_XML]

    def key(self) -> str:
        """The inputs key of this copy's XML, as puka computes it."""
        return codegen.inputs_key(self.xml_paths)

    def expected_source(self) -> str:
        return codegen.generate(self.xml_paths)[1]

    def cache_path(self, key: str | None = None) -> Path:
        return self.cache / "puka" / ("spec-%s.py" % (key or self.key())[:32])

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PROBE_"))}
        env.update(PYTHONPATH=str(self.root), XDG_CACHE_HOME=str(self.cache), **extra)
        return env

    def start(self, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", PROBE],
            cwd=self.root,
            env=self.env(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def result(proc: subprocess.Popen[str]) -> dict:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, "probe failed (rc %s):\n%s" % (proc.returncode, err)
        report = json.loads(out.strip().splitlines()[-1])
        assert report["ack"] == EXPECTED_ACK, "the spec imported but encodes wrongly"
        assert report["not_found"] == 404
        assert len(report["methods"]) > 50
        return report

    def run(self, **extra: str) -> dict:
        report = self.result(self.start(**extra))
        assert report["puka"] == str(self.package / "__init__.py"), "the probe imported another puka"
        return report

    def tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """tools/generate_spec.py, run from a copy beside this package copy."""
        tools = self.root / "tools"
        if not tools.exists():
            tools.mkdir()
            shutil.copy(REPO / "tools" / "generate_spec.py", tools / "generate_spec.py")
        return subprocess.run(
            [sys.executable, str(tools / "generate_spec.py"), *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def touch_overlay(self, note: str = "changed") -> None:
        overlay = self.spec_dir / "puka-overlay.xml"
        overlay.write_text(overlay.read_text(encoding="utf-8") + "<!-- %s -->\n" % note, encoding="utf-8")

    def leftovers(self, directory: Path) -> list[str]:
        return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))


def file_key(path: Path) -> str:
    match = re.search(r"^INPUTS_SHA256 = '([0-9a-f]{64})'$", path.read_text(encoding="utf-8"), re.M)
    assert match, "%s has no INPUTS_SHA256 line" % path
    return match.group(1)


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path / "site", tmp_path / "cache")


# --- making a directory unwritable, even as root ------------------------------------------------


@contextmanager
def unwritable(directory: Path):
    """chattr +i (root ignores permissions), else chmod 0o555 when not root; always undone."""
    undo = None
    chattr = shutil.which("chattr")
    why = "chattr not found"
    if chattr:
        done = subprocess.run([chattr, "+i", str(directory)], capture_output=True, text=True)
        if done.returncode == 0:
            undo = [chattr, "-i", str(directory)]
        else:
            why = "chattr +i failed: %s" % done.stderr.strip()
    if undo is None:
        if os.geteuid() == 0:
            pytest.fail("cannot make %s unwritable: %s, and chmod does not stop root" % (directory, why))
        mode = directory.stat().st_mode
        directory.chmod(0o555)
    try:
        try:
            (directory / ".probe-write").write_text("x")
        except OSError:
            pass
        else:
            (directory / ".probe-write").unlink()
            pytest.fail("%s is still writable after making it read-only" % directory)
        yield
    finally:
        if undo is not None:
            subprocess.run(undo, check=True)
        else:
            directory.chmod(mode)


# --- scenarios -----------------------------------------------------------------------------------


def test_cold_import_writes_the_module_beside_the_package(box: Sandbox):
    assert not box.beside.exists()
    report = box.run()
    assert report["generated"] == str(box.beside)
    assert report["lxml"] is True
    assert box.beside.read_text(encoding="utf-8") == box.expected_source()
    assert file_key(box.beside) == box.key()
    assert not box.cache_path().exists()
    assert box.leftovers(box.spec_dir) == []


def test_warm_import_reuses_it_without_lxml(box: Sandbox):
    box.run()
    before = box.beside.stat()
    for _ in range(2):
        report = box.run()
        assert report["generated"] == str(box.beside)
        assert report["lxml"] is False
    after = box.beside.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino), "rewritten"


@pytest.mark.parametrize("same_mtime", [False, True], ids=["later", "same-second"])
def test_changed_xml_regenerates_the_module(box: Sandbox, same_mtime: bool):
    box.run()
    box.run()  # a .pyc of the current module now exists
    assert list((box.spec_dir / "__pycache__").glob("_generated.*.pyc"))
    old_key = file_key(box.beside)

    box.touch_overlay()
    new_key = box.key()
    assert new_key != old_key
    report = box.run(**({"PROBE_SAME_MTIME": "1"} if same_mtime else {}))
    assert report["lxml"] is True
    assert report["generated"] == str(box.beside)
    assert file_key(box.beside) == new_key
    assert box.beside.read_text(encoding="utf-8") == box.expected_source()

    report = box.run()
    assert (report["generated"], report["lxml"]) == (str(box.beside), False)


def _wrong_key(source: str) -> str:
    key = re.search(r"INPUTS_SHA256 = '([0-9a-f]{64})'", source).group(1)
    return source.replace(key, ("0" if key[0] != "0" else "1") + key[1:])  # same length


CORRUPTIONS = {
    "truncated": lambda src: src[: len(src) // 2],
    "empty": lambda src: "",
    "garbage": lambda src: "\x00\x01 not python ((( \ufffd",
    "wrong-key": _wrong_key,
    "wrong-generator": lambda src: src.replace("GENERATOR_VERSION = 1", "GENERATOR_VERSION = 9"),
    "raises": lambda src: "raise RuntimeError('half-written module')\n" + src,
    "model-not-a-dict": lambda src: src + "\nMODEL = ()\n",
    "model-empty-dict": lambda src: src + "\nMODEL = {}\n",  # passes the checks, build() fails
    "no-build": lambda src: src + "\ndel build\n",
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_module_is_regenerated_never_trusted(box: Sandbox, corruption: str):
    box.run()
    box.run()  # leaves a .pyc for the good module
    good = box.beside.read_text(encoding="utf-8")
    stat = box.beside.stat()
    bad = CORRUPTIONS[corruption](good)
    assert bad != good
    box.beside.write_text(bad, encoding="utf-8")
    # Another mtime than the good module's .pyc records, or Python would load that .pyc.
    os.utime(box.beside, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**10))

    report = box.run(PROBE_SAME_MTIME="1")
    assert report["lxml"] is True, "the corrupt module was trusted"
    assert report["generated"] == str(box.beside)
    assert box.beside.read_text(encoding="utf-8") == good

    report = box.run()
    assert (report["generated"], report["lxml"]) == (str(box.beside), False)


def test_read_only_package_falls_back_to_the_user_cache(box: Sandbox):
    with unwritable(box.spec_dir):
        report = box.run()
        cached = box.cache_path()
        assert report["generated"] == str(cached)
        assert report["lxml"] is True
        assert not box.beside.exists()
        assert cached.read_text(encoding="utf-8") == box.expected_source()

        report = box.run()
        assert (report["generated"], report["lxml"]) == (str(cached), False)
    assert box.leftovers(cached.parent) == []


def test_read_only_package_with_a_stale_module_uses_the_user_cache(box: Sandbox):
    box.run()
    stale = box.beside.read_text(encoding="utf-8")
    box.touch_overlay("upgraded")
    with unwritable(box.spec_dir):
        report = box.run()
        assert report["generated"] == str(box.cache_path())
        assert report["lxml"] is True
        assert file_key(box.cache_path()) == box.key()
        assert box.beside.read_text(encoding="utf-8") == stale

        report = box.run()
        assert (report["generated"], report["lxml"]) == (str(box.cache_path()), False)


def test_nowhere_writable_keeps_the_model_in_memory(box: Sandbox):
    with unwritable(box.spec_dir), unwritable(box.cache):
        for _ in range(2):
            report = box.run()
            assert report["generated"] is None
            assert report["lxml"] is True
    assert list(box.cache.iterdir()) == []
    assert not box.beside.exists()
    assert box.leftovers(box.spec_dir) == []


def test_concurrent_cold_imports_agree(box: Sandbox, tmp_path: Path):
    go = tmp_path / "go"
    procs = [box.start(PROBE_GO=str(go)) for _ in range(4)]
    time.sleep(0.2)  # let the interpreters start and wait at the gun
    go.touch()
    reports = [Sandbox.result(p) for p in procs]
    assert {r["generated"] for r in reports} == {str(box.beside)}
    assert len({tuple(r["methods"]) for r in reports}) == 1
    assert box.beside.read_text(encoding="utf-8") == box.expected_source()
    compile(box.beside.read_text(encoding="utf-8"), str(box.beside), "exec")
    assert box.leftovers(box.spec_dir) == []
    report = box.run()
    assert (report["generated"], report["lxml"]) == (str(box.beside), False)


def test_generation_is_deterministic_and_location_independent(box: Sandbox, tmp_path: Path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    for out in (a, b):
        done = box.tool("--output", str(out))
        assert done.returncode == 0, done.stderr
    source = a.read_bytes()
    assert source == b.read_bytes()

    # Another copy of the package elsewhere, through the import path: the same bytes.
    other = Sandbox(tmp_path / "elsewhere" / "deeper", tmp_path / "cache2")
    report = other.run()
    assert report["generated"] == str(other.beside)
    assert other.beside.read_bytes() == source
    assert codegen.generate(box.xml_paths)[1].encode() == source

    text = source.decode("utf-8")
    for path in (str(tmp_path), str(REPO), str(box.root), os.path.expanduser("~")):
        assert path not in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}", text), "a date or time in the module"
    assert "INPUTS_SHA256 = %r" % box.key() in text


def test_check_tells_current_from_stale(box: Sandbox, tmp_path: Path):
    current = tmp_path / "current.py"
    assert box.tool("--output", str(current)).returncode == 0
    done = box.tool("--check", str(current))
    assert done.returncode == 0, done.stdout + done.stderr

    edited = tmp_path / "edited.py"
    edited.write_text(current.read_text(encoding="utf-8") + "# local edit\n", encoding="utf-8")
    assert box.tool("--check", str(edited)).returncode == 1
    assert box.tool("--check", str(tmp_path / "missing.py")).returncode == 1

    box.touch_overlay()  # the XML moves on: the old module is stale
    assert box.tool("--check", str(current)).returncode == 1
