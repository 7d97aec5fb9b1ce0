"""Connection recovery against the real RabbitMQ: the contract of docs/reliability.rst, "Recovery: surviving a
lost connection", with the synchronous client (tests/test_recovery_asyncio.py runs the core scenarios on
puka.asyncio).

What a broker can do, the broker does (``rabbitmqctl close_connection``, ``close_all_connections``,
``delete_user``, ``stop_app``); :class:`faults.Proxy` only for what it cannot (a TCP cut, a stall).  Only the
public API: promises are watched through callbacks (so each result is counted: exactly once), the wire through
:class:`puka.tracing.FrameRecorder`, the broker's side through ``rabbitmqctl``.

The loss check of a traffic test (:class:`Traffic`) publishes through a fanout exchange to two queues: one is
consumed (every message must reach the consumer: nothing confirmed is lost), the other is only counted at the
end (its message count is the number of copies the broker took: the duplicates, at most the publishes
unconfirmed when the connection was lost).  Those queues are neither exclusive nor auto-delete: the broker
deletes such queues, with their messages, when the connection goes.

No duration is asserted: conditions are waited for with generous ceilings (:data:`PATIENCE`), and the
recovery settings are small (:func:`fast`) so that backoff and deadlines pass quickly.
"""

from __future__ import annotations

import gc
import re
import socket
import subprocess
import threading
import time
import tracemalloc
import uuid
from collections import Counter, defaultdict

import pytest
from faults import Proxy, fd_count, wait_until

import puka
from puka.tracing import FrameRecorder, Middleware

pytestmark = pytest.mark.timeout(120)

#: Seconds to wait for anything the broker or a recovery does: a ceiling, never a measure of speed.
PATIENCE = 30
#: The keys of on_recovered's info (documented in puka.tracing.Middleware.on_recovered).
INFO_KEYS = {"host", "outage_seconds", "attempts", "republished", "renamed"}


def fast(**settings) -> puka.Recovery:
    """Recovery settings that let time pass quickly (backoff); a deadline that ends a stuck test."""
    return puka.Recovery(**{"initial_delay": 0.01, "max_delay": 0.1, "deadline": float(PATIENCE), **settings})


# --- rabbitmqctl ------------------------------------------------------------------------------------


def ctl(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise AssertionError("rabbitmqctl %s failed: %s %s" % (" ".join(args), done.stdout, done.stderr))
    return done.stdout


def ctl_rows(*args: str) -> list[list[str]]:
    """The rows of a rabbitmqctl listing (no header), each a list of its tab-separated columns."""
    out = ctl("-s", *args)
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def connection_pids(name: str, prefix: bool = False) -> list[str]:
    """The broker's pids of the connections named ``name`` (client property connection_name)."""
    pattern = re.compile(r'\{"connection_name","%s%s"\}' % (re.escape(name), r"[^\"]*" if prefix else ""))
    return [row[0] for row in ctl_rows("list_connections", "pid", "client_properties") if pattern.search(row[1])]


def consumers_of(queue: str) -> list[tuple[str, int]]:
    """(consumer tag, prefetch count) of each consumer of ``queue``, as the broker sees them."""
    rows = ctl_rows("list_consumers", "-p", "/", "queue_name", "consumer_tag", "prefetch_count")
    return sorted((row[1], int(row[2])) for row in rows if row[0] == queue)


def bindings_to(*queues: str) -> list[tuple[str, str, str]]:
    """(queue, source exchange, routing key) of each binding of the ``queues`` but the default exchange's."""
    rows = ctl_rows("list_bindings", "-p", "/", "source_name", "destination_name", "destination_kind", "routing_key")
    return sorted((row[1], row[0], row[3]) for row in rows if row[1] in queues and row[2] == "queue" and row[0])


def queue_exists(url: str, queue: str) -> bool:
    with puka.Client(url, recovery=False) as client:
        result = client.wait(client.queue_declare(queue, passive=True), timeout=PATIENCE, raise_errors=False)
    assert result is not None
    if result.is_error and isinstance(result.exception, puka.ResourceLocked):
        return True  # an exclusive queue of another connection
    if result.is_error:
        assert isinstance(result.exception, puka.NotFound), result.exception
        return False
    return True


def closed_port() -> int:
    """A local TCP port nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- watching a client ---------------------------------------------------------------------------------


class Hooks(Middleware):
    """Records the recovery hooks (``events``: ('lost', exc) / ('recovered', info)) and on_close.

    ``when_lost`` (optional) runs inside on_connection_lost: e.g. resume a stalled proxy.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, object]] = []
        self.closed = 0
        self.when_lost = None

    def on_connection_lost(self, client, exc) -> None:
        self.events.append(("lost", exc))
        if self.when_lost is not None:
            self.when_lost()

    def on_recovered(self, client, info) -> None:
        self.events.append(("recovered", info))

    def on_close(self, client) -> None:
        self.closed += 1

    @property
    def lost(self) -> list:
        return [what for kind, what in self.events if kind == "lost"]

    @property
    def recovered(self) -> list:
        return [what for kind, what in self.events if kind == "recovered"]

    @property
    def in_outage(self) -> bool:
        return bool(self.events) and self.events[-1][0] == "lost"


class Watch(Hooks, FrameRecorder):
    """Hooks and every frame; ``when_frame(frame)`` (optional) runs for each one."""

    def __init__(self) -> None:
        super().__init__()
        self.when_frame = None

    def on_frame(self, frame) -> None:
        super().on_frame(frame)
        if self.when_frame is not None:
            self.when_frame(frame)

    def out(self, name: str, start: int = 0) -> list:
        return [f for f in self.frames[start:] if f.direction == "out" and f.name == name]

    def connection_starts(self) -> list[int]:
        """Indexes of the protocol headers sent: where each connection's frames begin."""
        return [i for i, f in enumerate(self.frames) if f.direction == "out" and f.frame_type == 0]


