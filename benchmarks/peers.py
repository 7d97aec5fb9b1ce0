"""Load the peers the benchmarks compare against, beside puka, in one process.

The original puka 0.0.8 has the same package name as this project, so its sdist
is fetched with ``pip download`` into ``.peers/`` and its package copied there
under the name ``puka008``; its modules use relative imports, so they load
unchanged.  It needs the ``future`` package (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, ".peers")


def puka008_dir() -> str:
    """Directory holding the ``puka008`` package (fetched on first use)."""
    target = os.path.join(PEERS, "puka008")
    if os.path.isdir(target):
        return PEERS
    os.makedirs(PEERS, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", PEERS, "puka==0.0.8"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with tarfile.open(os.path.join(PEERS, "puka-0.0.8.tar.gz")) as tar:
        tar.extractall(PEERS, filter="data")
    shutil.copytree(os.path.join(PEERS, "puka-0.0.8", "puka"), target)
    return PEERS


def load_puka008(module: str = "spec"):
    """Import ``puka008.<module>`` (e.g. ``spec``, the generated codec of 0.0.8)."""
    path = puka008_dir()
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("puka008." + module)
