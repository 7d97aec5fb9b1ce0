"""Build hook: wheels carry a pre-generated puka/spec/_generated.py.

An installed puka then imports the spec without reading the XML and never
writes beside itself.  Everything else is declared in pyproject.toml.
"""

import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_with_spec(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "puka", "spec", "_generated.py")
        subprocess.check_call([sys.executable, os.path.join("tools", "generate_spec.py"), "--output", target])


setup(cmdclass={"build_py": build_py_with_spec})
