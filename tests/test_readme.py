"""The README's Python examples run, unchanged, against the broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 1


def test_readme_examples_run(amqp_url, tmp_path):
    for index, block in enumerate(python_blocks()):
        script = tmp_path / ("readme_%d.py" % index)
        script.write_text(block.replace("amqp://guest:guest@localhost:5672/", amqp_url), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        assert done.returncode == 0, "README example %d failed:\n%s" % (index, done.stderr)