def stale_settlements(frames) -> list:
    """Settlements on the wire that name a delivery tag not delivered on that connection and channel, or one
    already settled there: a stale settlement (or a double one).  Each connection starts at its protocol header,
    each channel (delivery tags start again) at its channel.open."""
    problems = []
    delivered: set[tuple[int, int]] = set()
    settled: set[tuple[int, int]] = set()
    for frame in frames:
        if frame.direction == "out" and frame.frame_type == 0:
            delivered, settled = set(), set()
        elif frame.method is None:
            continue
        elif frame.direction == "out" and frame.name == "channel.open":
            delivered = {k for k in delivered if k[0] != frame.channel}
            settled = {k for k in settled if k[0] != frame.channel}
        elif frame.direction == "in" and frame.name in ("basic.deliver", "basic.get-ok"):
            delivered.add((frame.channel, frame.method["delivery_tag"]))
        elif frame.direction == "out" and frame.name in ("basic.ack", "basic.nack", "basic.reject"):
            key = (frame.channel, frame.method["delivery_tag"])
            if frame.method.get("multiple"):
                tags = {k for k in delivered if k[0] == key[0] and k[1] <= key[1]} - settled
            else:
                tags = {key}
            if key not in delivered or (not frame.method.get("multiple") and key in settled):
                problems.append(frame)
            settled |= tags
    return problems


class Results:
    """A callback for promises: keeps every result of every promise (so "exactly once" can be checked)."""

    def __init__(self) -> None:
        self.by_promise: dict[int, list] = defaultdict(list)

    def __call__(self, number: int, result) -> None:
        self.by_promise[number].append(result)

    def has(self, *numbers: int) -> bool:
        return all(self.by_promise.get(n) for n in numbers)

    def one(self, number: int):
        """The promise's only result (fails unless it has exactly one)."""
        results = self.by_promise.get(number, [])
        assert len(results) == 1, "promise %d has %d results: %r" % (number, len(results), results)
        return results[0]

    def error(self, number: int) -> BaseException:
        result = self.one(number)
        assert result.is_error, "promise %d did not fail: %r" % (number, result)
        return result.exception

    def ok(self, number: int):
        result = self.one(number)
        assert not result.is_error, "promise %d failed: %r" % (number, result.exception)
        return result

    def messages(self, number: int) -> list:
        return [r for r in self.by_promise.get(number, []) if not r.is_error]

    def errors(self, number: int) -> list:
        return [r.exception for r in self.by_promise.get(number, []) if r.is_error]


class Traffic:
    """Confirmed publishes kept in flight, and a consumer acking: see the module docstring for the loss check.

    The publisher keeps ``window`` publishes unconfirmed (a new one goes out from each confirm's callback, and
    at each step of :func:`drive` / ``until``), at most ``rate`` a second, up to ``total`` (None: until
    ``stop()``).  ``snapshot()`` (from on_connection_lost) adds the publishes
    unconfirmed at that moment to ``unconfirmed_at_loss``: the most duplicates allowed.  Driven by callbacks
    only, so the same object serves the synchronous and the asyncio client.
    """

    #: the traffic publishing now (the drivers top them up at each step)
    running: list[Traffic] = []

    def __init__(
        self, client, name: str, cleanup, window: int = 50, durable: bool = False, total=None, rate: float = 2000
    ) -> None:
        self.client = client
        self.rate = rate
        self.started = 0.0
        self.exchange = name + "-x"
        self.consumed = name + "-consumed"
        self.counted = name + "-counted"
        cleanup.exchanges.append(self.exchange)
        cleanup.queues += [self.consumed, self.counted]
        self.durable = durable
        self.headers = {"delivery_mode": 2} if durable else None
        self.window = window
        self.total = total
        self.publishing = False
        self.sent: dict[int, int] = {}  # promise -> message index
        self.outcomes: dict[int, list] = defaultdict(list)
        self.received: Counter = Counter()  # message index -> deliveries
        self.redelivered = 0
        self.tags: set[str] = set()
        self.consume_errors: list = []
        self.unconfirmed_at_loss = 0
        self.consume: int | None = None

    def declarations(self) -> list:
        """The operations that set the traffic up, to run in this order (each waited for)."""
        c, durable = self.client, self.durable
        return [
            lambda: c.exchange_declare(self.exchange, "fanout", durable=durable),
            lambda: c.queue_declare(self.consumed, durable=durable),
            lambda: c.queue_declare(self.counted, durable=durable),
            lambda: c.queue_bind(self.consumed, self.exchange),
            lambda: c.queue_bind(self.counted, self.exchange),
        ]

    def setup(self) -> None:
        """Declare and start consuming (synchronous client)."""
        for declare in self.declarations():
            self.client.wait(declare(), timeout=PATIENCE)
        self.start_consuming()

    def start_consuming(self) -> None:
        self.consume = self.client.basic_consume(self.consumed, prefetch_count=20, callback=self.on_message)

    def on_message(self, number: int, message) -> None:
        if message.is_error:
            self.consume_errors.append(message.exception)
            return
        self.received[int(message["body"].split(b" ")[0])] += 1
        self.tags.add(message["consumer_tag"])
        self.redelivered += bool(message["redelivered"])
        self.client.basic_ack(message)

    def on_confirm(self, number: int, result) -> None:
        self.outcomes[number].append(result)
        self.top_up()

    def start(self) -> None:
        self.publishing = True
        self.started = time.monotonic()
        Traffic.running.append(self)
        self.top_up()

    def stop(self) -> None:
        self.publishing = False
        if self in Traffic.running:
            Traffic.running.remove(self)

    def top_up(self) -> None:
        while self.publishing and self.unconfirmed < self.window:
            index = len(self.sent)
            if self.total is not None and index >= self.total:
                self.stop()
                return
            if index >= self.rate * (time.monotonic() - self.started):
                return
            body = b"%d %s" % (index, b"." * 64)
            try:
                number = self.client.basic_publish(
                    self.exchange, "", body, headers=self.headers, callback=self.on_confirm
                )
            except puka.ConnectionBroken:  # closed for good: the test finds out from the promises
                self.stop()
                return
            self.sent[number] = index

    @property
    def unconfirmed(self) -> int:
        return len(self.sent) - len(self.outcomes)

    @property
    def confirmed(self) -> int:
        return len(self.outcomes)

    def snapshot(self) -> None:
        self.unconfirmed_at_loss += self.unconfirmed

    def settled(self) -> bool:
        """Every publish resolved and every message published consumed."""
        return (
            not self.publishing
            and len(self.outcomes) == len(self.sent)
            and all(index in self.received for index in range(len(self.sent)))
        )

    def verify(self, counted: int) -> None:
        """The contract, once settled; ``counted``: the message count of the counted queue."""
        published = len(self.sent)
        assert published, "nothing was published"
        wrong = {n: r for n, r in self.outcomes.items() if len(r) != 1 or r[0].is_error}
        assert not wrong, "publishes not confirmed exactly once: %r" % dict(list(wrong.items())[:5])
        assert set(self.outcomes) == set(self.sent)
        missing = [i for i in range(published) if i not in self.received]
        assert not missing, "confirmed messages never consumed: %r" % missing[:20]
        assert published <= counted <= published + self.unconfirmed_at_loss, (
            "the broker took %d copies of %d messages, %d unconfirmed at the loss"
            % (counted, published, self.unconfirmed_at_loss)
        )
        assert not self.consume_errors, self.consume_errors
        assert len(self.tags) == 1, "deliveries came with several consumer tags: %r" % self.tags

    @property
    def tag(self) -> str:
        return next(iter(self.tags))


