"""Shared by tools/run_tests.py and tools/demo.py: the project's venv, made with the system Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
PYTHON = os.path.join(VENV, "bin", "python")


def run(cmd: list[str], **kwargs: object) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def ensure_venv(extras: str) -> str:
    """Create .venv if needed and install the project (editable) with ``extras``; returns its python."""
    if not os.path.exists(PYTHON):
        probe = subprocess.run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True)
        if probe.returncode != 0 and shutil.which("apt-get"):
            # Debian's python3 ships venv separately.
            version = "%d.%d" % sys.version_info[:2]
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
            run(["apt-get", "install", "-y", "-q", "python%s-venv" % version], env=env)
        run([sys.executable, "-m", "venv", VENV])
    run([PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", "%s[%s]" % (ROOT, extras)])
    return PYTHON


def ensure_broker() -> None:
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import ensure_broker

    host, port = ensure_broker.ensure()
    print("AMQP broker answers on %s:%d" % (host, port), file=sys.stderr)
