"""What one fuzz input costs: CPU time per mutated broker stream, through each layer.

``tests/test_fuzz.py`` checks what the inbound path does with mutated broker
output (only ``DecodeError`` escapes the reader and the decoders; the protocol
core goes on or ends broken with every promise resolved).  It used to hold each
input to 100 ms of CPU as well; that is a performance goal, measured here
instead and never asserted.

Run: ``python -m pytest benchmarks/test_fuzz_cost.py --benchmark-only -s`` (needs
the ``test`` and ``bench`` extras: the pieces and the harness come from
``tests/test_fuzz.py``, which builds them with hypothesis, and the core from
``tests/seam.py``).

The corpus is ``PUKA_BENCH_FUZZ_N`` inputs (default 2000) made from the same
valid pieces as the fuzz test with the same kinds of mutation (flip, set,
truncate, insert, delete, splice, duplicate a frame), drawn from a seeded
generator (``PUKA_BENCH_FUZZ_SEED``, default 1) so that every run times the
same work.  Cases:

* ``reader``: the bytes through ``FrameReader`` in pieces;
* ``decoders``: every public decoder over every frame;
* ``core``: a fresh protocol core in a known state (publishes in flight, a
  consumer, a declare and a get pending) fed the pieces, with client actions
  between them, checked as the test checks it.

Each case is a pytest-benchmark of the whole corpus (stats per corpus; divide
by N for an input).  ``test_cpu_per_input`` then times each input of the core
case alone in this thread's CPU time, with the collector held off (its pauses
belong to earlier inputs), and prints the median, the 99th percentile, the
slowest input and how many inputs went over the 100 ms goal.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import statistics
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import test_fuzz as fuzz  # noqa: E402

N = int(os.environ.get("PUKA_BENCH_FUZZ_N", "2000"))
SEED = int(os.environ.get("PUKA_BENCH_FUZZ_SEED", "1"))
#: The goal per input (CPU seconds) that the fuzz test used to assert.
GOAL = 0.1
ACTIONS = ["publish", "take", "cancel", "qos", "declare", "close", None]


def mutate(rng: random.Random, max_mutations: int = 4) -> tuple[bytes, list[int]]:
    """One input: valid pieces, mutated as ``test_fuzz.mutated_stream`` does, and where to cut it."""
    data = bytearray(b"".join(rng.choice(fuzz.PIECES) for _ in range(rng.randint(1, 6))))
    starts = fuzz.frame_starts(bytes(data))
    for _ in range(rng.randint(0, max_mutations)):
        if starts and rng.random() < 0.5:
            pos = min(len(data), rng.choice(starts) + rng.randint(0, 16))
        else:
            pos = rng.randint(0, len(data))
        kind = rng.choice(["flip", "set", "truncate", "insert", "delete", "splice", "frame"])
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << rng.randint(0, 7)
        elif kind == "set" and pos < len(data):
            data[pos] = rng.choice(fuzz.INTERESTING_BYTES) if rng.random() < 0.5 else rng.randint(0, 255)
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = rng.randbytes(rng.randint(1, 12))
        elif kind == "delete":
            del data[pos : pos + rng.randint(1, 12)]
        elif kind == "splice" and data:
            start = rng.randint(0, len(data) - 1)
            data[pos:pos] = data[start : start + rng.randint(1, 64)]
        elif kind == "frame":
            data[pos:pos] = rng.choice(fuzz.PIECES)
    cuts = [rng.randint(1, 200) for _ in range(rng.randint(0, 5))]
    return bytes(data), cuts


@pytest.fixture(scope="module")
def corpus() -> list[tuple[bytes, list[int], list[str | None], int | None]]:
    rng = random.Random(SEED)
    inputs = []
    for _ in range(N):
        data, cuts = mutate(rng)
        actions = [rng.choice(ACTIONS) for _ in range(rng.randint(0, 4))]
        inputs.append((data, cuts, actions, rng.choice([None, 100])))
    return inputs


@pytest.fixture(scope="module", autouse=True)
def quiet_puka_logger():
    """Each broken input logs a protocol violation at ERROR: not what is measured here."""
    logger = logging.getLogger("puka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def run_reader(corpus) -> None:
    for data, cuts, _actions, _size in corpus:
        fuzz.read_frames(data, cuts, fuzz.FRAME_MAX)


def run_decoders(corpus) -> None:
    for data, _cuts, _actions, _size in corpus:
        fuzz.decode_payloads(data)


def run_core(corpus) -> None:
    for data, cuts, actions, size in corpus:
        fuzz.run_core(data, cuts, actions, size)


@pytest.mark.parametrize("case", ["reader", "decoders", "core"])
def test_corpus(benchmark, corpus, case):
    benchmark.group = "fuzz corpus (%d inputs)" % len(corpus)
    benchmark.extra_info["inputs"] = len(corpus)
    run = {"reader": run_reader, "decoders": run_decoders, "core": run_core}[case]
    benchmark.pedantic(run, args=(corpus,), rounds=3, iterations=1, warmup_rounds=1)


def test_cpu_per_input(benchmark, corpus):
    """Each input of the core case alone, in this thread's CPU time: the distribution is printed."""
    spent = []

    def measure() -> None:
        spent.clear()
        for data, cuts, actions, size in corpus:
            gc.disable()
            started = time.thread_time()
            try:
                fuzz.run_core(data, cuts, actions, size)
            finally:
                spent.append(time.thread_time() - started)
                gc.enable()

    benchmark.group = "fuzz: CPU per input"
    benchmark.pedantic(measure, rounds=1, iterations=1)
    spent.sort()
    median = statistics.median(spent)
    p99 = spent[min(len(spent) - 1, int(len(spent) * 0.99))]
    over = sum(1 for s in spent if s >= GOAL)
    benchmark.extra_info.update(
        median_ms=median * 1000, p99_ms=p99 * 1000, max_ms=spent[-1] * 1000, over_goal=over, goal_ms=GOAL * 1000
    )
    print(
        "\nfuzz core, CPU per input over %d inputs: median %.2f ms, p99 %.2f ms, max %.2f ms; "
        "%d over the %.0f ms goal" % (len(spent), median * 1000, p99 * 1000, spent[-1] * 1000, over, GOAL * 1000)
    )