# --- driving a client --------------------------------------------------------------------------------


def drive(client, until, timeout: float = PATIENCE) -> bool:
    """Run the client's loop (every callback) until ``until()``; False when ``timeout`` passes first.

    A client that is closed for good has nothing to run: its remaining callbacks run, then ``until()`` decides.
    (``loop`` drops the results of promises without a callback: give one to every promise driven so.)
    """
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() >= deadline:
            return False
        for traffic in list(Traffic.running):
            traffic.top_up()
        try:
            client.loop(timeout=0.01)
        except puka.ConnectionBroken:
            client.run_any_callbacks()
            return bool(until())
    return True


def message_count(client, queue: str) -> int:
    return client.wait(client.queue_declare(queue, passive=True), timeout=PATIENCE)["message_count"]


class Cleanup:
    def __init__(self) -> None:
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.clients: list = []


@pytest.fixture
def cleanup(amqp_url):
    """Queues and exchanges to delete after the test, and clients to close."""
    yield from cleaning_up(amqp_url)


def cleaning_up(amqp_url):
    """The cleanup fixture's body (shared with tests/test_recovery_asyncio.py)."""
    todo = Cleanup()
    yield todo
    Traffic.running.clear()
    for client in todo.clients:
        try:
            client.__exit__(None, None, None)  # closes it unless the test did (or broke it)
        except Exception:  # noqa: S110
            pass
    if todo.queues or todo.exchanges:
        with puka.Client(amqp_url, recovery=False) as other:
            promises = [other.queue_delete(q) for q in todo.queues]
            promises += [other.exchange_delete(e) for e in todo.exchanges]
            for promise in promises:
                other.wait(promise, timeout=PATIENCE, raise_errors=False)


def connect(url: str, name: str, cleanup, recovery=None, **kwargs) -> puka.Client:
    client = puka.Client(
        url,
        recovery=fast() if recovery is None else recovery,
        client_properties={"connection_name": name},
        **kwargs,
    )
    cleanup.clients.append(client)
    client.wait(client.connect(), timeout=PATIENCE)
    return client


def check_recovered_once(watch: Hooks) -> dict:
    assert [kind for kind, _ in watch.events] == ["lost", "recovered"], watch.events
    info = watch.recovered[0]
    assert set(info) == INFO_KEYS
    return info


def check_consumer_restored(queue: str, tag: str, prefetch: int | None = None) -> None:
    """One consumer on the queue, with the same tag (the broker may take a moment to drop an old connection's)."""
    expected = [tag] if prefetch is None else [(tag, prefetch)]

    def seen():
        found = consumers_of(queue)
        return [t for t, _p in found] if prefetch is None else found

    assert wait_until(lambda: seen() == expected, timeout=PATIENCE, interval=0.2), (seen(), expected)


# --- 1. a TCP cut during pipelined confirmed publishes -------------------------------------------


def test_a_cut_during_pipelined_confirmed_publishes_loses_nothing_and_resumes_the_consumer(proxy, cleanup, name):
    watch = Watch()
    client = connect(proxy.url, name, cleanup, middleware=[watch])
    traffic = Traffic(client, name, cleanup, window=200, total=1500)
    traffic.setup()
    watch.when_lost = traffic.snapshot
    proxy.throttle(20000, "up")  # the publishes trickle out: many are in flight at the cut
    traffic.start()
    assert drive(client, lambda: traffic.confirmed >= 20 and traffic.received)
    confirmed_at_cut = traffic.confirmed
    proxy.cut()
    proxy.throttle(None)
    assert drive(client, traffic.settled), (traffic.confirmed, len(traffic.sent))
    assert confirmed_at_cut < len(traffic.sent)  # the premise: publishes were in flight
    traffic.verify(message_count(client, traffic.counted))
    info = check_recovered_once(watch)
    assert 0 < info["republished"] <= traffic.unconfirmed_at_loss
    assert isinstance(watch.lost[0], puka.ConnectionBroken)
    check_consumer_restored(traffic.consumed, traffic.tag)
    assert not stale_settlements(watch.frames)
    assert len(watch.connection_starts()) == 2


# --- 2. a stall, noticed by heartbeats -------------------------------------------------------------


def test_a_stall_noticed_by_heartbeats_is_recovered(proxy, cleanup, name):
    watch = Watch()
    client = connect(proxy.url, name, cleanup, heartbeat=1, middleware=[watch])
    traffic = Traffic(client, name, cleanup, window=50)
    traffic.setup()

    def lost():
        traffic.snapshot()
        proxy.resume()  # the new connection must get through (a stall holds every proxied connection)

    watch.when_lost = lost
    traffic.start()
    assert drive(client, lambda: traffic.confirmed >= 50 and traffic.received)
    proxy.stall()
    assert drive(client, lambda: watch.recovered)
    assert "heartbeat" in str(watch.lost[0]) and isinstance(watch.lost[0], puka.ConnectionBroken)
    more = len(traffic.sent) + 100
    assert drive(client, lambda: traffic.confirmed >= more)
    traffic.stop()
    assert drive(client, traffic.settled)
    traffic.verify(message_count(client, traffic.counted))
    check_recovered_once(watch)
    check_consumer_restored(traffic.consumed, traffic.tag)
    assert not stale_settlements(watch.frames)


