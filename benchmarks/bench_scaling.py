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
             every confirm, per publish; again with the garbage collector off during the timed
             part (``nogc``: what the growth with ``N`` owes to full collections).  Memory: in a
             process of its own per size, the ``N`` publishes are issued and written to the socket
             without reading anything back (so all are in flight for the client), under
             ``tracemalloc``: bytes still held, per publish.

``recover``  ``Q`` server-named exclusive queues (1, 1,000, 10,000), all consumed by one
             ``basic_consume_multi``, on a connection through a TCP proxy in this process
             (``tests/faults.py``); the proxy cuts the connection and the client recovers it: it
             declares every queue again (the broker names them anew), renames them, restarts the
             consumers.  The figure: the client thread's CPU time (``time.thread_time``: the
             proxy's thread is not in it) from the cut to the first publish confirmed after the
             recovery, per queue.  Each size once per process, in a shuffled order.

With ``PUKA_BENCH_PROFILE=1`` in the environment, a consume repetition prints a profile of each
case's timed loop on stderr.

Verdicts (PASS/MISS): a family is *flat* when the median over rounds of (CPU per message -- per
queue for ``recover`` -- of the largest size / of the smallest) is at most ``--flat`` (1.3x; ``*``
when the rounds straddle it);  for ``recover`` the smallest size compared is the second (one queue
is all fixed costs);
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
            order = [(size, collect) for size in sizes for collect in (True, False)]
            rng.shuffle(order)
            measured = {}
            for size, collect in order:
                gc.collect()
                if not collect:
                    gc.disable()
                try:
                    collections = gc.get_stats()[2]["collections"]
                    cpu = time.process_time()
                    wall = time.perf_counter()
                    numbers = [publish("", routing_key, BODY) for _ in range(size)]
                    for number in numbers:
                        client.wait(number)
                    elapsed_cpu = time.process_time() - cpu
                    elapsed = time.perf_counter() - wall
                    collections = gc.get_stats()[2]["collections"] - collections
                finally:
                    gc.enable()
                del numbers
                key = str(size) if collect else "%d nogc" % size
                measured[key] = {"cpu_us": elapsed_cpu / size * 1e6, "rate": size / elapsed, "full_gcs": collections}
                print("  publish %-12s %s" % (key, measured[key]), file=sys.stderr)
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


# --- recover: one repetition (a child process) -------------------------------------------------------------


class RecoveryWatcher(Middleware):
    def __init__(self) -> None:
        self.info: dict[str, Any] | None = None

    def on_recovered(self, client: Any, info: dict[str, Any]) -> None:
        self.info = info


def _recover_case(url: str, proxy: Any, count: int) -> dict[str, float]:
    watcher = RecoveryWatcher()
    client = _connect(proxy.url, middleware=[watcher])
    try:
        declares = [client.queue_declare(exclusive=True, auto_delete=True) for _ in range(count)]
        names = [client.wait(p, timeout=600)["queue"] for p in declares]
        consume = client.basic_consume_multi(names, prefetch_count=10)
        client.wait(client.basic_qos(consume, 10), timeout=600)  # every consumer started
        routing_key = _nowhere()
        client.wait(client.basic_publish("", routing_key, b"before"), timeout=60)
        gc.collect()
        cpu = time.thread_time()
        wall = time.perf_counter()
        proxy.cut()
        client.wait(client.basic_publish("", routing_key, b"after"), timeout=900)
        elapsed_cpu = time.thread_time() - cpu
        elapsed = time.perf_counter() - wall
        info = watcher.info
        if info is None or len(info["renamed"]) != count:
            raise RuntimeError("recovery renamed %r queues of %d" % (info and len(info["renamed"]), count))
        renamed = info["renamed"]
        client.wait(client.basic_cancel(consume), timeout=600)
        for start in range(0, count, 5000):
            batch = names[start : start + 5000]
            client.wait_for_all([client.queue_delete(renamed.get(q, q)) for q in batch], raise_errors=False)
        return {"cpu_us": elapsed_cpu / count * 1e6, "seconds": elapsed}
    finally:
        client.wait(client.close(), timeout=60)


def rep_recover(url: str, sizes: list[int], seed: int) -> dict[str, Any]:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from faults import Proxy

    params = puka.parse_amqp_url(url)
    order = list(sizes)
    random.Random(seed).shuffle(order)
    measured = {}
    with Proxy((params.host, params.port), params.vhost, params.username, params.password) as proxy:
        for size in order:
            measured[str(size)] = _recover_case(url, proxy, size)
            print("  recover %6d %s" % (size, measured[str(size)]), file=sys.stderr)
    return {"rounds": [measured]}


