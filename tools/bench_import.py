#!/usr/bin/env python3
"""How long ``import puka`` takes, measured as whole processes.

Runs, interleaved and repeated, a bare interpreter (``python -c pass``) and
``python -c "import puka"``, and reports the medians and the difference:

* warm: the generated spec module exists (and bytecode may be cached);
* cold: a fresh copy of the package with no generated module and no bytecode,
  so the import parses the XML (lxml) and writes the module.

Optionally (``--peers``) the same for the original puka 0.0.8 and pika, when
they are importable by the given interpreter(s).

    python tools/bench_import.py [--runs 40] [--peers]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str], env: dict[str, str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True)
    return time.perf_counter() - start


def check_cold(py: str, env: dict[str, str], cwd: str) -> None:
    """The cold case must really import the fresh copy and generate its module."""
    out = subprocess.run(
        [py, "-c", "import sys, puka.spec; print(puka.spec.__file__); print('lxml' in sys.modules)"],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not out[0].startswith(cwd) or out[1] != "True":
        raise SystemExit("cold import did not use the fresh copy or did not parse the XML: %s" % out)


def measure(cases: dict[str, tuple[list[str], dict[str, str], str | None]], runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, (cmd, env, cwd) in cases.items():
            results[name].append(timed(cmd, env, cwd))
    return results


def fresh_copy(target: str) -> None:
    shutil.copytree(
        os.path.join(ROOT, "puka"),
        os.path.join(target, "puka"),
        ignore=shutil.ignore_patterns("__pycache__", "_generated.py"),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--peers", action="store_true", help="also time puka 0.0.8 and pika if importable")
    parser.add_argument("--peer-python", default=os.path.join(ROOT, ".peers", "venv-puka008", "bin", "python"))
    args = parser.parse_args()

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = ROOT
    py = sys.executable
    # Warm up: make sure the generated module and bytecode exist.
    subprocess.run([py, "-c", "import puka"], env=env, check=True)

    cases: dict[str, tuple[list[str], dict[str, str], str | None]] = {
        "bare": ([py, "-c", "pass"], env, ROOT),
        "import puka (warm)": ([py, "-c", "import puka"], env, ROOT),
    }
    if args.peers and os.path.exists(args.peer_python):
        peer_env = dict(env, PYTHONPATH="")
        cases["bare (0.0.8 venv)"] = ([args.peer_python, "-c", "pass"], peer_env, "/")
        cases["import puka 0.0.8"] = ([args.peer_python, "-c", "import puka"], peer_env, "/")
    if args.peers:
        probe = subprocess.run([py, "-c", "import pika"], env=env, capture_output=True)
        if probe.returncode == 0:
            cases["import pika"] = ([py, "-c", "import pika"], env, None)
    results = measure(cases, args.runs)

    cold: list[float] = []
    for index in range(max(5, args.runs // 4)):
        with tempfile.TemporaryDirectory() as tmp:
            fresh_copy(tmp)
            cold_env = dict(env, PYTHONPATH=tmp, XDG_CACHE_HOME=os.path.join(tmp, "cache"))
            if index == 0:
                check_cold(py, cold_env, tmp)
                shutil.rmtree(os.path.join(tmp, "puka"))
                fresh_copy(tmp)
            cold.append(timed([py, "-c", "import puka"], cold_env, cwd=tmp))

    medians = {name: statistics.median(times) * 1000 for name, times in results.items()}
    bare = medians["bare"]
    print("%-24s %10s %12s" % ("case", "median ms", "minus bare"))
    for name, value in medians.items():
        base = medians["bare (0.0.8 venv)"] if "0.0.8" in name and "bare" not in name else bare
        print("%-24s %10.1f %12.1f" % (name, value, value - base))
    cold_ms = statistics.median(cold) * 1000
    print("%-24s %10.1f %12.1f" % ("import puka (cold)", cold_ms, cold_ms - bare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
