#!/usr/bin/env python3
"""Codec benchmarks in one run, reported as ratios against puka 0.0.8 and pamqp.

Runs ``benchmarks/test_codec.py`` with pytest-benchmark (needs the ``bench``
extra: pytest-benchmark, pamqp, future) and prints, per group, each library's
operations per second and puka's speed-up over the others.  Goals from the
spec-layer issue: encode-publish >= 3x puka 0.0.8, decode-deliver >= 2x.

    python tools/bench_codec.py [--runs 5] [--min-rounds 2000]

Each run is a whole pytest-benchmark session; the ratio of each run is kept
and their median reported, with every run's ratio, since this machine is
shared and a single run can be far off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = {"encode-publish": 3.0, "decode-deliver": 2.0}


def run_once(min_rounds: int) -> dict[str, dict[str, float]]:
    """One pytest-benchmark run: group -> library -> ops/s (from the median time)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                os.path.join(ROOT, "benchmarks", "test_codec.py"),
                "--benchmark-only",
                "--benchmark-min-rounds=%d" % min_rounds,
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
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-rounds", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5, help="whole runs; ratios are reported per run")
    args = parser.parse_args()
    runs = [run_once(args.min_rounds) for _ in range(args.runs)]
    status = 0
    for group in runs[0]:
        print("%s:" % group)
        for library in sorted(runs[0][group]):
            rates = sorted(run[group][library] for run in runs)
            print("  %-8s %10.0f ops/s (median of %d runs)" % (library, statistics.median(rates), len(runs)))
        for peer in ("puka008", "pamqp"):
            if peer not in runs[0][group]:
                continue
            ratios = sorted(run[group]["puka"] / run[group][peer] for run in runs)
            ratio = statistics.median(ratios)
            goal = GOALS.get(group) if peer == "puka008" else None
            verdict = ""
            if goal is not None:
                verdict = "  goal >= %.1fx: %s" % (goal, "PASS" if ratio >= goal else "MISS")
                if ratio < goal:
                    status = 1
            print(
                "  puka / %-8s %.2fx median, per run %s%s"
                % (peer, ratio, " ".join("%.2f" % r for r in ratios), verdict)
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
