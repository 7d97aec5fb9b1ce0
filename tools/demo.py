#!/usr/bin/env python3
"""Install puka and run its demo against the local broker: ``python3 tools/demo.py [--trace]``.

Makes sure a broker answers (starting the local RabbitMQ, installing it on
Debian when missing), sets up ``.venv`` with the ``otel`` extra, and runs
``python -m puka.demo``: connect, declare, publish with confirms, consume,
printing each step; ``--trace`` prints the OpenTelemetry spans too.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _setup import ROOT, ensure_broker, ensure_venv  # noqa: E402


def main() -> int:
    ensure_broker()
    python = ensure_venv("otel")
    os.chdir(ROOT)
    os.execv(python, [python, "-m", "puka.demo", *sys.argv[1:]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