# --- 3. rabbitmqctl close_connection (320 CONNECTION_FORCED) ------------------------------------------


def test_a_connection_closed_by_the_broker_is_recovered(amqp_url, cleanup, name):
    watch = Watch()
    client = connect(amqp_url, name, cleanup, middleware=[watch])
    traffic = Traffic(client, name, cleanup, window=20)
    traffic.setup()
    watch.when_lost = traffic.snapshot
    traffic.start()
    assert drive(client, lambda: traffic.confirmed >= 20 and traffic.received)
    [pid] = connection_pids(name)
    closer = threading.Thread(target=ctl, args=("close_connection", pid, "recovery test: go away"))
    closer.start()
    try:
        assert drive(client, lambda: watch.recovered)
    finally:
        closer.join()
    exc = watch.lost[0]
    assert getattr(exc, "reply_code", None) == 320 and "recovery test: go away" in str(exc), exc
    more = len(traffic.sent) + 100
    assert drive(client, lambda: traffic.confirmed >= more)
    traffic.stop()
    assert drive(client, traffic.settled)
    traffic.verify(message_count(client, traffic.counted))
    check_recovered_once(watch)
    check_consumer_restored(traffic.consumed, traffic.tag)
    assert not stale_settlements(watch.frames)
    assert len(connection_pids(name)) == 1


# --- 4. rabbitmqctl close_all_connections, many clients ---------------------------------------------


def test_every_client_recovers_when_the_broker_closes_all_connections(amqp_url, cleanup, name):
    count = 20
    clients = []  # (client, hooks, results, queue, consume promise, publishes before the close)
    for i in range(count):
        hooks, results, queue = Hooks(), Results(), "%s-%d" % (name, i)
        client = connect(amqp_url, queue, cleanup, middleware=[hooks])
        cleanup.queues.append(queue)
        client.wait(client.queue_declare(queue), timeout=PATIENCE)
        consume = client.basic_consume(queue, callback=results)
        before = [client.basic_publish("", queue, b"before %d" % j, callback=results) for j in range(10)]
        clients.append((client, hooks, results, queue, consume, before))
    assert len(connection_pids(name + "-", prefix=True)) == count
    closer = threading.Thread(target=ctl, args=("close_all_connections", "-p", "/", "recovery test: everybody out"))
    closer.start()
    try:
        for client, hooks, *_ in clients:
            assert drive(client, lambda h=hooks: h.recovered), "a client did not recover"
    finally:
        closer.join()
    wanted = {b"before %d" % j for j in range(10)} | {b"after"}
    for client, hooks, results, queue, consume, before in clients:
        after = client.basic_publish("", queue, b"after", callback=results)

        def bodies(results=results, consume=consume):
            return {m["body"] for m in results.messages(consume)}

        assert drive(client, lambda: bodies() >= wanted and results.has(*before, after)), bodies()  # noqa: B023
        for promise in [*before, after]:
            results.ok(promise)
        assert not results.errors(consume)
        check_recovered_once(hooks)
        assert getattr(hooks.lost[0], "reply_code", None) == 320
    assert wait_until(lambda: len(connection_pids(name + "-", prefix=True)) == count, timeout=PATIENCE, interval=0.2)


# --- 6. a second fault while the topology is replayed ----------------------------------------------------


@pytest.mark.parametrize("cut_at", ["connection.open", "queue.bind", "basic.consume"])
def test_a_second_cut_during_the_replay_restores_each_consumer_and_binding_once(proxy, cleanup, name, cut_at):
    watch = Watch()
    client = connect(proxy.url, name, cleanup, middleware=[watch])
    traffic = Traffic(client, name, cleanup, window=50)
    traffic.setup()
    watch.when_lost = traffic.snapshot
    second_cuts = []

    def cut_during_replay(frame):
        if frame.direction == "out" and frame.name == cut_at and watch.in_outage and not second_cuts:
            second_cuts.append(frame)
            proxy.cut()

    watch.when_frame = cut_during_replay
    traffic.start()
    assert drive(client, lambda: traffic.confirmed >= 50 and traffic.received)
    proxy.cut()
    assert drive(client, lambda: watch.recovered)
    assert second_cuts, "the replay never sent %s" % cut_at
    more = len(traffic.sent) + 100
    assert drive(client, lambda: traffic.confirmed >= more)
    traffic.stop()
    assert drive(client, traffic.settled)
    traffic.verify(message_count(client, traffic.counted))
    check_recovered_once(watch)  # one outage, however many attempts
    assert watch.recovered[0]["attempts"] >= 2
    check_consumer_restored(traffic.consumed, traffic.tag)
    assert bindings_to(traffic.consumed, traffic.counted) == sorted(
        [(traffic.consumed, traffic.exchange, ""), (traffic.counted, traffic.exchange, "")]
    )
    assert not stale_settlements(watch.frames)
    # The last connection declared each binding and started the consumer once.
    last = watch.connection_starts()[-1]
    assert len(watch.out("queue.bind", last)) == 2
    assert len(watch.out("basic.consume", last)) == 1


# --- 7. a queue deleted by another client during the outage --------------------------------------------


