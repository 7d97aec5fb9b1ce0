#!/usr/bin/env python3
"""Benchmark: RPC round trips per second over direct reply-to, puka against pika and aio-pika.

Run with the dev venv; the peers (pika, aio-pika) live in a venv of their own, made on first use
(``--peers-venv``, default ``.peers/venv-rpc``; they are not puka's dependencies)::

    .venv/bin/python benchmarks/bench_rpc.py                 # 5 repetitions
    .venv/bin/python benchmarks/bench_rpc.py --reps 3 --json /tmp/rpc.json

One server answers every client: a puka process (``--serve``) consuming the request queue
(``no_ack``, prefetch 1000) and answering each request with ``rpc_reply`` (body echoed).  It runs
for the whole benchmark, so every client meets the same server, broker and machine.

Clients, each run in its own process, one after another in a shuffled order per repetition:

``puka``      ``Client.rpc_call`` (a confirmed, mandatory request; the reply resolves the promise);
``pika``      ``BlockingConnection``, a consumer of ``amq.rabbitmq.reply-to`` and
              ``basic_publish`` with ``reply_to``/``correlation_id`` on the same channel, as in
              RabbitMQ's RPC tutorial (no publisher confirms: what pika users write);
``aio-pika``  the RPC pattern of aio-pika's tutorial (a future per ``correlation_id``, resolved by
              the reply consumer), over direct reply-to, on a channel with publisher confirms
              (aio-pika's default: ``publish`` awaits the confirm).

Scenarios:

``sequential``  one call at a time: call, wait for the reply, call again;
``concurrent``  100 calls in flight at all times (puka: a window of promises, each reply making
                room for the next call; pika: the next request published from the reply callback;
                aio-pika: 100 tasks each making calls one after another).

Only the calls are timed (after 100 warm-up calls), not the connection nor the set-up.  Rates are
round trips per second of wall clock.  Ratios are computed per repetition, from runs made close in
time; the report gives their median, range and spread ((max - min) / median), for the rates and for
the client's CPU time per call (what the client itself costs, less sensitive to a busy machine).
Goals: puka >= 3x pika sequential, puka >= 5x aio-pika concurrent.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
REPLY_TO = "amq.rabbitmq.reply-to"
WINDOW = 100
WARM_UP = 100
#: (scenario, numerator, denominator) -> goal
GOALS = {("sequential", "puka", "pika"): 3.0, ("concurrent", "puka", "aio-pika"): 5.0}
#: calls per run (the slower clients make fewer: the rate, not the count, is compared)
CALLS = {
    ("puka", "sequential"): 5000,
    ("puka", "concurrent"): 30000,
    ("pika", "sequential"): 2000,
    ("pika", "concurrent"): 10000,
    ("aio-pika", "sequential"): 2000,
    ("aio-pika", "concurrent"): 6000,
}


# --- the server ----------------------------------------------------------------------------------


def serve(url: str, queue: str) -> None:
    sys.path.insert(0, ROOT)
    import puka

    client = puka.Client(url)
    client.wait(client.connect())
    client.wait(client.queue_declare(queue=queue))  # not auto-delete: it outlives a reconnect
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    def on_request(_promise: int, request: Any) -> None:
        if not request.is_error:
            client.rpc_reply(request, request["body"], callback=ignore)

    def ignore(_promise: int, _result: Any) -> None:
        pass

    client.basic_consume(queue=queue, prefetch_count=1000, no_ack=True, callback=on_request)
    print("ready", flush=True)
    while not stopping:
        client.loop(timeout=0.2)
    client.wait(client.queue_delete(queue=queue))
    client.shutdown(timeout=5)


# --- the clients (each runs in its own process) ----------------------------------------------------


def client_puka(url: str, queue: str, scenario: str, n: int) -> tuple[float, float]:
    sys.path.insert(0, ROOT)
    import puka

    client = puka.Client(url)
    client.wait(client.connect())
    body = b"x" * 100
    for _ in range(WARM_UP):
        client.wait(client.rpc_call("", queue, body))
    started, cpu = time.perf_counter(), time.process_time()
    if scenario == "sequential":
        for _ in range(n):
            client.wait(client.rpc_call("", queue, body))
    else:
        window = collections.deque(client.rpc_call("", queue, body) for _ in range(WINDOW))
        sent = WINDOW
        while window:
            client.wait(window.popleft())
            if sent < n:
                window.append(client.rpc_call("", queue, body))
                sent += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    client.wait(client.close())
    return seconds, cpu


def client_pika(url: str, queue: str, scenario: str, n: int) -> tuple[float, float]:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    body = b"x" * 100
    state = {"sent": 0, "done": 0, "limit": 0, "waiting": set()}

    def request() -> None:
        correlation_id = uuid.uuid4().hex
        state["waiting"].add(correlation_id)
        state["sent"] += 1
        properties = pika.BasicProperties(reply_to=REPLY_TO, correlation_id=correlation_id)
        channel.basic_publish(exchange="", routing_key=queue, body=body, properties=properties)

    def on_reply(_channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        state["waiting"].discard(properties.correlation_id)
        state["done"] += 1
        if state["sent"] < state["limit"]:
            request()  # concurrent: the reply makes room for the next call

    channel.basic_consume(queue=REPLY_TO, on_message_callback=on_reply, auto_ack=True)

    def run(calls: int, window: int) -> None:
        state.update(sent=0, done=0, limit=calls if window > 1 else 0)
        if window == 1:
            for _ in range(calls):
                request()
                while state["waiting"]:
                    connection.process_data_events(time_limit=None)
            return
        for _ in range(min(window, calls)):
            request()
        while state["done"] < calls:
            connection.process_data_events(time_limit=None)

    window = 1 if scenario == "sequential" else WINDOW
    run(WARM_UP, window)
    started, cpu = time.perf_counter(), time.process_time()
    run(n, window)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    connection.close()
    return seconds, cpu


def client_aio_pika(url: str, queue: str, scenario: str, n: int) -> tuple[float, float]:
    import asyncio

    import aio_pika

    async def main() -> tuple[float, float]:
        connection = await aio_pika.connect(url)
        channel = await connection.channel()  # publisher confirms on (the default)
        futures: dict[str, asyncio.Future[Any]] = {}
        loop = asyncio.get_running_loop()

        async def on_reply(message: Any) -> None:
            future = futures.pop(message.correlation_id, None)
            if future is not None:
                future.set_result(message.body)

        reply_queue = await channel.get_queue(REPLY_TO, ensure=False)
        await reply_queue.consume(on_reply, no_ack=True)
        body = b"x" * 100

        async def call() -> bytes:
            correlation_id = uuid.uuid4().hex
            future = futures[correlation_id] = loop.create_future()
            message = aio_pika.Message(body, correlation_id=correlation_id, reply_to=REPLY_TO)
            await channel.default_exchange.publish(message, routing_key=queue)
            return await future

        async def calls(count: int) -> None:
            for _ in range(count):
                await call()

        async def run(count: int) -> None:
            if scenario == "sequential":
                await calls(count)
            else:
                await asyncio.gather(*(calls(count // WINDOW) for _ in range(WINDOW)))

        await run(WARM_UP)
        started, cpu = time.perf_counter(), time.process_time()
        await run(n)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        await connection.close()
        return seconds, cpu

    return asyncio.run(main())


CLIENTS = {"puka": client_puka, "pika": client_pika, "aio-pika": client_aio_pika}


# --- the driver ---------------------------------------------------------------------------------------


def peers_python(path: str, setup: bool) -> str | None:
    """The python of the peers' venv (made when missing, with tools/bench.py's Venv); None when unusable."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    venv = bench.Venv(path, ["pika>=1.3", "aio-pika>=9"], ["pika", "aio_pika"])
    why = venv.ensure(setup)
    if why:
        print("peers unavailable: %s" % why, file=sys.stderr)
        return None
    return venv.python


