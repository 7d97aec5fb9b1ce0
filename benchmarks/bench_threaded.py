#!/usr/bin/env python3
"""Benchmark: confirmed publishing from 8 threads through one ``puka.threaded.Client``.

Run with the dev venv (pika's venv, ``.peers/venv-peers``, is made on first use, as ``tools/bench.py`` does)::

    .venv/bin/python benchmarks/bench_threaded.py                 # 5 repetitions
    .venv/bin/python benchmarks/bench_threaded.py --reps 3 --n 40000 --threads 8

Three runs per repetition, in a shuffled order, each in its own process:

``threaded``  one ``puka.threaded.Client``; each of ``--threads`` threads publishes its share of
              ``--n`` messages (confirmed), then waits for its own confirms;
``pika``      ``--threads`` threads, each with its own pika ``BlockingConnection`` and
              ``confirm_delivery`` (pika's answer to threads: one connection per thread), each
              publishing its share of ``--pika-n`` messages (pika waits for each confirm);
``single``    one thread, one ``puka.Client``, ``--n`` pipelined confirmed publishes (publish
              them all, then wait for every confirm), the rate the threads are held to.

Only the publishing is timed (threads start together at a barrier; connecting
and declaring are not timed).  Rates are messages per second of wall clock, all
threads together.  Ratios are computed per repetition from runs made close in
time; the report gives their median and range, and each rate's spread
((max - min) / median).  Goals: threaded >= 5x pika, threaded >= 0.7x single.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
GOALS = {"threaded/pika": 5.0, "threaded/single": 0.7}


# --- the workers (each runs in its own process) ---------------------------------------------------


def _timed_threads(threads: int, work: Any, setup: Any) -> float:
    """Run ``work(i, state)`` in ``threads`` threads started together; seconds until all are done."""
    states = [setup(i) for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            work(i, states[i])
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return seconds


def worker_threaded(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, ROOT)
    import puka.threaded

    client = puka.threaded.Client(args.url)
    client.wait(client.connect())
    queue = "bench-threaded-%s" % uuid.uuid4().hex[:8]
    client.wait(client.queue_declare(queue=queue))
    body = b"x" * args.size
    share = args.n // args.threads

    def work(_i: int, _state: None) -> None:
        promises = [client.basic_publish(exchange="", routing_key=queue, body=body) for _ in range(share)]
        for promise in promises:
            client.wait(promise)

    cpu = time.process_time()
    seconds = _timed_threads(args.threads, work, lambda i: None)
    cpu = time.process_time() - cpu
    queued = client.wait(client.queue_declare(queue=queue, passive=True))["message_count"]
    client.wait(client.queue_delete(queue=queue))
    client.wait(client.close())
    return {"count": share * args.threads, "seconds": seconds, "cpu_seconds": cpu, "queued": queued}


def worker_single(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, ROOT)
    import puka

    client = puka.Client(args.url)
    client.wait(client.connect())
    queue = "bench-single-%s" % uuid.uuid4().hex[:8]
    client.wait(client.queue_declare(queue=queue))
    body = b"x" * args.size
    cpu = time.process_time()
    started = time.perf_counter()
    promises = [client.basic_publish(exchange="", routing_key=queue, body=body) for _ in range(args.n)]
    for promise in promises:
        client.wait(promise)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    client.wait(client.queue_delete(queue=queue))
    client.wait(client.close())
    return {"count": args.n, "seconds": seconds, "cpu_seconds": cpu}


def worker_pika(args: argparse.Namespace) -> dict[str, Any]:
    import pika

    queue = "bench-pika-%s" % uuid.uuid4().hex[:8]
    body = b"x" * args.size
    share = args.n // args.threads

    def setup(_i: int) -> Any:
        connection = pika.BlockingConnection(pika.URLParameters(args.url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue=queue)
        return connection, channel

    def work(_i: int, state: Any) -> None:
        _connection, channel = state
        for _ in range(share):
            channel.basic_publish(exchange="", routing_key=queue, body=body)

    states: list[Any] = []

    def keep(i: int) -> Any:
        states.append(setup(i))
        return states[-1]

    cpu = time.process_time()
    seconds = _timed_threads(args.threads, work, keep)
    cpu = time.process_time() - cpu
    connection, channel = states[0]
    queued = channel.queue_declare(queue=queue, passive=True).method.message_count
    channel.queue_delete(queue=queue)
    for connection, _channel in states:
        connection.close()
    return {"count": share * args.threads, "seconds": seconds, "cpu_seconds": cpu, "queued": queued}


WORKERS = {"threaded": worker_threaded, "single": worker_single, "pika": worker_pika}


# --- the driver ---------------------------------------------------------------------------------------


def peers_python(setup: bool) -> str | None:
    """The python of pika's venv (tools/bench.py's), made when missing; None when it cannot be."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    why = bench.VENV_PEERS.ensure(setup)
    if why:
        print("pika unavailable: %s" % why, file=sys.stderr)
        return None
    return str(bench.VENV_PEERS.python)