def test_a_queue_deleted_by_another_client_during_the_outage_fails_only_its_consume(proxy, amqp_url, cleanup, name):
    other = connect(amqp_url, name + "-other", cleanup)
    foreign, own = name + "-foreign", name + "-own"
    cleanup.queues += [foreign, own]
    other.wait(other.queue_declare(foreign), timeout=PATIENCE)
    watch, results = Watch(), Results()
    client = connect(proxy.url, name, cleanup, middleware=[watch])
    client.wait(client.queue_declare(own), timeout=PATIENCE)
    lost_consume = client.basic_consume(foreign, callback=results)
    kept_consume = client.basic_consume(own, callback=results)
    before = [client.basic_publish("", q, b"before", callback=results) for q in (foreign, own)]
    assert drive(client, lambda: len(results.messages(lost_consume)) == 1 and results.messages(kept_consume))
    for consume in (lost_consume, kept_consume):
        client.basic_ack(results.messages(consume)[0])
    client.wait(client.queue_declare(own, passive=True), timeout=PATIENCE)  # the acks go out before the cut
    proxy.stall()  # the next connection waits until the queue is gone
    proxy.cut()
    other.wait(other.queue_delete(foreign), timeout=PATIENCE)
    during = client.basic_publish("", own, b"during", callback=results)
    proxy.resume()
    assert drive(client, lambda: watch.recovered and results.errors(lost_consume))
    assert drive(client, lambda: len(results.messages(kept_consume)) == 2 and results.has(during))
    [error] = results.errors(lost_consume)
    assert isinstance(error, puka.NotFound), error
    for promise in [*before, during]:
        results.ok(promise)
    assert results.messages(kept_consume)[1]["body"] == b"during"
    check_recovered_once(watch)
    assert not queue_exists(amqp_url, foreign)
    check_consumer_restored(own, results.messages(kept_consume)[0]["consumer_tag"])
    # The client goes on: its own consume still delivers.
    last = client.basic_publish("", own, b"last", callback=results)
    assert drive(client, lambda: len(results.messages(kept_consume)) == 3 and results.has(last))
    assert not results.errors(kept_consume)


# --- 8. an outage longer than the deadline -----------------------------------------------------------------


@pytest.mark.parametrize("outage", ["refused", "stalled"])
def test_an_outage_longer_than_the_deadline_fails_every_promise_and_closes_the_client(proxy, cleanup, name, outage):
    queue = name
    cleanup.queues.append(queue)
    watch, results = Watch(), Results()
    client = connect(proxy.url, name, cleanup, recovery=fast(deadline=1.0), middleware=[watch])
    client.wait(client.queue_declare(queue), timeout=PATIENCE)
    consume = client.basic_consume(queue, callback=results)
    proxy.stall()
    publishes = [client.basic_publish("", queue, b"%d" % i, callback=results) for i in range(20)]
    client.loop(timeout=0.05)  # written: in flight
    if outage == "refused":
        proxy.close()  # no one listens any more
    else:
        proxy.cut()  # new connections get through TCP and hang
    during = client.queue_declare(name + "-never", callback=results)
    pending = [consume, *publishes, during]
    assert drive(client, lambda: results.has(*pending))
    for promise in pending:
        error = results.error(promise)
        assert type(error) is puka.ConnectionBroken, error
        text = str(error)
        assert "127.0.0.1:%d" % proxy.port in text, text  # the hosts tried
        assert re.search(r"\d+(\.\d+)?s", text), text  # and the time spent
    assert [kind for kind, _ in watch.events] == ["lost"]
    assert watch.closed == 1
    with pytest.raises(puka.ConnectionBroken):
        client.queue_declare(name + "-after")
    with pytest.raises(puka.ConnectionBroken):
        client.basic_publish("", queue, b"after")


# --- 9. credentials revoked during the outage --------------------------------------------------------------


def test_credentials_revoked_during_the_outage_end_the_recovery_with_access_refused(amqp_url, cleanup, name):
    """The user is deleted (tests/test_recovery_asyncio.py changes its password instead)."""
    user, password = "puka-recovery-%s" % uuid.uuid4().hex[:8], uuid.uuid4().hex
    queue = name
    cleanup.queues.append(queue)
    ctl("add_user", user, password)
    try:
        ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        params = puka.parse_amqp_url(amqp_url)
        with Proxy((params.host, params.port), "/", user, password) as proxy:
            watch, results = Watch(), Results()
            client = connect(proxy.url, name, cleanup, middleware=[watch])
            client.wait(client.queue_declare(queue), timeout=PATIENCE)
            consume = client.basic_consume(queue, callback=results)
            proxy.stall()
            publishes = [client.basic_publish("", queue, b"%d" % i, callback=results) for i in range(10)]
            client.loop(timeout=0.05)
            proxy.cut()
            ctl("delete_user", user)
            proxy.resume()
            pending = [consume, *publishes]
            assert drive(client, lambda: results.has(*pending))
            for promise in pending:
                error = results.error(promise)
                assert type(error) is puka.AccessRefused, error
            assert [kind for kind, _ in watch.events] == ["lost"]
            attempts = proxy.accepted
            with pytest.raises((puka.ConnectionBroken, puka.AMQPError)):
                client.wait(client.queue_declare(queue + "-after"), timeout=PATIENCE)
            assert proxy.accepted == attempts  # no more attempts: the recovery ended
            assert proxy.error is None
    finally:
        ctl("delete_user", user, check=False)


# --- 10. many recoveries in a row ---------------------------------------------------------------------------


def test_fifty_recoveries_in_a_row_leak_no_descriptor_thread_or_memory(proxy, cleanup, name):
    queue = name
    cleanup.queues.append(queue)
    hooks, results = Hooks(), Results()
    client = connect(proxy.url, name, cleanup, middleware=[hooks])
    client.wait(client.queue_declare(queue), timeout=PATIENCE)
    bodies: Counter = Counter()

    def on_message(number, message):
        if not message.is_error:
            bodies[message["body"]] += 1
            client.basic_ack(message)

    consume = client.basic_consume(queue, prefetch_count=10, callback=on_message)

    def round_trip_then_cut(i):
        body = b"%d" % i
        publish = client.basic_publish("", queue, body, callback=results)
        assert drive(client, lambda: results.has(publish) and bodies[body])
        results.ok(publish)
        outages = len(hooks.recovered)
        proxy.cut()
        assert drive(client, lambda: len(hooks.recovered) == outages + 1), "recovery %d did not end" % i

    tracemalloc.start()
    try:
        for i in range(3):  # warm-up: caches, pools, first-time imports
            round_trip_then_cut(i)
        gc.collect()
        fds, threads = fd_count(), threading.active_count()
        memory = tracemalloc.get_traced_memory()[0]
        for i in range(3, 53):
            round_trip_then_cut(i)
        publish = client.basic_publish("", queue, b"last", callback=results)
        assert drive(client, lambda: results.has(publish) and bodies[b"last"])
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - memory
    finally:
        tracemalloc.stop()
    assert len(hooks.recovered) == 53 and len(hooks.lost) == 53
    # none left open; fewer if older sockets closed meanwhile
    assert wait_until(lambda: fd_count() <= fds, timeout=PATIENCE), (fd_count(), fds)
    assert threading.active_count() == threads
    assert growth < 1024 * 1024, "memory grew by %d bytes over 50 recoveries" % growth
    assert not results.errors(consume)
    assert all(bodies[b"%d" % i] >= 1 for i in range(53))