# --- the driver ----------------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--url", args.url, "--messages", str(args.messages)]
    command += ["--rounds", str(args.rounds), "--queues", args.queues, "--in-flight", args.in_flight]
    command += ["--recover", args.recover, *extra]
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
    parser.add_argument("--recover", default="1,1000,10000", help="recover: queue counts")
    parser.add_argument("--messages", type=int, default=20000, help="consume: messages per case")
    parser.add_argument("--only", choices=("consume", "publish", "recover"))
    parser.add_argument("--flat", type=float, default=1.3, help="largest / smallest CPU per message allowed")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    parser.add_argument("--json", help="write every measurement and the verdicts here")
    parser.add_argument("--child", choices=("consume", "publish", "memory", "recover"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    queue_sizes = [int(n) for n in args.queues.split(",")]
    flight_sizes = [int(n) for n in args.in_flight.split(",")]
    recover_sizes = [int(n) for n in args.recover.split(",")]
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    if args.child == "consume":
        print(json.dumps(rep_consume(args.url, queue_sizes, args.messages, args.rounds, seed)))
        return 0
    if args.child == "publish":
        print(json.dumps(rep_publish(args.url, flight_sizes, args.rounds, seed)))
        return 0
    if args.child == "recover":
        print(json.dumps(rep_recover(args.url, recover_sizes, seed)))
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
    recover_reps: list[dict[str, Any]] = []
    memory: dict[int, list[float]] = {n: [] for n in flight_sizes}
    for rep in range(args.reps):
        jobs: list[tuple[str, ...]] = []
        if args.only in (None, "consume"):
            jobs.append(("--child", "consume", "--seed", str(seed + rep)))
        if args.only in (None, "recover"):
            jobs.append(("--child", "recover", "--seed", str(seed + rep)))
        if args.only in (None, "publish"):
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
            elif job[1] == "recover":
                recover_reps.append(result)
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
        print(
            "%9s  %-22s  %-11s  %-9s  %-22s  %s"
            % ("in flight", "CPU us/publish", "publishes/s", "full GCs", "CPU us/publish, no GC", "bytes per publish")
        )
        for n in flight_sizes:
            rows = [r[str(n)] for r in rounds]
            nogc = [r["%d nogc" % n] for r in rounds]
            print(
                "%9d  %-22s  %-11.0f  %-9.0f  %-22s  %s"
                % (
                    n,
                    spread([r["cpu_us"] for r in rows]),
                    statistics.median(r["rate"] for r in rows),
                    statistics.median(r["full_gcs"] for r in rows),
                    spread([r["cpu_us"] for r in nogc]),
                    spread(memory[n]),
                )
            )
        ratios = [r[str(flight_sizes[-1])]["cpu_us"] / r[str(flight_sizes[0])]["cpu_us"] for r in rounds]
        what = "publish CPU/msg: %d / %d in flight" % (flight_sizes[-1], flight_sizes[0])
        verdicts.append(_verdict(what, ratios, args.flat))
        if len(flight_sizes) > 2:
            ratios = [r[str(flight_sizes[-1])]["cpu_us"] / r[str(flight_sizes[-2])]["cpu_us"] for r in rounds]
            what = "(info) publish CPU/msg: %d / %d in flight" % (flight_sizes[-1], flight_sizes[-2])
            verdicts.append(_verdict(what, ratios, args.flat))
        large, small = "%d nogc" % flight_sizes[-1], "%d nogc" % flight_sizes[0]
        ratios = [r[large]["cpu_us"] / r[small]["cpu_us"] for r in rounds]
        verdicts.append(_verdict("(info) the same, garbage collector off", ratios, args.flat))
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
    if recover_reps:
        rounds = [r for rep in recover_reps for r in rep["rounds"]]
        print()
        print(
            "recover: server-named exclusive queues, one basic_consume_multi, connection cut; %d rounds" % len(rounds)
        )
        print("%8s  %-24s  %s" % ("queues", "client CPU us/queue", "seconds to recover"))
        for n in recover_sizes:
            rows = [r[str(n)] for r in rounds]
            print("%8d  %-24s  %s" % (n, spread([r["cpu_us"] for r in rows]), spread([r["seconds"] for r in rows])))
        if len(recover_sizes) > 1:
            small = str(recover_sizes[1] if len(recover_sizes) > 2 else recover_sizes[0])
            ratios = [r[str(recover_sizes[-1])]["cpu_us"] / r[small]["cpu_us"] for r in rounds]
            what = "recover CPU/queue: %d / %s queues" % (recover_sizes[-1], small)
            verdicts.append(_verdict(what, ratios, args.flat))
    print()
    for v in verdicts:
        print("%-58s %-20s %-8s %s" % (v["what"], v["value"], v["goal"], v["verdict"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "consume": consume_reps,
                    "publish": publish_reps,
                    "recover": recover_reps,
                    "memory": memory,
                    "verdicts": verdicts,
                },
                f,
            )
    return 0 if all(v["verdict"] == "PASS" for v in verdicts if not v["what"].startswith("(info)")) else 1


if __name__ == "__main__":
    sys.exit(main())
