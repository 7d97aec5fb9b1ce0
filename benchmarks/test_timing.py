"""How long puka takes to notice failures, and what waiting costs: timings the test suite does not assert.

Run: ``python -m pytest benchmarks/test_timing.py --benchmark-only`` (a broker at ``AMQP_URL`` or
127.0.0.1:5672; the fault proxy and fake server of ``tests/faults.py``).  The tests check the
rules themselves (the peer is dead after two silent heartbeat intervals, the connect deadline is
``connection_timeout``...) against a fake clock; these measure, on the wall clock, what those
rules and the event loop amount to on this machine.  Each benchmark's time is the whole case;
``extra_info`` holds what to read next to it:

* ``dead-peer``: a peer stalls, heartbeats every second: from the stall to ``ConnectionBroken``
  in ``wait()``/``loop()`` (the rule: 2 s), and the process's CPU time over that wall time
  (near 0: the loop sleeps in ``poll`` between timers, no busy loop);
* ``idle``: a connection idle for 3 s with 1 s heartbeats: CPU over wall time, heartbeats sent;
* ``cut``: 5000 pipelined publishes, the link cut after 1000 confirms: from the cut to the last
  promise resolved (``cut_to_last_s``; reliability.rst says "within a second");
* ``connect-timeout``: a server that accepts and never answers (plain TCP, TLS): connect to
  ``ConnectionBroken`` against ``connection_timeout`` (0.5 s); ``cli-timeout`` the same through
  ``python -m puka --timeout 0.5`` (interpreter start included);
* ``push-back``: 1 MiB publishes into an upstream that reads nothing, up to just under
  ``PUBLISH_HIGH_WATER``: how fast they are queued (``mib_per_s``);
* ``protocol-violation``: from a malformed frame sent to every promise failed.

Nothing is asserted: a slow machine is not a failure, and the numbers go to the report.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
sys.path.insert(0, TESTS)

import faults  # noqa: E402
import tlsutil  # noqa: E402

import puka  # noqa: E402
from puka.tracing import FrameRecorder  # noqa: E402

AMQP_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
MiB = 1024 * 1024


@pytest.fixture
def proxies():
    """Fault proxies to the broker, closed after the benchmark."""
    made = []

    def make():
        params = puka.parse_amqp_url(AMQP_URL)
        proxy = faults.Proxy((params.host, params.port), params.vhost, params.username, params.password)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


class Clocks:
    """Wall and CPU time of a block (the whole process: the proxy's thread included)."""

    def __enter__(self) -> Clocks:
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def record(benchmark, name: str, values: list[float]) -> None:
    benchmark.extra_info[name + "_min"] = min(values)
    benchmark.extra_info[name + "_max"] = max(values)


@pytest.mark.parametrize("how", ["wait", "loop"])
def test_dead_peer(benchmark, proxies, how):
    detected, cpu_fraction = [], []

    def setup():
        proxy = proxies()
        client = puka.Client(proxy.url, heartbeat=1)
        client.wait(client.connect(), timeout=10)
        client.wait(client.basic_publish(exchange="", routing_key="nowhere", body=b"ready"), timeout=10)
        return (proxy, client), {}

    def stall_until_dead(proxy, client):
        with Clocks() as clocks:
            proxy.stall()
            publish = client.basic_publish(exchange="", routing_key="nowhere", body=b"never confirmed")
            try:
                if how == "wait":
                    client.wait(publish, timeout=30)
                else:
                    client.loop(timeout=30)
            except puka.ConnectionBroken:
                pass
        detected.append(clocks.wall)
        cpu_fraction.append(clocks.cpu / clocks.wall)

    benchmark.group = "timing: dead peer (heartbeat 1 s, rule 2 s)"
    benchmark.pedantic(stall_until_dead, setup=setup, rounds=3, iterations=1)
    record(benchmark, "detected_after_s", detected)
    record(benchmark, "cpu_fraction", cpu_fraction)


def test_idle(benchmark, proxies):
    cpu_fraction, beats = [], []

    def setup():
        recorder = FrameRecorder()
        client = puka.Client(proxies().url, heartbeat=1, middleware=[recorder])
        client.wait(client.connect(), timeout=10)
        return (client, recorder), {}

    def idle(client, recorder):
        with Clocks() as clocks:
            client.loop(timeout=3)
        cpu_fraction.append(clocks.cpu / clocks.wall)
        beats.append(sum(1 for f in recorder.frames if f.direction == "out" and f.name == "heartbeat"))
        client.wait(client.close(), timeout=10)

    benchmark.group = "timing: idle 3 s with heartbeats"
    benchmark.pedantic(idle, setup=setup, rounds=2, iterations=1)
    record(benchmark, "cpu_fraction", cpu_fraction)
    record(benchmark, "heartbeats_sent", beats)


def test_cut(benchmark, proxies):
    cut_to_last = []

    def setup():
        proxy = proxies()
        client = puka.Client(proxy.url)
        client.wait(client.connect(), timeout=10)
        queue = client.wait(client.queue_declare(exclusive=True), timeout=10)["queue"]
        proxy.throttle(400_000, "up")
        return (proxy, client, queue), {}

    def publish_and_cut(proxy, client, queue):
        state = {"confirmed": 0, "cut_at": None, "last": None, "results": 0}

        def on_result(number, result):
            state["results"] += 1
            state["last"] = time.perf_counter()
            if not result.is_error:
                state["confirmed"] += 1
            if state["cut_at"] is None and state["confirmed"] >= 1000:
                proxy.cut()
                state["cut_at"] = time.perf_counter()
            if state["results"] == 5000:
                client.loop_break()

        for i in range(5000):
            client.basic_publish(exchange="", routing_key=queue, body=b"m%d" % i, callback=on_result)
        client.loop(timeout=30)
        if state["cut_at"] is not None and state["last"] is not None:
            cut_to_last.append(state["last"] - state["cut_at"])

    benchmark.group = "timing: cut during 5000 pipelined publishes"
    benchmark.pedantic(publish_and_cut, setup=setup, rounds=3, iterations=1)
    if cut_to_last:
        record(benchmark, "cut_to_last_s", cut_to_last)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_connect_timeout(benchmark, transport):
    elapsed = []
    servers = []

    def setup():
        if transport == "tcp":
            server = faults.FakeServer(silent=True)
            url = server.url
        else:
            server = tlsutil.StalledTls()
            url = "amqps://localhost:%d/" % server.port
        servers.append(server)
        return (puka.Client(url, connection_timeout=0.5),), {}

    def connect(client):
        started = time.perf_counter()
        try:
            client.wait(client.connect(), timeout=30)
        except puka.ConnectionBroken:
            pass
        elapsed.append(time.perf_counter() - started)

    benchmark.group = "timing: connect to a silent server (connection_timeout 0.5 s)"
    try:
        benchmark.pedantic(connect, setup=setup, rounds=3, iterations=1)
    finally:
        for server in servers:
            server.close()
    benchmark.extra_info["connection_timeout"] = 0.5
    record(benchmark, "failed_after_s", elapsed)


def test_cli_timeout(benchmark):
    with socket.socket() as server:  # accepts TCP connections, never speaks AMQP
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        url = "amqp://guest:guest@127.0.0.1:%d/" % server.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.path.dirname(TESTS))
        command = [sys.executable, "-m", "puka", "--timeout", "0.5", "--url", url, "get", "q"]

        def run():
            subprocess.run(command, capture_output=True, timeout=60, env=env)

        benchmark.group = "timing: python -m puka --timeout 0.5 against a silent server"
        benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["timeout"] = 0.5