def run(python: str, variant: str, args: argparse.Namespace, n: int) -> dict[str, Any]:
    cmd = [python, os.path.abspath(__file__), "--worker", variant, "--n", str(n)]
    cmd += ["--threads", str(args.threads), "--size", str(args.size), "--url", args.url]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RuntimeError("%s failed: %s" % (variant, (done.stderr or done.stdout).strip()[-2000:]))
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def stats(values: list[float]) -> str:
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if median else 0.0
    return "%.2f [%.2f-%.2f] ±%.0f%%" % (median, min(values), max(values), 100 * spread)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--n", type=int, default=80000, help="messages of threaded and single (default %(default)s)")
    parser.add_argument("--pika-n", type=int, default=8000, help="messages of pika (default %(default)s)")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-setup", dest="setup", action="store_false", help="do not make pika's venv")
    parser.add_argument("--json", metavar="PATH", help="write every run and the ratios here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(dict(WORKERS[args.worker](args), variant=args.worker)))
        return 0

    pika_python = peers_python(args.setup)
    variants = {"threaded": (sys.executable, args.n), "single": (sys.executable, args.n)}
    if pika_python:
        variants["pika"] = (pika_python, args.pika_n)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {}
    runs = []
    rng = random.Random()
    for rep in range(args.reps):
        order = list(variants)
        rng.shuffle(order)
        this = {}
        for variant in order:
            python, n = variants[variant]
            result = run(python, variant, args, n)
            runs.append(dict(result, rep=rep))
            if result.get("queued", result["count"]) != result["count"]:
                # The broker is shared: a restart (non-durable queue lost) or a forced close
                # (recovery re-sends unconfirmed publishes) happened during the run.
                print(
                    "  (%s: %d messages in its queue for %d confirmed: the broker was disturbed)"
                    % (variant, result["queued"], result["count"])
                )
            rate = result["count"] / result["seconds"]
            this[variant] = rate
            rates[variant].append(rate)
            cpus[variant].append(1e6 * result["cpu_seconds"] / result["count"])
            print(
                "rep %d/%d %-9s %9.0f msgs/s  %.2fs  CPU %.1f µs/msg"
                % (rep + 1, args.reps, variant, rate, result["seconds"], cpus[variant][-1]),
                flush=True,
            )
        for num, den in (("threaded", "pika"), ("threaded", "single"), ("single", "pika")):
            if num in this and den in this:
                ratios.setdefault("%s/%s" % (num, den), []).append(this[num] / this[den])
                # CPU efficiency (messages per CPU-second of the client): less sensitive to a busy machine
                ratios.setdefault("%s/%s CPU" % (num, den), []).append(cpus[den][-1] / cpus[num][-1])
    print()
    print(
        "%d threads, %d B messages, %d repetitions, %s CPUs; median [min-max] ±spread"
        % (args.threads, args.size, args.reps, os.cpu_count())
    )
    for variant in variants:
        print("  %-9s %s msgs/s   CPU %s µs/msg" % (variant, stats(rates[variant]), stats(cpus[variant])))
    print("ratios (throughput, then CPU efficiency), paired per repetition:")
    for name, values in sorted(ratios.items(), key=lambda item: item[0].endswith("CPU")):
        goal = GOALS.get(name)
        verdict = ""
        if goal is not None:
            verdict = "goal >= %g: %s" % (goal, "PASS" if statistics.median(values) >= goal else "MISS")
        print("  %-16s %s  %s" % (name, stats(values), verdict))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"runs": runs, "ratios": ratios, "rates": rates}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
