#!/usr/bin/env python3
"""Pre-generate puka's spec module (for wheels, or to warm a source checkout).

    python tools/generate_spec.py                 # writes puka/spec/_generated.py
    python tools/generate_spec.py --output PATH   # e.g. into a build directory
    python tools/generate_spec.py --check PATH    # exit 1 unless PATH is current

The module holds the parsed AMQP XML as plain literals, keyed by the sha256 of
the XML inputs and the generator version (see puka/spec/codegen.py); an
installed puka that finds a current one never reads the XML nor writes a file.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from puka.spec import codegen, model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(model.SPEC_DIR, codegen.BESIDE_NAME))
    parser.add_argument("--check", metavar="PATH", help="verify PATH instead of writing")
    args = parser.parse_args(argv)

    _model, source = codegen.generate()
    if args.check:
        try:
            with open(args.check, encoding="utf-8") as f:
                current = f.read() == source
        except OSError:
            current = False
        print("%s is %s" % (args.check, "current" if current else "stale or missing"))
        return 0 if current else 1
    if not codegen.write(os.path.abspath(args.output), source):
        print("cannot write %s" % args.output, file=sys.stderr)
        return 1
    print("wrote %s (%d bytes, key %s)" % (args.output, len(source), codegen.inputs_key()[:16]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
