#!/usr/bin/env python3
"""The codec against puka 0.0.8, through puka's public names: ratios and the verdict.

The work is the input of ``benchmarks/test_codec.py``: encode a basic.publish
and its content header (content_type, delivery_mode, a 3-entry headers
table); decode a basic.deliver and its content header.  puka goes through
``METHODS[...].encode(**fields)`` + ``encode_properties`` and ``decode_method``
+ ``decode_properties``.  Goals (the performance issue): encode >= 3x and
decode >= 2x puka 0.0.8, both ways of measuring:

* **separate processes**: each library in a process of its own, puka 0.0.8
  in its own virtualenv (``.peers/venv-puka008``, made on first use as
  ``tools/bench.py`` makes it), puka with this interpreter; the two
  alternate ``--runs`` times and each run's ratio is kept;
* **paired batches**: both in one process (puka 0.0.8 loaded as
  ``puka008`` by ``benchmarks/peers.py``), batches of each in turn, the ratio
  per pair.

Times are CPU time (``time.process_time``), which a busy machine distorts
less than the wall clock.  Reported: the median ratio, its range (spread) and
PASS/MISS per goal.  Exit status 1 when a goal is missed.

    python tools/bench_codec.py [--runs 7] [--pairs 40] [--batch 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = {"encode": 3.0, "decode": 2.0}

# --- the worker: one library, one operation, in a process of its own ---------------------------------


def _worker(impl: str, op: str, spec_json: str, batches: int, batch: int) -> None:
    """Time ``op`` with ``impl`` (``puka`` or ``puka008``, each importable as ``puka``)."""
    import struct

    work = json.loads(spec_json)
    headers, props = work["headers"], work["props"]
    deliver = bytes.fromhex(work["deliver"])
    header_payload = bytes.fromhex(work["header"])
    content_header = struct.Struct(">HHQ")
    body_size = work["body_size"]
    from puka import spec  # this repository's, or 0.0.8's in its venv

    if impl == "puka":
        publish = spec.METHODS[work["publish_id"]]
        encode_properties = spec.encode_properties
        decode_method = spec.decode_method
        decode_properties = spec.decode_properties

        def encode() -> Any:
            method = publish.encode(
                exchange="orders", routing_key="orders.created.eu", mandatory=False, immediate=False
            )
            return method, content_header.pack(60, 0, body_size) + encode_properties(60, props)

        def decode() -> Any:
            method, _ = decode_method(deliver, 0)
            _class_id, _weight, size = content_header.unpack_from(header_payload, 0)
            return method, size, decode_properties(header_payload, 12)[0]

    else:
        user_headers = dict(headers, content_type=props["content_type"], delivery_mode=props["delivery_mode"])
        encode_publish = spec.encode_basic_publish
        decode_deliver = spec.METHODS[work["deliver_id"]]
        decode_props = spec.PROPS[60]

        def encode() -> Any:
            return encode_publish("orders", "orders.created.eu", False, False, user_headers, b"", 131072)

        def decode() -> Any:
            method, _ = decode_deliver(deliver, 4)
            _class_id, _weight, size = content_header.unpack_from(header_payload, 0)
            return method, size, decode_props(header_payload, 12)[0]

    fn = encode if op == "encode" else decode
    for _ in range(batch):  # warm up
        fn()
    clock = time.process_time
    times = []
    for _ in range(batches):
        start = clock()
        for _ in range(batch):
            fn()
        times.append((clock() - start) / batch)
    print(json.dumps({"median": statistics.median(times), "min": min(times)}))


# --- the parent ---------------------------------------------------------------------------------------


def _work() -> dict[str, Any]:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import test_codec  # the benchmark's input

    return {
        "headers": test_codec.HEADERS,
        "props": test_codec.PROPS,
        "body_size": test_codec.BODY_SIZE,
        "deliver": test_codec.DELIVER_PAYLOAD.hex(),
        "header": test_codec.HEADER_PAYLOAD.hex(),
        "publish_id": test_codec.BasicPublish.method_id,
        "deliver_id": test_codec.BasicDeliver.method_id,
    }


def _puka008_python() -> str:
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from bench import VENV_PUKA008

    problem = VENV_PUKA008.ensure(setup=True)
    if problem:
        raise SystemExit("puka 0.0.8 venv: %s" % problem)
    return VENV_PUKA008.python


def separate_processes(runs: int, batches: int, batch: int) -> dict[str, list[float]]:
    """op -> per-run ratios (puka 0.0.8 time / puka time), each library in its own process."""
    work = json.dumps(_work())
    pythons = {"puka": sys.executable, "puka008": _puka008_python()}
    ratios: dict[str, list[float]] = {"encode": [], "decode": []}
    for run in range(runs):
        for op in ratios:
            seconds = {}
            # Alternate which goes first, so that neither always meets the same machine state.
            order = ["puka", "puka008"] if run % 2 == 0 else ["puka008", "puka"]
            for impl in order:
                out = subprocess.run(
                    [pythons[impl], os.path.abspath(__file__), "--worker", impl, op, work, str(batches), str(batch)],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd="/",  # so that 0.0.8's venv does not find this repository's puka
                ).stdout
                seconds[impl] = json.loads(out)["median"]
            ratios[op].append(seconds["puka008"] / seconds["puka"])
    return ratios


def paired_batches(pairs: int, batch: int) -> dict[str, list[float]]:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import peers
    import test_codec

    encode008, decode008 = test_codec.puka008_encode_decode(peers.load_puka008("spec"))
    return {
        "encode": test_codec.paired_ratios(test_codec.puka_encode, encode008, pairs, batch),
        "decode": test_codec.paired_ratios(test_codec.puka_decode, decode008, pairs, batch),
    }


def verdict(title: str, results: dict[str, list[float]]) -> bool:
    print(title)
    ok = True
    for op, ratios in results.items():
        ratios = sorted(ratios)
        median = statistics.median(ratios)
        goal = GOALS[op]
        passed = median >= goal
        ok &= passed
        straddles = ratios[0] < goal <= ratios[-1] or ratios[0] >= goal > ratios[-1]
        print(
            "  %s: puka / puka 0.0.8 = %.2fx median of %d (range %.2f-%.2f, spread %.0f%%)  goal >= %.1fx: %s%s"
            % (
                op,
                median,
                len(ratios),
                ratios[0],
                ratios[-1],
                100 * (ratios[-1] - ratios[0]) / median,
                goal,
                "PASS" if passed else "MISS",
                "*" if straddles else "",
            )
        )
    return ok


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, op, work, batches, batch = sys.argv[2:7]
        _worker(impl, op, work, int(batches), int(batch))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="separate-process runs per operation and library")
    parser.add_argument("--batches", type=int, default=15, help="timed batches per worker process (median kept)")
    parser.add_argument("--pairs", type=int, default=40, help="paired batches per operation")
    parser.add_argument("--batch", type=int, default=2000, help="operations per batch")
    args = parser.parse_args()
    print(
        "puka codec vs puka 0.0.8, %s, Python %s"
        % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), sys.version.split()[0])
    )
    ok = verdict(
        "separate processes (puka 0.0.8 in .peers/venv-puka008), ratio per run:",
        separate_processes(args.runs, args.batches, args.batch),
    )
    ok &= verdict("paired batches in one process, ratio per pair:", paired_batches(args.pairs, args.batch))
    print("(* the range straddles the goal)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