def run_client(
    python: str, name: str, scenario: str, n: int, args: argparse.Namespace, queue: str
) -> tuple[float, float] | None:
    cmd = [python, os.path.abspath(__file__), "--client", name, "--scenario", scenario, "--n", str(n)]
    cmd += ["--url", args.url, "--queue", queue]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        # The broker is shared: a forced close or a restart can strand pika's and aio-pika's calls
        # (they do not recover); such runs, and those that fail for it, are left out.
        print(
            "  (%s %s: no answer within %gs, the broker was disturbed: run left out)" % (name, scenario, args.timeout)
        )
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        why = (done.stderr or done.stdout).strip().splitlines() or ["exit %d" % done.returncode]
        print("  (%s %s failed, run left out: %s)" % (name, scenario, why[-1][-300:]))
        return None
    result = json.loads(lines[-1])
    return float(result["seconds"]), float(result["cpu_seconds"])


def stats(values: list[float]) -> str:
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if median else 0.0
    return "%.2f [%.2f-%.2f] ±%.0f%%" % (median, min(values), max(values), 100 * spread)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=sorted(CLIENTS), help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=("sequential", "concurrent"), help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run's number of calls")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per client run (default %(default)s)")
    parser.add_argument("--peers-venv", default=os.path.join(ROOT, ".peers", "venv-rpc"))
    parser.add_argument("--no-setup", dest="setup", action="store_false", help="do not make the peers' venv")
    parser.add_argument("--json", metavar="PATH", help="write every run and the ratios here")
    args = parser.parse_args()
    if args.serve:
        serve(args.url, args.queue)
        return 0
    if args.client:
        seconds, cpu = CLIENTS[args.client](args.url, args.queue, args.scenario, args.n)
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}))
        return 0

    peers = peers_python(args.peers_venv, args.setup)
    pythons = {"puka": sys.executable}
    if peers:
        pythons.update({"pika": peers, "aio-pika": peers})
    queue = "bench-rpc-%s" % uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", "--url", args.url, "--queue", queue],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the server did not start")
        runs = [(name, scenario) for name in pythons for scenario in ("sequential", "concurrent")]
        rates: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        cpus: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        ratios: dict[tuple[str, str, str], list[float]] = {}
        cpu_ratios: dict[tuple[str, str, str], list[float]] = {}
        rng = random.Random()
        for rep in range(args.reps):
            rng.shuffle(runs)
            this = {}
            for name, scenario in runs:
                n = max(WINDOW, int(CALLS[name, scenario] * args.scale))
                timed = run_client(pythons[name], name, scenario, n, args, queue)
                if timed is None:
                    continue
                seconds, cpu = timed
                this[name, scenario] = rate = n / seconds
                rates[name, scenario].append(rate)
                cpus[name, scenario].append(1e6 * cpu / n)
                print(
                    "rep %d/%d %-8s %-10s %8.0f calls/s  %.2fs  client CPU %.0f µs/call"
                    % (rep + 1, args.reps, name, scenario, rate, seconds, cpus[name, scenario][-1]),
                    flush=True,
                )
            for scenario in ("sequential", "concurrent"):
                for other in ("pika", "aio-pika"):
                    if (other, scenario) in this and ("puka", scenario) in this:
                        key = (scenario, "puka", other)
                        ratios.setdefault(key, []).append(this["puka", scenario] / this[other, scenario])
                        # The client's CPU per call: what the client costs, less sensitive to a busy machine.
                        cpu_ratios.setdefault(key, []).append(cpus[other, scenario][-1] / cpus["puka", scenario][-1])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    print()
    print("RPC round trips per second, %d repetitions, %s CPUs; median [min-max] ±spread" % (args.reps, os.cpu_count()))
    for (name, scenario), values in sorted(rates.items()):
        if not values:
            continue
        print(
            "  %-8s %-10s %s calls/s   client CPU %s µs/call"
            % (name, scenario, stats([round(v) for v in values]), stats(cpus[name, scenario]))
        )
    print("ratios of calls per second (then of the client's CPU per call), paired per repetition:")
    for key, values in sorted(ratios.items()):
        goal = GOALS.get(key)
        verdict = "goal >= %g: %s" % (goal, "PASS" if statistics.median(values) >= goal else "MISS") if goal else ""
        print("  %-10s %s/%-8s %s  %s" % (key[0], key[1], key[2], stats(values), verdict))
    for key, values in sorted(cpu_ratios.items()):
        print("  %-10s %s/%-8s %s  (client CPU efficiency)" % (key[0], key[1], key[2], stats(values)))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "rates": {"%s %s" % k: v for k, v in rates.items()},
                    "cpu_us_per_call": {"%s %s" % k: v for k, v in cpus.items()},
                    "ratios": {"%s %s/%s" % k: v for k, v in ratios.items()},
                    "cpu_ratios": {"%s %s/%s" % k: v for k, v in cpu_ratios.items()},
                },
                out,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