# --- 11. a server-named exclusive queue gets a new name -------------------------------------------------


def server_named_setup(proxy, cleanup, name, bind_server_named: bool):
    """A client with a server-named exclusive queue and a named exclusive queue, each consumed, the named one
    bound to an exchange (and the server-named one too when ``bind_server_named``); one message through each."""
    exchange, named = name + "-x", name + "-exclusive"
    cleanup.exchanges.append(exchange)
    watch, results = Watch(), Results()
    client = connect(proxy.url, name, cleanup, middleware=[watch])
    client.wait(client.exchange_declare(exchange, "direct"), timeout=PATIENCE)
    old = client.wait(client.queue_declare("", exclusive=True), timeout=PATIENCE)["queue"]
    client.wait(client.queue_declare(named, exclusive=True), timeout=PATIENCE)
    if bind_server_named:
        client.wait(client.queue_bind(old, exchange, "anonymous"), timeout=PATIENCE)
    client.wait(client.queue_bind(named, exchange, "named"), timeout=PATIENCE)
    anonymous = client.basic_consume(old, callback=results)
    exclusive = client.basic_consume(named, callback=results)
    first = [
        client.basic_publish("", old, b"before", callback=results),
        client.basic_publish(exchange, "named", b"before", callback=results),
    ]
    assert drive(client, lambda: results.messages(anonymous) and results.messages(exclusive) and results.has(*first))
    for promise in first:
        results.ok(promise)
    tags = [results.messages(c)[0]["consumer_tag"] for c in (anonymous, exclusive)]
    proxy.cut()
    assert drive(client, lambda: watch.recovered)
    info = check_recovered_once(watch)
    new = info["renamed"].get(old)
    assert info["renamed"] == {old: new} and new and new != old, info
    return client, watch, results, exchange, named, old, new, anonymous, exclusive, tags


def test_a_server_named_queue_comes_back_renamed_and_its_old_name_still_routes(proxy, cleanup, name):
    client, watch, results, exchange, named, old, new, anonymous, exclusive, tags = server_named_setup(
        proxy, cleanup, name, bind_server_named=False
    )
    assert not queue_exists(proxy.url, old) and queue_exists(proxy.url, new)
    check_consumer_restored(new, tags[0])  # the consumer follows the new name, with its tag
    check_consumer_restored(named, tags[1])  # the named exclusive queue is back, with its binding
    assert bindings_to(named) == [(named, exchange, "named")]
    after = [
        client.basic_publish("", old, b"to the old name", callback=results),
        client.basic_publish("", new, b"to the new name", callback=results),
        client.basic_publish(exchange, "named", b"through the binding", callback=results),
    ]
    assert drive(client, lambda: len(results.messages(anonymous)) == 3 and len(results.messages(exclusive)) == 2)
    for promise in after:
        results.ok(promise)
    assert {m["body"] for m in results.messages(anonymous)[1:]} == {b"to the old name", b"to the new name"}
    assert results.messages(exclusive)[1]["body"] == b"through the binding"
    assert not results.errors(anonymous) and not results.errors(exclusive)
    assert not stale_settlements(watch.frames)


def test_the_binding_of_a_renamed_server_named_queue_follows_it(proxy, cleanup, name):
    client, watch, results, exchange, named, old, new, anonymous, exclusive, tags = server_named_setup(
        proxy, cleanup, name, bind_server_named=True
    )
    assert bindings_to(new) == [(new, exchange, "anonymous")]
    publish = client.basic_publish(exchange, "anonymous", b"through the binding", callback=results)
    assert drive(client, lambda: len(results.messages(anonymous)) == 2 and results.has(publish))
    results.ok(publish)
    assert results.messages(anonymous)[1]["body"] == b"through the binding"


# --- 12. operations in flight, during the outage; the prefetch ------------------------------------------


def test_operations_in_flight_are_rerun_or_interrupted_and_those_of_the_outage_run_after_it(proxy, cleanup, name):
    purged, declared, during_queue, consumed = (name + s for s in ("-purged", "-declared", "-during", "-consumed"))
    cleanup.queues += [purged, declared, during_queue, consumed]
    watch, results = Watch(), Results()
    client = connect(proxy.url, name, cleanup, middleware=[watch])
    # Three pooled channels open (the consume takes one), so that both operations below go out at once.
    client.wait_for_all(
        [
            client.queue_declare(purged),
            client.queue_declare(consumed),
            client.exchange_declare("amq.fanout", "fanout", passive=True),
        ]
    )
    consume = client.basic_consume(consumed, prefetch_count=2, callback=results)
    qos = client.basic_qos(consume, prefetch_count=5, callback=results)
    assert drive(client, lambda: results.has(qos))
    results.ok(qos)
    tag = watch.out("basic.consume")[-1].method["consumer_tag"]  # the consumer under the latest prefetch
    proxy.stall()
    mark = len(watch.frames)
    purge = client.queue_purge(purged, callback=results)
    declare = client.queue_declare(declared, callback=results)
    assert drive(client, lambda: watch.out("queue.purge", mark) and watch.out("queue.declare", mark))
    client.loop(timeout=0.05)  # written: in flight
    proxy.cut()
    assert drive(client, lambda: watch.lost)
    assert not watch.recovered  # the new connection hangs in the stall
    during = client.queue_declare(during_queue, callback=results)
    proxy.resume()
    assert drive(client, lambda: results.has(purge, declare, during))
    error = results.error(purge)
    assert isinstance(error, puka.OperationInterrupted) and isinstance(error, puka.ConnectionBroken), error
    assert results.ok(declare)["queue"] == declared
    assert results.ok(during)["queue"] == during_queue
    assert queue_exists(proxy.url, declared) and queue_exists(proxy.url, during_queue)
    check_recovered_once(watch)
    # The consumer is back once, with its tag, under the latest basic_qos.
    restored = watch.out("basic.consume", watch.connection_starts()[-1])
    assert [f.method["consumer_tag"] for f in restored] == [tag]
    check_consumer_restored(consumed, tag, prefetch=5)
    publishes = [client.basic_publish("", consumed, b"%d" % i, callback=results) for i in range(8)]
    assert drive(client, lambda: len(results.messages(consume)) == 5 and results.has(*publishes))
    assert not results.errors(consume)


