#!/usr/bin/env python3
"""Run puka's tests: ``python3 tools/run_tests.py [pytest arguments]``.

Makes sure an AMQP broker answers (``AMQP_URL``, or the local RabbitMQ, which
is started -- and installed, on Debian -- when needed; it fails loudly rather
than skipping), sets up ``.venv`` with the ``test`` extra, then runs pytest.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _setup import ROOT, ensure_broker, ensure_venv  # noqa: E402


def main() -> int:
    ensure_broker()
    python = ensure_venv("test")
    os.chdir(ROOT)
    os.execv(python, [python, "-m", "pytest", *sys.argv[1:]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
