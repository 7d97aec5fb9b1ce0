#!/usr/bin/env python3
"""Fetch RabbitMQ's extended AMQP 0-9-1 XML again and vendor it into puka/spec/.

The file comes from the npm registry's ``bramqp`` package (its
``specification/rabbitmq/full/amqp0-9-1.stripped.extended.xml``, BSD licence,
AMQP Working Group header kept untouched).  ``npm pack`` downloads the pinned
version, the file's sha256 is checked against the pin, and only then is it
copied in.  To move to another version, pass ``--version`` and the new
``--sha256`` after reviewing the file.

    python tools/update_spec.py            # re-fetch, verify, copy (no change expected)
    python tools/update_spec.py --check    # verify the vendored file only
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "bramqp"
VERSION = "0.6.1"
MEMBER = "package/specification/rabbitmq/full/amqp0-9-1.stripped.extended.xml"
SHA256 = "19d4a3155a5231faae9750c0e01975a1a8ebad49eee3319add7b8aec5416fe33"
TARGET = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "puka",
    "spec",
    "amqp0-9-1.stripped.extended.xml",
)


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fetch(version: str, workdir: str) -> str:
    """npm pack the package into workdir; return the path of the extracted XML."""
    out = subprocess.run(
        ["npm", "pack", "--silent", "%s@%s" % (PACKAGE, version)],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    tarball = os.path.join(workdir, out[-1])
    with tarfile.open(tarball) as tar:
        member = tar.getmember(MEMBER)
        tar.extractall(workdir, members=[member], filter="data")
    return os.path.join(workdir, MEMBER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default=VERSION, help="bramqp version (default %(default)s)")
    parser.add_argument("--sha256", default=SHA256, help="expected sha256 of the XML")
    parser.add_argument("--check", action="store_true", help="only verify the vendored file")
    args = parser.parse_args(argv)

    if args.check:
        actual = sha256_of(TARGET)
        if actual != args.sha256:
            print("vendored XML differs from the pin: %s" % actual, file=sys.stderr)
            return 1
        print("vendored XML matches sha256 %s" % actual)
        return 0

    with tempfile.TemporaryDirectory() as workdir:
        fetched = fetch(args.version, workdir)
        actual = sha256_of(fetched)
        if actual != args.sha256:
            print(
                "sha256 mismatch for %s@%s: expected %s, got %s" % (PACKAGE, args.version, args.sha256, actual),
                file=sys.stderr,
            )
            return 1
        shutil.copyfile(fetched, TARGET)
    print("vendored %s@%s %s -> %s" % (PACKAGE, args.version, actual, os.path.relpath(TARGET)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