# --- 13. stale settlements -------------------------------------------------------------------------------


def test_settling_a_message_of_the_lost_connection_sends_nothing_and_it_comes_again(proxy, cleanup, name):
    queue = name
    cleanup.queues.append(queue)
    watch = Watch()
    client = connect(proxy.url, name, cleanup, middleware=[watch])
    client.wait(client.queue_declare(queue), timeout=PATIENCE)
    consume = client.basic_consume(queue, prefetch_count=10)
    client.wait_for_all([client.basic_publish("", queue, b"%d" % i) for i in range(3)])
    old = [client.wait(consume, timeout=PATIENCE) for _ in range(3)]
    assert all(m is not None and not m["redelivered"] for m in old)
    proxy.cut()
    # Nothing to wait for but the recovery: a publish confirmed after it (it queues behind the replay).
    client.wait(client.basic_publish("", queue, b"after"), timeout=PATIENCE)
    check_recovered_once(watch)
    start = watch.connection_starts()[-1]
    client.basic_ack(old[0])  # no exception
    client.basic_ack(old[2], multiple=True)
    client.wait(client.queue_declare(queue, passive=True), timeout=PATIENCE)  # flushes any deferred ack
    assert not watch.out("basic.ack", start), "a stale ack went out"
    again = [client.wait(consume, timeout=PATIENCE) for _ in range(4)]
    assert all(m is not None for m in again)
    assert sorted(m["body"] for m in again) == [b"0", b"1", b"2", b"after"]
    assert all(m["redelivered"] for m in again if m["body"] != b"after")
    for message in again:
        client.basic_ack(message)
    client.wait(client.queue_declare(queue, passive=True), timeout=PATIENCE)
    acked = {f.method["delivery_tag"] for f in watch.out("basic.ack", start)}
    assert acked and max(acked) == max(m["delivery_tag"] for m in again)
    assert not stale_settlements(watch.frames)
    assert message_count(client, queue) == 0


# --- 14. middleware hooks and OpenTelemetry ------------------------------------------------------------------


def test_the_hooks_are_called_once_per_outage_with_the_documented_info(proxy, cleanup, name):
    hooks, results = Hooks(), Results()
    client = connect(proxy.url, name, cleanup, middleware=[hooks])
    for outage in (1, 2):
        proxy.cut()
        declare = client.queue_declare("", exclusive=True, callback=results)
        assert drive(client, lambda d=declare, n=outage: results.has(d) and len(hooks.recovered) == n)
        results.ok(declare)
    assert [kind for kind, _ in hooks.events] == ["lost", "recovered", "lost", "recovered"]
    for exc in hooks.lost:
        assert isinstance(exc, puka.ConnectionBroken)
    for info in hooks.recovered:
        assert set(info) == INFO_KEYS
        assert str(proxy.port) in info["host"] and "guest:guest" not in info["host"]
        assert info["outage_seconds"] >= 0 and info["attempts"] >= 1 and info["republished"] == 0
    assert hooks.recovered[1]["renamed"] and len(hooks.recovered[1]["renamed"]) == 1  # the first server-named queue
    assert hooks.closed == 0


def telemetry():
    otel = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from puka.tracing.otel import OpenTelemetryMiddleware

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = otel.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    return OpenTelemetryMiddleware(tracer_provider, meter_provider), exporter, reader


def recoveries_counted(reader) -> int:
    data = reader.get_metrics_data()
    total = 0
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "puka.client.recoveries":
                    total += sum(point.value for point in metric.data.data_points)
    return total


def test_opentelemetry_records_a_span_per_outage_and_counts_recoveries(proxy, cleanup, name):
    from opentelemetry.trace import StatusCode

    middleware, exporter, reader = telemetry()
    hooks, results = Hooks(), Results()
    client = connect(proxy.url, name, cleanup, middleware=[middleware, hooks])
    proxy.cut()
    declare = client.queue_declare("", exclusive=True, callback=results)
    assert drive(client, lambda: results.has(declare) and hooks.recovered)
    [span] = [s for s in exporter.get_finished_spans() if s.name == "puka recovery"]
    assert span.attributes["puka.recovery.attempts"] >= 1
    assert span.attributes["puka.recovery.republished"] == 0
    assert span.attributes["server.port"] == proxy.port
    assert span.status.status_code is not StatusCode.ERROR
    assert recoveries_counted(reader) == 1
    # An outage that ends in failure: its span says so.
    client.wait(client.close(), timeout=PATIENCE)
    failing = connect(proxy.url, name + "-2", cleanup, recovery=fast(deadline=0.5), middleware=[middleware])
    outcome = Results()
    never = failing.queue_declare("", exclusive=True, callback=outcome)
    proxy.close()
    assert drive(failing, lambda: outcome.has(never))
    assert isinstance(outcome.error(never), puka.ConnectionBroken)
    spans = [s for s in exporter.get_finished_spans() if s.name == "puka recovery"]
    assert len(spans) == 2 and spans[1].status.status_code is StatusCode.ERROR
    assert recoveries_counted(reader) == 1


# --- 15. recovery=False -------------------------------------------------------------------------------------


def test_without_recovery_a_cut_fails_every_promise(proxy, cleanup, name):
    queue = name
    cleanup.queues.append(queue)
    results = Results()
    client = connect(proxy.url, name, cleanup, recovery=False)
    client.wait(client.queue_declare(queue), timeout=PATIENCE)
    consume = client.basic_consume(queue, callback=results)
    proxy.stall()
    publishes = [client.basic_publish("", queue, b"%d" % i, callback=results) for i in range(10)]
    client.loop(timeout=0.05)
    proxy.cut()
    pending = [consume, *publishes]
    assert drive(client, lambda: results.has(*pending))
    for promise in pending:
        assert isinstance(results.error(promise), puka.ConnectionBroken)
    with pytest.raises(puka.ConnectionBroken):
        client.queue_declare(queue)
    proxy.resume()
    assert proxy.accepted == 1


