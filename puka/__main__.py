"""``python -m puka``: the command line (see :mod:`puka.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
