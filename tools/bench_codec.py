#!/usr/bin/env python3
"""Codec benchmarks in one run, reported as ratios against puka 0.0.8 and pamqp.

Runs ``benchmarks/test_codec.py`` with pytest-benchmark (needs the ``bench``
extra: pytest-benchmark, pamqp, future) and prints, per group, each library's
operations per second and puka's speed-up over the others.  Goals from the
spec-layer issue: encode-publish >= 3x puka 0.0.8, decode-deliver >= 2x.

    python tools/bench_codec.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = {"encode-publish": 3.0, "decode-deliver": 2.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-rounds", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                os.path.join(ROOT, "benchmarks", "test_codec.py"),
                "--benchmark-only",
                "--benchmark-min-rounds=%d" % args.min_rounds,
                "--benchmark-json=%s" % out,
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        with open(out) as f:
            data = json.load(f)
    groups: dict[str, dict[str, float]] = {}
    for bench in data["benchmarks"]:
        library = bench["name"].rsplit("_", 1)[1]
        # The median resists the machine's noise better than the mean.
        groups.setdefault(bench["group"], {})[library] = 1.0 / bench["stats"]["median"]
    status = 0
    for group, ops in groups.items():
        print("%s:" % group)
        for library, rate in sorted(ops.items(), key=lambda kv: -kv[1]):
            print("  %-8s %10.0f ops/s" % (library, rate))
        for peer in ("puka008", "pamqp"):
            if peer in ops:
                ratio = ops["puka"] / ops[peer]
                goal = GOALS.get(group) if peer == "puka008" else None
                verdict = "" if goal is None else ("  goal >= %.1fx: %s" % (goal, "PASS" if ratio >= goal else "MISS"))
                if goal is not None and ratio < goal:
                    status = 1
                print("  puka / %-8s %.2fx%s" % (peer, ratio, verdict))
    return status


if __name__ == "__main__":
    sys.exit(main())