# --- 16. several hosts -------------------------------------------------------------------------------------


def test_the_first_connect_tries_each_host_and_fails_fast_when_none_answers(amqp_url, cleanup):
    params = puka.parse_amqp_url(amqp_url)
    dead = closed_port()
    live = "%s:%d" % (params.host, params.port)
    for url in (
        "amqp://guest:guest@127.0.0.1:%d,%s/" % (dead, live),
        "amqp://guest:guest@%s,127.0.0.1:%d/" % (live, dead),
        ["amqp://guest:guest@127.0.0.1:%d/" % dead, amqp_url],
    ):
        for _ in range(3):  # each client takes the hosts in an order of its own
            client = puka.Client(url)
            cleanup.clients.append(client)
            client.wait(client.connect(), timeout=PATIENCE)
            assert client.wait(client.queue_declare("", exclusive=True), timeout=PATIENCE)["queue"]
            client.wait(client.close(), timeout=PATIENCE)
    other = closed_port()
    client = puka.Client("amqp://guest:guest@127.0.0.1:%d,127.0.0.1:%d/" % (dead, other))
    cleanup.clients.append(client)
    connecting = client.connect()
    with pytest.raises(puka.ConnectionBroken):
        client.wait(connecting, timeout=PATIENCE)


def test_a_recovery_moves_to_another_host(amqp_url, cleanup, name):
    params = puka.parse_amqp_url(amqp_url)
    upstream = (params.host, params.port)
    with Proxy(upstream) as first, Proxy(upstream) as second:
        proxies = {first.port: first, second.port: second}
        hooks, results = Hooks(), Results()
        url = "amqp://guest:guest@127.0.0.1:%d,127.0.0.1:%d/" % (first.port, second.port)
        client = connect(url, name, cleanup, middleware=[hooks])
        [used] = [p for p in proxies.values() if p.active]
        [spare] = [p for p in proxies.values() if p is not used]
        queue = client.wait(client.queue_declare("", exclusive=True), timeout=PATIENCE)["queue"]
        consume = client.basic_consume(queue, callback=results)
        used.close()
        publish = client.basic_publish("", queue, b"elsewhere", callback=results)
        assert drive(client, lambda: results.messages(consume) and results.has(publish))
        info = check_recovered_once(hooks)
        assert ":%d" % spare.port in info["host"]
        new = info["renamed"][queue]
        assert results.messages(consume)[0]["routing_key"] == new  # the old name routed to the new queue
        assert spare.active == 1


# --- a cut while output waits to be written -------------------------------------------------------------


def test_a_cut_while_publishes_wait_to_be_written_is_recovered(proxy, cleanup, name):
    queue = name
    cleanup.queues.append(queue)
    hooks, results = Hooks(), Results()
    client = connect(proxy.url, name, cleanup, middleware=[hooks])
    client.wait(client.queue_declare(queue), timeout=PATIENCE)
    proxy.stall()
    body = b"x" * (1 << 20)
    publishes = [client.basic_publish("", queue, body, callback=results) for _ in range(16)]
    client.loop(timeout=0.2)
    assert client.needs_write()  # the premise: the socket takes no more, the client waits to write
    proxy.cut()
    proxy.resume()
    assert drive(client, lambda: results.has(*publishes))
    for promise in publishes:
        results.ok(promise)
    check_recovered_once(hooks)
    assert 16 <= message_count(client, queue) <= 32


# --- 5. a broker restart (runs last) -------------------------------------------------------------------------


@pytest.mark.broker_restart
@pytest.mark.timeout(300)
def test_a_broker_restart_is_recovered_and_confirmed_persistent_messages_survive(amqp_url, cleanup, name):
    watch = Watch()
    client = connect(amqp_url, name, cleanup, recovery=True, middleware=[watch])
    traffic = Traffic(client, name, cleanup, window=50, durable=True)
    traffic.setup()
    watch.when_lost = traffic.snapshot
    traffic.start()
    assert drive(client, lambda: traffic.confirmed >= 100 and traffic.received)
    failures = []

    def restart():
        try:
            ctl("stop_app")
            time.sleep(1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            ctl("start_app")
            ctl("await_startup")

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        assert drive(client, lambda: watch.recovered, timeout=120), "not recovered within the default deadline"
    finally:
        restarter.join()
    assert not failures, failures
    more = len(traffic.sent) + 100
    assert drive(client, lambda: traffic.confirmed >= more)
    traffic.stop()
    assert drive(client, traffic.settled)
    traffic.verify(message_count(client, traffic.counted))
    check_recovered_once(watch)
    check_consumer_restored(traffic.consumed, traffic.tag)
    assert not stale_settlements(watch.frames)


def test_a_stream_consumer_resumes_after_the_last_offset_delivered(proxy, amqp_url, cleanup, name):
    # The stream is declared by another client: the consumer's recovery does not declare it again.
    with puka.Client(amqp_url, recovery=False) as other:
        other.wait(other.queue_declare(queue=name, durable=True, arguments={"x-queue-type": "stream"}))
    cleanup.queues.append(name)
    client = connect(proxy.url, name, cleanup)
    for i in range(10):
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"%d" % i), timeout=PATIENCE)
    consume = client.basic_consume(queue=name, prefetch_count=100, arguments={"x-stream-offset": "first"})
    bodies = []
    for _ in range(10):
        message = client.wait(consume, timeout=PATIENCE)
        assert message is not None
        bodies.append(message["body"])
        client.basic_ack(message)
    proxy.cut()
    for i in range(10, 15):
        assert client.wait(client.basic_publish(exchange="", routing_key=name, body=b"%d" % i), timeout=PATIENCE) == {}
    for _ in range(5):
        message = client.wait(consume, timeout=PATIENCE)
        assert message is not None, "the stream consumer did not resume"
        bodies.append(message["body"])
        client.basic_ack(message)
    # Resumed after offset 9, not from "first": nothing delivered twice, nothing skipped.
    assert bodies == [b"%d" % i for i in range(15)]
    assert client.wait(consume, timeout=0.5) is None
