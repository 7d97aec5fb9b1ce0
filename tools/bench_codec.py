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
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = {"encode-publish": 3.0, "decode-deliver": 2.0}


def run_pytest(selection: str, min_rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                os.path.join(ROOT, "benchmarks", "test_codec.py"),
                "-k",
                selection,
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
            return json.load(f)  # type: ignore[no-any-return]


def run_once(min_rounds: int) -> dict[str, dict[str, float]]:
    """One pytest-benchmark run: group -> library -> ops/s (from the median time)."""
    data: Any = run_pytest("not paired", min_rounds)
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
    print("pytest-benchmark, each library timed on its own (median of %d runs):" % len(runs))
    for group in runs[0]:
        print("  %s:" % group)
        for library in sorted(runs[0][group]):
            rates = sorted(run[group][library] for run in runs)
            print("    %-8s %10.0f ops/s" % (library, statistics.median(rates)))
        for peer in ("puka008", "pamqp"):
            if peer in runs[0][group]:
                ratios = sorted(run[group]["puka"] / run[group][peer] for run in runs)
                print(
                    "    puka / %-8s %.2fx median, per run %s"
                    % (peer, statistics.median(ratios), " ".join("%.2f" % r for r in ratios))
                )
    # The verdict: the same work in interleaved batches, so that the machine's drift
    # (large here: a shared VM) hits both libraries alike.
    paired: Any = run_pytest("paired", 1)
    info = paired["benchmarks"][0]["extra_info"]
    status = 0
    print("paired batches (the verdict):")
    for name, group in (("encode", "encode-publish"), ("decode", "decode-deliver")):
        ratio = info["%s_ratio_median" % name]
        low, high = info["%s_ratio_range" % name]
        goal = GOALS[group]
        if ratio < goal:
            status = 1
        print(
            "  %s: puka / puka008 %.2fx median (%.2f-%.2f)  goal >= %.1fx: %s"
            % (group, ratio, low, high, goal, "PASS" if ratio >= goal else "MISS")
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
