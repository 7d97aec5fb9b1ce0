#!/usr/bin/env python3
"""Scaling: puka's CPU and memory per message as queues, consumers and publishes in flight grow.

Run by hand with the dev venv and a broker (``AMQP_URL`` or the local one)::

    .venv/bin/python benchmarks/bench_scaling.py                  # everything: 2 processes x 3 rounds
    .venv/bin/python benchmarks/bench_scaling.py --reps 3 --rounds 4 --only consume
    .venv/bin/python benchmarks/bench_scaling.py --queues 1,1000 --in-flight 10000,100000 --json /tmp/s.json

The machine is shared and noisy, so the sizes of a family are measured *interleaved*: each
repetition is one fresh process that runs ``--rounds`` rounds, each round every size of the family
(and both middleware variants) once, in a shuffled order.  The ratio largest / smallest is taken
per round, from measurements seconds apart, and its median and range over every round are shown.

``consume``  One connection declares ``max(--queues)`` server-named queues (not exclusive, so that
             two consumer connections can take turns on them; ``x-expires`` 120 s, so the broker
             drops them even if this process dies; deleted at the end).  A case is ``Q`` queues
             (1, 1,000, 10,000) consumed with one ``basic_consume_multi`` (one channel, a consumer
             per queue) by a consumer connection with no middleware, or by one with a middleware
             that overrides ``on_deliver`` (it checks that every delivery names the queue it came
             from).  The prefetch per consumer is ``ceil(messages / Q)``, so that in every case all
             the messages may be in flight at once (the same load on the socket whatever ``Q``).
             Once every consumer is started, ``--messages`` messages of 100 bytes are published
             round-robin over the ``Q`` queues (confirmed, by the declaring connection) while the
             consumer calls nothing; then the consumer ``wait``s for each message and acks it.  The
             figure: the process's CPU time (``time.process_time``) from its first ``wait`` to its
             last ack, per message.  Also shown: the client CPU per queue of the declares, 1,000
             issued together and then the rest together, and of starting the consumers.
``publish``  ``N`` confirmed publishes in flight (10,000, 100,000, 300,000) of 100 bytes to the
             default exchange under a routing key no queue has (the broker confirms and drops
             them: nothing is stored).  CPU: the process time to issue the ``N`` publishes and take
             every confirm, per publish.  Memory: in a process of its own per size, the ``N``
             publishes are issued and written to the socket without reading anything back (so all
             are in flight for the client), under ``tracemalloc``: bytes still held, per publish.

With ``PUKA_BENCH_PROFILE=1`` in the environment, a consume repetition prints a profile of each
case's timed loop on stderr.

Verdicts (PASS/MISS): a family is *flat* when the median over rounds of (CPU per message of the
largest size / of the smallest) is at most ``--flat`` (1.3x; ``*`` when the rounds straddle it);
memory per in-flight publish is under 500 bytes (the budget of ``tests/test_memory.py``) at every
size.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import random
import select
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import puka  # noqa: E402
from puka.tracing import Middleware  # noqa: E402

DEFAULT_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
BODY = b"x" * 100
#: Bytes allowed per in-flight publish (tests/test_memory.py's budget).
MEMORY_BUDGET = 500
#: Queue arguments: the broker deletes a queue unused this long (milliseconds), should cleanup fail.
QUEUE_ARGUMENTS = {"x-expires": 120_000}
#: Publishes between waits for their confirms (consume cases).
PUBLISH_BATCH = 2000
VARIANTS = ("plain", "middleware")


class QueueChecker(Middleware):
    """A middleware that overrides on_deliver: counts deliveries whose queue is not the one they came from."""

    def __init__(self) -> None:
        self.seen = 0
        self.wrong = 0

    def on_deliver(self, delivery: Any) -> None:
        self.seen += 1
        if delivery.queue != delivery.message["routing_key"]:
            self.wrong += 1


def _connect(url: str, **kwargs: Any) -> puka.Client:
    client = puka.Client(url, **kwargs)
    client.wait(client.connect(), timeout=30)
    return client


# --- consume: one repetition (a child process) ------------------------------------------------------------


def _declare(owner: puka.Client, count: int) -> tuple[list[str], float]:
    """``count`` server-named queues declared together: (names, client CPU seconds)."""
    cpu = time.process_time()
    promises = [owner.queue_declare(arguments=QUEUE_ARGUMENTS) for _ in range(count)]
    names = [owner.wait(p, timeout=600)["queue"] for p in promises]
    return names, time.process_time() - cpu


def _consume_case(
    owner: puka.Client, consumer: puka.Client, names: list[str], messages: int, profile: bool
) -> dict[str, float]:
    prefetch = -(-messages // len(names))
    consume = consumer.basic_consume_multi(names, prefetch_count=prefetch)
    cpu = time.process_time()
    # basic_qos with the same window resolves once every consumer is started (every consume-ok).
    consumer.wait(consumer.basic_qos(consume, prefetch), timeout=600)
    start_cpu = time.process_time() - cpu
    count = len(names)
    for i in range(0, messages, PUBLISH_BATCH):
        batch = [owner.basic_publish("", names[j % count], BODY) for j in range(i, min(messages, i + PUBLISH_BATCH))]
        owner.wait_for_all(batch)
    profiler = cProfile.Profile() if profile else None
    cpu = time.process_time()
    wall = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for _ in range(messages):
        message = consumer.wait(consume, timeout=60)
        if message is None:
            raise RuntimeError("no delivery for 60 s")
        consumer.basic_ack(message)
    if profiler is not None:
        profiler.disable()
    consume_cpu = time.process_time() - cpu
    consume_wall = time.perf_counter() - wall
    if profiler is not None:
        print("--- %d queues, %s" % (count, "middleware" if consumer.middleware else "plain"), file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    consumer.wait(consumer.basic_cancel(consume), timeout=600)
    return {
        "cpu_us": consume_cpu / messages * 1e6,
        "rate": messages / consume_wall,
        "start_us": start_cpu / count * 1e6,
    }


def rep_consume(url: str, sizes: list[int], messages: int, rounds: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    checker = QueueChecker()
    owner = _connect(url)
    names: list[str] = []
    try:
        plain = _connect(url)
        observed = _connect(url, middleware=[checker])
        first = min(1000, max(sizes))
        names, first_cpu = _declare(owner, first)
        rest, rest_cpu = _declare(owner, max(sizes) - first)
        names += rest
        result: dict[str, Any] = {
            "declare_first_us": first_cpu / first * 1e6,
            "declare_rest_us": rest_cpu / len(rest) * 1e6 if rest else None,
            "declare_rest_n": len(rest),
            "rounds": [],
        }
        cases = [(size, variant) for size in sizes for variant in VARIANTS]
        profile = bool(os.environ.get("PUKA_BENCH_PROFILE"))
        for _ in range(rounds):
            rng.shuffle(cases)
            measured = {}
            for size, variant in cases:
                consumer = plain if variant == "plain" else observed
                measured["%d %s" % (size, variant)] = _consume_case(owner, consumer, names[:size], messages, profile)
                print("  consume %6d %-10s %s" % (size, variant, measured["%d %s" % (size, variant)]), file=sys.stderr)
            result["rounds"].append(measured)
        if checker.wrong or checker.seen != rounds * len(sizes) * messages:
            raise RuntimeError(
                "the middleware saw %d deliveries, %d with the wrong queue" % (checker.seen, checker.wrong)
            )
        for client in (plain, observed):
            client.wait(client.close(), timeout=30)
        return result
    finally:
        try:
            for start in range(0, len(names), 5000):
                owner.wait_for_all([owner.queue_delete(q) for q in names[start : start + 5000]], raise_errors=False)
        finally:
            owner.wait(owner.close(), timeout=30)


# --- publish: CPU repetitions and memory cases (child processes) -------------------------------------------


def _flush(client: puka.Client) -> None:
    """Write everything queued (reading nothing: no confirm is taken)."""
    fd = client.fileno()
    while client.needs_write():
        _readable, writable, _ = select.select([], [fd], [], 30)
        if not writable:
            raise RuntimeError("the broker stopped reading")
        client.on_write()


def _nowhere() -> str:
    return "puka-bench-scaling-nowhere-%d" % os.getpid()  # no such queue: confirmed, then dropped


def rep_publish(url: str, sizes: list[int], rounds: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    routing_key = _nowhere()
    result: dict[str, Any] = {"rounds": []}
    with puka.Client(url) as client:
        client.wait(client.basic_publish("", routing_key, b"warm-up"))
        publish = client.basic_publish
        for _ in range(rounds):
            order = list(sizes)
            rng.shuffle(order)
            measured = {}
            for size in order:
                gc.collect()
                cpu = time.process_time()
                wall = time.perf_counter()
                numbers = [publish("", routing_key, BODY) for _ in range(size)]
                for number in numbers:
                    client.wait(number)
                elapsed_cpu = time.process_time() - cpu
                elapsed = time.perf_counter() - wall
                del numbers
                measured[str(size)] = {"cpu_us": elapsed_cpu / size * 1e6, "rate": size / elapsed}
                print("  publish %7d %s" % (size, measured[str(size)]), file=sys.stderr)
            result["rounds"].append(measured)
    return result


def case_memory(url: str, in_flight: int) -> dict[str, Any]:
    routing_key = _nowhere()
    with puka.Client(url) as client:
        client.wait(client.basic_publish("", routing_key, b"warm-up"))
        publish = client.basic_publish
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            numbers = [publish("", routing_key, BODY) for _ in range(in_flight)]
            _flush(client)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        client.wait_for_all(numbers)
    return {"bytes": (held - sys.getsizeof(numbers)) / in_flight}


# --- the driver ----------------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--url", args.url, "--messages", str(args.messages)]
    command += ["--rounds", str(args.rounds), "--queues", args.queues, "--in-flight", args.in_flight, *extra]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
    if done.returncode:
        raise RuntimeError("%s failed (exit %d)" % (" ".join(extra), done.returncode))
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def spread(values: list[float]) -> str:
    return "%.2f [%.2f-%.2f]" % (statistics.median(values), min(values), max(values))


def _verdict(what: str, ratios: list[float], flat: float) -> dict[str, Any]:
    median = statistics.median(ratios)
    verdict = "PASS" if median <= flat else "MISS"
    if min(ratios) <= flat < max(ratios):
        verdict += "*"  # the rounds straddle the goal: inconclusive
    return {"what": what, "value": spread(ratios), "goal": "<= %.1fx" % flat, "verdict": verdict}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--reps", type=int, default=2, help="processes per family")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every size per process")
    parser.add_argument("--queues", default="1,1000,10000", help="consume: queue counts")
    parser.add_argument("--in-flight", default="10000,100000,300000", help="publish: publishes in flight")
    parser.add_argument("--messages", type=int, default=20000, help="consume: messages per case")
    parser.add_argument("--only", choices=("consume", "publish"))
    parser.add_argument("--flat", type=float, default=1.3, help="largest / smallest CPU per message allowed")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    parser.add_argument("--json", help="write every measurement and the verdicts here")
    parser.add_argument("--child", choices=("consume", "publish", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    queue_sizes = [int(n) for n in args.queues.split(",")]
    flight_sizes = [int(n) for n in args.in_flight.split(",")]
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    if args.child == "consume":
        print(json.dumps(rep_consume(args.url, queue_sizes, args.messages, args.rounds, seed)))
        return 0
    if args.child == "publish":
        print(json.dumps(rep_publish(args.url, flight_sizes, args.rounds, seed)))
        return 0
    if args.child == "memory":
        print(json.dumps(case_memory(args.url, args.size)))
        return 0

    print(
        "puka %s, Python %s, %d process(es) x %d rounds per family, seed %d"
        % (puka.__version__, sys.version.split()[0], args.reps, args.rounds, seed),
        flush=True,
    )
    consume_reps: list[dict[str, Any]] = []
    publish_reps: list[dict[str, Any]] = []
    memory: dict[int, list[float]] = {n: [] for n in flight_sizes}
    for rep in range(args.reps):
        jobs: list[tuple[str, ...]] = []
        if args.only != "publish":
            jobs.append(("--child", "consume", "--seed", str(seed + rep)))
        if args.only != "consume":
            jobs.append(("--child", "publish", "--seed", str(seed + rep)))
            jobs += [("--child", "memory", "--size", str(n)) for n in flight_sizes]
        random.Random(seed + rep).shuffle(jobs)
        for job in jobs:
            print("rep %d: %s" % (rep + 1, " ".join(job[1:])), flush=True)
            result = run_child(args, *job)
            if job[1] == "consume":
                consume_reps.append(result)
            elif job[1] == "publish":
                publish_reps.append(result)
            else:
                memory[int(job[3])].append(result["bytes"])

    verdicts: list[dict[str, Any]] = []
    if consume_reps:
        rounds = [r for rep in consume_reps for r in rep["rounds"]]
        print()
        print(
            "consume: %d messages of 100 B per case, prefetch ceil(%d / queues) per consumer, ack each; "
            "%d rounds" % (args.messages, args.messages, len(rounds))
        )
        print("%8s  %-10s  %-22s  %-8s  %s" % ("queues", "middleware", "CPU us/msg", "msgs/s", "start us/queue"))
        for q in queue_sizes:
            for variant in VARIANTS:
                rows = [r["%d %s" % (q, variant)] for r in rounds]
                print(
                    "%8d  %-10s  %-22s  %-8.0f  %s"
                    % (
                        q,
                        "on_deliver" if variant == "middleware" else "none",
                        spread([r["cpu_us"] for r in rows]),
                        statistics.median(r["rate"] for r in rows),
                        spread([r["start_us"] for r in rows]),
                    )
                )
        first = [r["declare_first_us"] for r in consume_reps]
        rest = [r["declare_rest_us"] for r in consume_reps if r["declare_rest_us"] is not None]
        print("declares, client CPU per queue: %d issued together %s" % (min(1000, max(queue_sizes)), spread(first)))
        if rest:
            print(
                "                                %d issued together %s"
                % (consume_reps[0]["declare_rest_n"], spread(rest))
            )
        for variant in VARIANTS:
            small = "%d %s" % (queue_sizes[0], variant)
            large = "%d %s" % (queue_sizes[-1], variant)
            ratios = [r[large]["cpu_us"] / r[small]["cpu_us"] for r in rounds]
            what = "consume CPU/msg, %s: %d / %d queues" % (variant, queue_sizes[-1], queue_sizes[0])
            verdicts.append(_verdict(what, ratios, args.flat))
    if publish_reps:
        rounds = [r for rep in publish_reps for r in rep["rounds"]]
        print()
        print(
            "publish: confirmed, 100 B, to an unrouted key (confirmed and dropped by the broker); %d rounds"
            % len(rounds)
        )
        print("%9s  %-22s  %-11s  %s" % ("in flight", "CPU us/publish", "publishes/s", "bytes per in-flight publish"))
        for n in flight_sizes:
            rows = [r[str(n)] for r in rounds]
            print(
                "%9d  %-22s  %-11.0f  %s"
                % (
                    n,
                    spread([r["cpu_us"] for r in rows]),
                    statistics.median(r["rate"] for r in rows),
                    spread(memory[n]),
                )
            )
        ratios = [r[str(flight_sizes[-1])]["cpu_us"] / r[str(flight_sizes[0])]["cpu_us"] for r in rounds]
        what = "publish CPU/msg: %d / %d in flight" % (flight_sizes[-1], flight_sizes[0])
        verdicts.append(_verdict(what, ratios, args.flat))
        for n in flight_sizes:
            worst = max(memory[n])
            verdicts.append(
                {
                    "what": "memory per in-flight publish, %d in flight (max)" % n,
                    "value": "%.0f B" % worst,
                    "goal": "< %d B" % MEMORY_BUDGET,
                    "verdict": "PASS" if worst < MEMORY_BUDGET else "MISS",
                }
            )
    print()
    for v in verdicts:
        print("%-58s %-20s %-8s %s" % (v["what"], v["value"], v["goal"], v["verdict"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"consume": consume_reps, "publish": publish_reps, "memory": memory, "verdicts": verdicts}, f)
    return 0 if all(v["verdict"] == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