def test_push_back(benchmark, proxies):
    rates = []
    count = puka.client.PUBLISH_HIGH_WATER // MiB - 4  # just under the mark: no publish blocks
    body = b"m" * MiB

    def setup():
        proxy = proxies()
        client = puka.Client(proxy.url)
        client.wait(client.connect(), timeout=10)
        client.wait(client.basic_publish(exchange="", routing_key="nowhere", body=b"ready"), timeout=10)
        proxy.throttle(0, "up")
        return (proxy, client), {}

    def fill(proxy, client):
        started = time.perf_counter()
        for _ in range(count):
            client.basic_publish(exchange="", routing_key="nowhere", body=body)
        rates.append(count / (time.perf_counter() - started))
        proxy.cut()

    benchmark.group = "timing: queueing 1 MiB publishes up to the high-water mark"
    benchmark.pedantic(fill, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["publishes"] = count
    record(benchmark, "mib_per_s", rates)


def test_protocol_violation(benchmark):
    servers = []

    def setup():
        server = faults.FakeServer()
        servers.append(server)
        client = puka.Client(server.url)
        client.wait(client.connect(), timeout=10)
        promises = [client.basic_publish(exchange="", routing_key="q", body=b"in flight") for _ in range(100)]
        faults.pump(client, lambda: server.count("basic.publish") == 100, timeout=10)
        return (server, client, promises), {}

    def break_it(server, client, promises):
        server.send(faults.frame(7, 0, b"\x00\x00\x00\x00"))  # an unknown frame type
        for number in promises:
            client.wait(number, raise_errors=False, timeout=30)

    benchmark.group = "timing: malformed frame to 100 promises failed"
    try:
        benchmark.pedantic(break_it, setup=setup, rounds=5, iterations=1)
    finally:
        for server in servers:
            server.close()
