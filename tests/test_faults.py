"""Faults between puka and the broker: cuts, stalls, slow and sliced links, broker-side closes.

Most tests run against the real RabbitMQ through :class:`faults.Proxy`; where no
real broker can produce the fault (duplicate acks...), :class:`faults.FakeServer`
plays the broker.  The broker is never stopped or reconfigured here.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import pytest
from faults import FakeServer, Proxy, message, method, pump, wait_until
from seam import install_client_clock, install_transport_clock, record_read_sizes, unsent_bytes

import puka
from puka.tracing import FrameRecorder

pytestmark = pytest.mark.timeout(30)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def proxy_for(url):
    """A Proxy to the broker of ``url`` (its ``url`` has the same vhost and credentials)."""
    params = puka.parse_amqp_url(url)
    return Proxy((params.host, params.port), params.vhost, params.username, params.password)


@pytest.fixture
def proxy(amqp_url):
    with proxy_for(amqp_url) as p:
        yield p
    assert p.error is None


def connect(url, **kwargs):
    client = puka.Client(url, **kwargs)
    client.wait(client.connect(), timeout=10)
    return client


def assert_every_call_raises_connection_broken(client, message=None):
    """After the connection is gone, every operation fails at once with ConnectionBroken."""
    calls = {
        "connect": lambda: client.connect(),
        "basic_publish": lambda: client.basic_publish(exchange="", routing_key="x", body=b"x"),
        "queue_declare": lambda: client.queue_declare(queue="x"),
        "queue_delete": lambda: client.queue_delete(queue="x"),
        "queue_purge": lambda: client.queue_purge(queue="x"),
        "queue_bind": lambda: client.queue_bind(queue="x", exchange="amq.direct"),
        "queue_unbind": lambda: client.queue_unbind(queue="x", exchange="amq.direct"),
        "exchange_declare": lambda: client.exchange_declare(exchange="x"),
        "exchange_delete": lambda: client.exchange_delete(exchange="x"),
        "exchange_bind": lambda: client.exchange_bind(destination="x", source="y"),
        "exchange_unbind": lambda: client.exchange_unbind(destination="x", source="y"),
        "basic_consume": lambda: client.basic_consume(queue="x"),
        "basic_consume_multi": lambda: client.basic_consume_multi(["x", "y"]),
        "basic_get": lambda: client.basic_get(queue="x"),
        "basic_qos": lambda: client.basic_qos(1, prefetch_count=1),
        "basic_cancel": lambda: client.basic_cancel(1),
        "loop": lambda: client.loop(timeout=0.1),
        "fileno": lambda: client.fileno(),
    }
    if message is not None:
        calls["basic_ack"] = lambda: client.basic_ack(message)
        calls["basic_reject"] = lambda: client.basic_reject(message)
        calls["basic_nack"] = lambda: client.basic_nack(message)
    for what, call in calls.items():
        try:
            call()
        except puka.ConnectionBroken:
            pass
        except Exception as exc:  # pragma: no cover - the failure being tested for
            pytest.fail("%s on a broken client raised %r instead of ConnectionBroken" % (what, exc))
        else:
            pytest.fail("%s on a broken client did not raise" % what)
    # close() on a broken client is a harmless no-op: its promise is already resolved, with {}.
    assert client.wait(client.close(), timeout=0) == {}


def heartbeats_sent(recorder):
    return sum(1 for f in recorder.frames if f.direction == "out" and f.name == "heartbeat")


def negotiated_heartbeat(recorder):
    """The heartbeat interval the client agreed to, as it said in its connection.tune-ok."""
    (tune_ok,) = [f for f in recorder.frames if f.direction == "out" and f.name == "connection.tune-ok"]
    return tune_ok.method["heartbeat"]


def dead_peer(port, heartbeat=1):
    """The documented error (a regex) of a peer presumed dead after two silent intervals (just past 2N)."""
    return r"no data or heartbeat from 127\.0\.0\.1:%d for %d\.\ds \(heartbeat %ds\): peer presumed dead" % (
        port,
        2 * heartbeat,
        heartbeat,
    )


def when(condition, action, ceiling=20.0):
    """Run ``action(met)`` in a background thread once ``condition()`` holds (``met`` False: the ceiling passed)."""
    thread = threading.Thread(target=lambda: action(wait_until(condition, ceiling)), daemon=True)
    thread.start()
    return thread


def outcome(result):
    if result is None:
        return "pending"
    if not result.is_error:
        return "ok"
    return type(result.exception).__name__


# --- 1. a cut in the middle of a stream of confirmed publishes ------------------------------------


def test_cut_during_pipelined_publishes_resolves_every_promise_once(proxy, client, queue):
    publisher = connect(proxy.url, recovery=False)  # fail-fast: the cut ends every promise
    # Slow the upstream a little so that the cut finds publishes at every stage: confirmed,
    # sent but unconfirmed, in the proxy, in the kernel buffers and still in puka's buffer.
    proxy.throttle(400_000, "up")
    calls = collections.Counter()
    results = {}
    state = {"cut": False, "confirmed": 0}

    def on_result(number, result):
        calls[number] += 1
        results[number] = result
        if not result.is_error:
            state["confirmed"] += 1
        if not state["cut"] and state["confirmed"] >= 1000:
            proxy.cut()
            state["cut"] = True
        if len(results) == len(promises):
            publisher.loop_break()

    promises = [
        publisher.basic_publish(exchange="", routing_key=queue, body=b"m%d" % i, callback=on_result)
        for i in range(5000)
    ]
    # Without heartbeats no timer can end this: the cut itself (the RST) resolves every promise,
    # and the last callback breaks the loop.
    publisher.loop(timeout=20)
    assert state["cut"], "the cut never happened (%d confirmed)" % state["confirmed"]
    assert set(results) == set(promises), "%d promises never resolved" % (len(promises) - len(results))
    assert set(calls.values()) == {1}, "some promise resolved more than once"
    kinds = collections.Counter(outcome(r) for r in results.values())
    assert set(kinds) == {"ok", "ConnectionBroken"}, kinds
    assert 1000 <= kinds["ok"] < 5000
    # What was confirmed really is in the queue.
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] >= kinds["ok"]
    for number in promises:
        with pytest.raises(ValueError):  # each promise was handed out once, then forgotten
            publisher.wait(number, timeout=0)
    assert_every_call_raises_connection_broken(publisher)


# --- 2. a stalled peer with heartbeats ---------------------------------------------------------------
#
# The rule (docs/reliability.rst, "Heartbeats"): with heartbeats every N seconds the client sends one
# when it has sent nothing for N/2, and declares the peer dead when nothing arrived for 2N.  The
# transport reads a fake clock here (tests/seam.py) that stands still unless the test advances it, so
# every frame of the connection arrives at fake time 0 and the bounds are checked to the hundredth.


@pytest.mark.parametrize("how", ["wait", "loop"])
def test_stalled_peer_is_dead_after_two_silent_heartbeat_intervals(proxy, monkeypatch, how):
    clock = install_transport_clock(monkeypatch)
    heartbeat = 1
    recorder = FrameRecorder()
    client = connect(proxy.url, heartbeat=heartbeat, middleware=[recorder], recovery=False)
    assert negotiated_heartbeat(recorder) == heartbeat
    q = client.wait(client.queue_declare(exclusive=True))["queue"]
    consume = client.basic_consume(queue=q)
    assert client.wait(consume, timeout=0.2) is None
    proxy.stall()
    seen = {}
    publish = client.basic_publish(
        exchange="", routing_key=q, body=b"never confirmed", callback=lambda n, r: seen.setdefault(n, r)
    )
    client.on_write()  # written at fake time 0, like everything else

    def run(timeout):
        """What the test is about: wait() or loop() run the heartbeat timers themselves."""
        if how == "wait":
            assert client.wait(publish, timeout=timeout) is None
        else:
            client.loop(timeout=timeout)

    # Just under two intervals of silence: alive.  The timers did run -- the client sent a heartbeat
    # of its own (it had sent nothing for more than N/2).
    clock.advance(2 * heartbeat - 0.05)
    run(0.3)
    assert heartbeats_sent(recorder) >= 1
    assert publish not in seen
    assert client.fileno() >= 0  # a broken client raises ConnectionBroken here
    # Just over: the peer is presumed dead, every promise fails, and wait()/loop() raise it.
    clock.advance(0.1)
    with pytest.raises(puka.ConnectionBroken, match=dead_peer(proxy.port, heartbeat)):
        run(10)
    assert isinstance(seen[publish].exception, puka.ConnectionBroken)
    if how == "wait":  # (loop() handed the consume promise's error to its -- absent -- callback)
        result = client.wait(consume, raise_errors=False, timeout=0)
        assert isinstance(result.exception, puka.ConnectionBroken)
    assert_every_call_raises_connection_broken(client)


def test_a_heartbeat_is_sent_after_half_an_interval_without_sending(monkeypatch):
    clock = install_transport_clock(monkeypatch)
    with FakeServer(heartbeat=4, auto_ack=True) as server:
        recorder = FrameRecorder()
        client = connect(server.url, heartbeat=10, middleware=[recorder])
        assert negotiated_heartbeat(recorder) == 4  # the smaller of the client's and the server's
        # Everything written at fake time 0 (the publish channel's set-up included): nothing left to send.
        assert client.wait(client.basic_publish(exchange="", routing_key="q", body=b"x"), timeout=10) == {}
        assert not client.needs_write()
        assert heartbeats_sent(recorder) == 0
        clock.advance(2 - 0.01)
        client.loop(timeout=0.1)
        assert heartbeats_sent(recorder) == 0, "a heartbeat before N/2 without sending"
        clock.advance(0.02)
        client.loop(timeout=0.1)
        assert heartbeats_sent(recorder) == 1
        assert server.wait_for("heartbeat", 1, timeout=10)
        # Sending is what counts: the heartbeat itself restarts the N/2 wait.
        clock.advance(2 - 0.01)
        client.loop(timeout=0.1)
        assert heartbeats_sent(recorder) == 1
        clock.advance(0.02)
        client.loop(timeout=0.1)
        assert heartbeats_sent(recorder) == 2
        client.wait(client.close(), timeout=10)
    assert server.error is None


def test_close_on_a_stalled_peer_returns_once_heartbeats_give_up(proxy, monkeypatch):
    # The client's own clock is fake too: the close deadline (CLOSE_TIMEOUT, 5 s) and on_timer().
    clock = install_client_clock(monkeypatch)
    recorder = FrameRecorder()
    client = connect(proxy.url, heartbeat=1, middleware=[recorder])
    consume = client.basic_consume(queue="amq.rabbitmq.reply-to", no_ack=True)
    assert pump(client, lambda: "basic.consume-ok" in recorder.names("in"), timeout=10)
    proxy.stall()
    close = client.close()
    clock.advance(2 - 0.05)
    assert client.on_timer() == pytest.approx(0.05, abs=1e-6)  # next: the heartbeat dead line, not the close timeout
    assert client.wait(close, timeout=0) is None
    clock.advance(0.1)
    client.on_timer()
    assert client.wait(close, timeout=0) == {}  # closed all the same, without the broker's close-ok
    result = client.wait(consume, raise_errors=False, timeout=0)
    assert isinstance(result.exception, puka.ConnectionBroken)
    assert re.search(dead_peer(proxy.port), str(result.exception)), result.exception
    assert_every_call_raises_connection_broken(client)


def test_publish_blocked_in_push_back_still_notices_a_dead_peer(proxy, monkeypatch):
    clock = install_transport_clock(monkeypatch)
    recorder = FrameRecorder()
    client = connect(proxy.url, heartbeat=1, middleware=[recorder], recovery=False)
    client.wait(client.basic_publish(exchange="", routing_key="nowhere", body=b"ready"), timeout=10)
    proxy.stall()
    body = b"p" * (1024 * 1024)
    promises = []
    seen = {}
    finished = threading.Event()  # the publishing loop is over

    def kill_the_peer(pushing_back):
        # basic_publish pushes back once past the high-water mark, and nothing drains: the peer reads nothing.
        try:
            if not pushing_back:
                return
            beats = heartbeats_sent(recorder)
            clock.advance(2 - 0.05)
            # The push-back runs the timers: a heartbeat goes out, the peer is not dead yet...
            seen["heartbeat under the dead line"] = wait_until(lambda: heartbeats_sent(recorder) > beats, 20)
            seen["publishes returned"] = len(promises)
        finally:
            clock.advance(0.1)  # ... and two silent intervals later it is.
            if not finished.wait(20):
                proxy.cut()  # it was not: end the push-back another way, for the test to fail and say why

    killer = when(lambda: unsent_bytes(client) > puka.client.PUBLISH_HIGH_WATER, kill_the_peer)
    with pytest.raises(puka.ConnectionBroken, match=dead_peer(proxy.port)):
        try:
            for _ in range(200):  # past PUBLISH_HIGH_WATER: basic_publish blocks until the peer is declared dead
                promises.append(client.basic_publish(exchange="", routing_key="nowhere", body=body))
        finally:
            finished.set()
    killer.join(30)
    # The publish blocked in push-back returned once the connection broke; the next call raised.
    assert seen == {"heartbeat under the dead line": True, "publishes returned": len(promises) - 1}
    assert len(promises) > puka.client.PUBLISH_HIGH_WATER // len(body)
    results = [client.wait(n, raise_errors=False, timeout=0) for n in promises]
    assert all(isinstance(r.exception, puka.ConnectionBroken) for r in results)


# --- 3. idle with heartbeats: no false positive ------------------------------------------------------


@pytest.mark.parametrize("how", ["loop", "wait"])
def test_idle_connection_with_heartbeats_stays_up(proxy, queue, how):
    # Real time against the real broker: the broker, too, must see the client's heartbeats.
    heartbeat = 1
    recorder = FrameRecorder()
    client = connect(proxy.url, heartbeat=heartbeat, middleware=[recorder])
    assert negotiated_heartbeat(recorder) == heartbeat
    consume = client.basic_consume(queue=queue, prefetch_count=1)
    assert client.wait(consume, timeout=0.3) is None
    mark, beats = len(recorder.frames), heartbeats_sent(recorder)

    def idle():
        if how == "loop":
            client.loop(timeout=0.25)
        else:
            assert client.wait(consume, timeout=0.25) is None
        return heartbeats_sent(recorder) >= beats + 12

    # The client sends a heartbeat after each N/2 of silence: twelve of them are 6 s of idling,
    # three times the 2-interval dead line (counted in heartbeats, not on the wall clock).
    assert wait_until(idle, timeout=25, interval=0)
    quiet = recorder.frames[mark:]
    # Only heartbeats crossed, both ways: the client's kept the broker from dropping it, the
    # broker's kept the client from declaring it dead.
    assert {f.name for f in quiet if f.direction == "out"} == {"heartbeat"}
    assert {f.name for f in quiet if f.direction == "in"} == {"heartbeat"}
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"after a quiet while"), timeout=5)
    msg = client.wait(consume, timeout=5)
    assert msg["body"] == b"after a quiet while"
    client.basic_ack(msg)
    client.wait(client.basic_cancel(consume), timeout=5)
    assert client.wait(client.close(), timeout=5) == {}


# --- 4. the broker closes the connection (rabbitmqctl close_connection) -------------------------


def rabbitmqctl(*args):
    out = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_broker_forced_close_fails_outstanding_promises_with_its_reason(amqp_url, name):
    client = connect(amqp_url, client_properties={"connection_name": name}, recovery=False)
    q = client.wait(client.queue_declare(exclusive=True))["queue"]
    consumes = [client.basic_consume(queue=q, prefetch_count=1) for _ in range(2)]
    assert client.wait(consumes, timeout=0.3) is None
    lines = [line for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines() if name in line]
    assert len(lines) == 1, lines
    connection = lines[0].split("\t")[0]  # close_connection takes the connection's pid
    rabbitmqctl("close_connection", connection, "puka fault test %s" % name)
    for number in consumes:
        with pytest.raises(puka.ConnectionForced) as info:
            client.wait(number, timeout=5)
        assert info.value.reply_code == 320
        assert "puka fault test %s" % name in str(info.value)
    with pytest.raises(puka.ConnectionBroken) as info:
        client.queue_declare(queue="after")
    assert isinstance(info.value.__cause__, puka.ConnectionForced)  # the broker's error is the cause
    assert info.value.__cause__.reply_code == 320
    assert_every_call_raises_connection_broken(client)


# --- 6. confirms from a scripted server -------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeServer() as server:
        yield server
    assert server.error is None, server.error


def publish_and_wait_until_received(client, server, count, **kwargs):
    numbers = [
        client.basic_publish(exchange="", routing_key="q", body=b"m%d" % i, **kwargs(i) if callable(kwargs) else kwargs)
        for i in range(count)
    ]
    assert pump(client, lambda: server.count("basic.publish") >= count, timeout=5)
    return numbers


def test_confirms_multiple_ack_nack_and_return_each_reach_their_own_promise(fake):
    client = connect(fake.url)
    plain = [client.basic_publish(exchange="", routing_key="q", body=b"m%d" % i) for i in range(1, 6)]
    returned = client.basic_publish(exchange="", routing_key="nowhere", body=b"unroutable", mandatory=True)
    assert pump(client, lambda: fake.count("basic.publish") >= 6)
    sixth = fake.published[5]
    assert sixth["tag"] == 6 and sixth["properties"]["headers"]["x-puka-promise"] == returned
    fake.send(
        method(1, "basic.ack", delivery_tag=3, multiple=True),
        method(1, "basic.nack", delivery_tag=4, multiple=False, requeue=False),
        method(1, "basic.ack", delivery_tag=5, multiple=False),
        message(
            1,
            "basic.return",
            body=b"unroutable",
            properties=sixth["properties"],
            reply_code=312,
            reply_text="NO_ROUTE",
            exchange="",
            routing_key="nowhere",
        ),
        method(1, "basic.ack", delivery_tag=6, multiple=False),
    )
    results = [client.wait(n, raise_errors=False, timeout=2) for n in plain + [returned]]
    assert [outcome(r) for r in results] == ["ok", "ok", "ok", "PublishNacked", "ok", "NoRoute"]
    assert results[5].exception.reply_code == 312 and results[5]["body"] == b"unroutable"
    # The connection is healthy: a later publish is confirmed normally.
    later = client.basic_publish(exchange="", routing_key="q", body=b"later")
    assert pump(client, lambda: fake.count("basic.publish") >= 7)
    fake.send(method(1, "basic.ack", delivery_tag=7))
    assert client.wait(later, timeout=2) == {}
    client.wait(client.close(), timeout=2)


BAD_CONFIRMS = {
    # name: (frames sent after tags 1..4 were published, promises legitimately confirmed first)
    "ack of a tag never published": ([method(1, "basic.ack", delivery_tag=9)], set()),
    "nack of a tag never published": ([method(1, "basic.nack", delivery_tag=9)], set()),
    "duplicate single ack": (
        [method(1, "basic.ack", delivery_tag=2), method(1, "basic.ack", delivery_tag=2)],
        {2},
    ),
    "single ack below a multiple ack": (
        [method(1, "basic.ack", delivery_tag=2, multiple=True), method(1, "basic.ack", delivery_tag=1)],
        {1, 2},
    ),
    "duplicate multiple ack": (
        [
            method(1, "basic.ack", delivery_tag=3, multiple=True),
            method(1, "basic.ack", delivery_tag=2, multiple=True),
        ],
        {1, 2, 3},
    ),
    "ack of a nacked tag": (
        [method(1, "basic.nack", delivery_tag=1), method(1, "basic.ack", delivery_tag=1)],
        set(),
    ),
    "ack of tag 0": ([method(1, "basic.ack", delivery_tag=0)], set()),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIRMS))
def test_unknown_or_duplicate_confirms_break_the_connection_and_resolve_nothing_wrongly(fake, case):
    frames, confirmed = BAD_CONFIRMS[case]
    client = connect(fake.url, recovery=False)
    publishes = [client.basic_publish(exchange="", routing_key="q", body=b"m%d" % i) for i in range(1, 5)]
    consume = client.basic_consume(queue="q")
    assert pump(client, lambda: fake.count("basic.publish") >= 4 and fake.count("basic.consume") >= 1)
    fake.send(*frames)
    results = [client.wait(n, raise_errors=False, timeout=10) for n in publishes]
    for tag, result in enumerate(results, 1):
        if tag in confirmed:
            assert outcome(result) == "ok", (tag, result)
        elif tag == 1 and case == "ack of a nacked tag":
            assert outcome(result) == "PublishNacked"
        else:
            assert outcome(result) == "ConnectionBroken", (tag, result)
    broken = client.wait(consume, raise_errors=False, timeout=10)
    assert type(broken.exception) is puka.ConnectionBroken
    assert str(broken.exception).startswith("protocol violation by the broker: "), broken.exception
    assert fake.client_closed.wait(10)
    assert_every_call_raises_connection_broken(client)


# --- 7. channel errors fail only their promise --------------------------------------------------------


def test_publish_to_a_missing_exchange_fails_only_that_promise(client, queue, name):
    consume = client.basic_consume(queue=queue, prefetch_count=10)
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"before"))
    bad = client.basic_publish(exchange=name + "-missing", routing_key="x", body=b"lost")
    declare = client.queue_declare(queue=queue, passive=True)  # other work, on another channel
    result = client.wait(bad, raise_errors=False, timeout=5)
    assert isinstance(result.exception, puka.NotFound) and result.exception.reply_code == 404
    assert result.exception.method_name == "basic.publish"
    assert client.wait(declare, timeout=5)["queue"] == queue
    first = client.wait(consume, timeout=5)
    assert first["body"] == b"before"
    client.basic_ack(first)
    # The publish channel came back; the consumer went on.
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"after"), timeout=5)
    second = client.wait(consume, timeout=5)
    assert second["body"] == b"after"
    client.basic_ack(second)
    client.wait(client.basic_cancel(consume), timeout=5)


def test_publishes_dropped_by_a_publish_channel_error_are_never_reported_confirmed(client, queue, name):
    missing = name + "-missing"
    before = [client.basic_publish(exchange="", routing_key=queue, body=b"before") for _ in range(500)]
    bad = [client.basic_publish(exchange=missing, routing_key="x", body=b"lost") for _ in range(50)]
    after = [client.basic_publish(exchange="", routing_key=queue, body=b"after") for _ in range(500)]
    bad_results = [client.wait(n, raise_errors=False, timeout=5) for n in bad]
    before_results = [client.wait(n, raise_errors=False, timeout=5) for n in before]
    after_results = [client.wait(n, raise_errors=False, timeout=5) for n in after]
    assert all(r is not None for r in bad_results + before_results + after_results)
    # Every publish to the missing exchange failed (the broker dropped them all): none is "ok".
    assert all(isinstance(r.exception, puka.NotFound) for r in bad_results)
    # Publishes to other exchanges have channels of their own: untouched.
    assert all(outcome(r) == "ok" for r in before_results + after_results)
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 1000
    assert client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"later"), timeout=5) == {}


def test_a_publish_channel_error_is_not_blamed_on_other_publishes(client, queue, name):
    before = [client.basic_publish(exchange="", routing_key=queue, body=b"before") for _ in range(2000)]
    bad = client.basic_publish(exchange=name + "-missing", routing_key="x", body=b"lost")
    after = [client.basic_publish(exchange="", routing_key=queue, body=b"after") for _ in range(100)]
    assert isinstance(client.wait(bad, raise_errors=False, timeout=5).exception, puka.NotFound)
    others = [client.wait(n, raise_errors=False, timeout=5) for n in before + after]
    blamed = sum(1 for r in others if outcome(r) == "NotFound")
    assert blamed == 0, "%d publishes to the default exchange failed with the other publish's 404" % blamed


def test_redeclare_with_other_arguments_fails_only_that_promise(client, queue, name):
    other = name + "-ttl"
    client.wait(client.queue_declare(queue=other, auto_delete=True, arguments={"x-message-ttl": 1000}))
    consume = client.basic_consume(queue=queue)
    publishes = [client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(20)]
    bad = client.queue_declare(queue=other, auto_delete=True, arguments={"x-message-ttl": 2000})
    good = client.queue_declare(queue=other, auto_delete=True, arguments={"x-message-ttl": 1000})
    result = client.wait(bad, raise_errors=False, timeout=5)
    assert isinstance(result.exception, puka.PreconditionFailed) and result.exception.reply_code == 406
    assert result.exception.method_name == "queue.declare"
    assert client.wait(good, timeout=5)["queue"] == other
    assert all(r == {} for r in client.wait_for_all(publishes))
    bodies = []
    for _ in range(20):
        msg = client.wait(consume, timeout=5)
        bodies.append(msg["body"])
        client.basic_ack(msg)
    assert bodies == [b"%d" % i for i in range(20)]
    client.wait(client.basic_cancel(consume), timeout=5)
    client.wait(client.queue_delete(queue=other))


def test_double_ack_is_refused_at_the_call_and_the_consumer_goes_on(client, queue):
    for i in range(3):
        client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i)
    consume = client.basic_consume(queue=queue, prefetch_count=1)
    first = client.wait(consume, timeout=5)
    client.basic_ack(first)
    for verb in (client.basic_ack, client.basic_reject, client.basic_nack):
        with pytest.raises(ValueError, match="not awaiting"):
            verb(first)
    # Nothing reached the broker: no PRECONDITION_FAILED closed the consumer's channel.
    second = client.wait(consume, timeout=5)
    client.basic_ack(second)
    third = client.wait(consume, timeout=5)
    client.basic_ack(third)
    assert [m["body"] for m in (first, second, third)] == [b"0", b"1", b"2"]
    assert [m["redelivered"] for m in (first, second, third)] == [False, False, False]
    client.wait(client.basic_cancel(consume), timeout=5)
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 0


def channel_open_before(server, channel, name):
    """Whether the client opened ``channel`` (again) before its last ``name`` on it."""
    seen = [(ch, n) for ch, n, _m in server.received if ch == channel]
    last = max(i for i, (_ch, n) in enumerate(seen) if n == name)
    opens = [i for i, (_ch, n) in enumerate(seen) if n == "channel.open"]
    closes = [i for i, (_ch, n) in enumerate(seen) if n in ("channel.close-ok", "channel.close")]
    return any(i < last for i in opens) and (not closes or max(o for o in opens if o < last) > max(closes))


def test_broker_closing_a_consumers_channel_fails_only_that_consume(fake):
    client = connect(fake.url)
    consume = client.basic_consume(queue="q", consumer_tag="c1", prefetch_count=5)
    assert pump(client, lambda: fake.count("basic.consume") == 1)
    channel = fake.received[-1][0]
    fake.send(
        message(channel, "basic.deliver", b"one", consumer_tag="c1", delivery_tag=1, exchange="", routing_key="q"),
        message(channel, "basic.deliver", b"two", consumer_tag="c1", delivery_tag=2, exchange="", routing_key="q"),
    )
    first, second = client.wait(consume, timeout=2), client.wait(consume, timeout=2)
    assert (first["body"], second["body"]) == (b"one", b"two")
    client.basic_ack(first)
    publish = client.basic_publish(exchange="", routing_key="q", body=b"unrelated")
    assert pump(client, lambda: fake.count("basic.publish") == 1 and fake.count("basic.ack") == 1)
    # As RabbitMQ does when a consumer's delivery acknowledgement times out:
    fake.send(
        method(
            channel,
            "channel.close",
            reply_code=406,
            reply_text="PRECONDITION_FAILED - delivery acknowledgement on channel %d timed out" % channel,
            class_id=0,
            method_id=0,
        ),
        method(1, "basic.ack", delivery_tag=1),
    )
    with pytest.raises(puka.PreconditionFailed):
        client.wait(consume, timeout=2)
    assert client.wait(publish, timeout=2) == {}
    assert pump(client, lambda: fake.count("channel.close-ok") == 1)
    with pytest.raises(ValueError):  # its channel is gone: the broker requeued it already
        client.basic_ack(second)
    # Other work goes on, on a channel opened again.
    assert client.wait(client.queue_declare(queue="after"), timeout=2)["queue"] == "after"
    assert channel_open_before(fake, fake.received[-1][0], "queue.declare")
    client.wait(client.close(), timeout=2)


def test_broker_closing_an_idle_pooled_channel_does_not_break_the_connection(fake):
    client = connect(fake.url)
    assert client.wait(client.queue_declare(queue="first"), timeout=2)["queue"] == "first"
    channel = fake.received[-1][0]
    publish = client.basic_publish(exchange="", routing_key="q", body=b"in flight")
    assert pump(client, lambda: fake.count("basic.publish") == 1)
    fake.send(method(channel, "channel.close", reply_code=320, reply_text="CONNECTION_FORCED - channel shut down"))
    assert pump(client, lambda: fake.count("channel.close-ok") == 1, timeout=10)
    # The connection stayed up: the publish in flight is confirmed, and a new operation works.
    fake.send(method(1, "basic.ack", delivery_tag=1))
    assert client.wait(publish, timeout=2) == {}
    assert client.wait(client.queue_declare(queue="second"), timeout=2)["queue"] == "second"
    assert channel_open_before(fake, fake.received[-1][0], "queue.declare")
    client.wait(client.close(), timeout=2)


# --- 8. unacked deliveries come back after a cut ------------------------------------------------------


def test_unacked_deliveries_are_redelivered_after_a_cut(proxy, client, queue):
    client.wait_for_all([client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(12)])
    consumer = connect(proxy.url, recovery=False)  # puka does not reconnect: a new client consumes
    consume = consumer.basic_consume(queue=queue, prefetch_count=10)
    held = [consumer.wait(consume, timeout=5) for _ in range(10)]
    assert all(m is not None and m["redelivered"] is False for m in held)
    assert consumer.wait(consume, timeout=0.3) is None  # the prefetch window is full
    proxy.cut()
    with pytest.raises(puka.ConnectionBroken):
        consumer.wait(consume, timeout=5)
    assert_every_call_raises_connection_broken(consumer, message=held[0])

    again = client.basic_consume(queue=queue, prefetch_count=20)
    got = {}
    while len(got) < 12:
        msg = client.wait(again, timeout=5)
        assert msg is not None, "only %d messages came back" % len(got)
        got[msg["body"]] = msg["redelivered"]
        client.basic_ack(msg)
    held_bodies = {m["body"] for m in held}
    assert held_bodies == {b"%d" % i for i in range(10)}
    assert {body for body, redelivered in got.items() if redelivered} == held_bodies
    client.wait(client.basic_cancel(again))


# --- 9. many persistent publishes -----------------------------------------------------------------------


def test_ten_thousand_persistent_confirmed_publishes(client, name):
    durable = name + "-durable"
    client.wait(client.queue_declare(queue=durable, durable=True))
    try:
        headers = {"delivery_mode": 2}
        promises = [
            client.basic_publish(exchange="", routing_key=durable, body=b"persistent %d" % i, headers=headers)
            for i in range(10_000)
        ]
        results = client.wait_for_all(promises)
        assert len(results) == 10_000 and all(r == {} and not r.is_error for r in results)
        assert client.wait(client.queue_declare(queue=durable, durable=True, passive=True))["message_count"] == 10_000
    finally:
        client.wait(client.queue_delete(queue=durable), timeout=10)


# --- 11. sliced traffic; a silent server ----------------------------------------------------------------


def test_one_byte_slices_change_nothing(proxy, name):
    proxy.slice(1)
    client = puka.Client(proxy.url)
    reads = record_read_sizes(client)
    client.wait(client.connect(), timeout=10)
    q = client.wait(client.queue_declare(queue=name, auto_delete=True), timeout=10)["queue"]
    bodies = [b"sliced %d " % i + b"x" * (i % 50) for i in range(200)]
    promises = [client.basic_publish(exchange="", routing_key=q, body=body) for body in bodies]
    assert all(r == {} for r in client.wait_for_all(promises))
    consume = client.basic_consume(queue=q, prefetch_count=50)
    got = []
    for _ in range(200):
        msg = client.wait(consume, timeout=10)
        assert msg is not None
        got.append(msg["body"])
        client.basic_ack(msg)
    assert got == bodies
    client.wait(client.basic_cancel(consume), timeout=10)
    assert client.wait(client.queue_delete(queue=q), timeout=10)["message_count"] == 0
    client.wait(client.close(), timeout=10)
    # The slicing was real: many reads were shorter than a frame header.
    assert sum(1 for n in reads if n < 7) > len(reads) / 4, collections.Counter(reads).most_common(5)


@pytest.mark.parametrize("mode", [{"recovery": False}, {}], ids=["recovery=False", "default"])
def test_a_server_that_says_nothing_fails_connect_at_the_connection_timeout(monkeypatch, mode):
    # A first connect fails the same way with recovery (docs/reliability.rst: it tries every host once).
    clock = install_client_clock(monkeypatch)  # the connect deadline is the client's: fake too
    with FakeServer(silent=True) as server:
        client = puka.Client(server.url, connection_timeout=1, **mode)
        connect_promise = client.connect()
        assert pump(client, server.connected.is_set, timeout=10)
        clock.advance(1 - 0.01)
        assert client.on_timer() == pytest.approx(0.01, abs=1e-6)  # the deadline is the next timer
        assert client.wait(connect_promise, timeout=0) is None
        clock.advance(0.02)
        client.on_timer()
        redacted = re.escape(puka.parse_amqp_url(server.url).redacted_url())
        with pytest.raises(puka.ConnectionBroken, match="^connecting to %s timed out after 1s$" % redacted):
            client.wait(connect_promise, timeout=0)
        assert server.client_closed.wait(10)
        assert_every_call_raises_connection_broken(client)
    assert server.error is None


# --- 12. a stopped upstream: bounded memory, push-back, then a cut --------------------------------------


def test_publishing_into_a_stopped_upstream_keeps_memory_bounded(proxy):
    client = connect(proxy.url, recovery=False)
    client.wait(client.basic_publish(exchange="", routing_key="nowhere", body=b"ready"), timeout=5)
    proxy.throttle(0, "up")
    body = b"k" * 1024
    count = 10_000
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        promises = [client.basic_publish(exchange="", routing_key="nowhere", body=body) for _ in range(count)]
        assert client.wait(promises[-1], timeout=0.5) is None  # nothing reaches the broker
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Each publish waiting to be written costs its frames (the 1 KiB body + ~60 bytes of framing,
    # joined into one bytes object), its promise (__slots__, ~100 bytes) and an entry in two dicts:
    # under 2 KiB each.  4 MiB for everything else.
    bound = count * 2048 + 4 * 1024 * 1024
    assert peak - baseline < bound, "peak %.1f MiB" % ((peak - baseline) / 2**20)
    assert proxy.bytes_up < 20_000  # only the handshake and the channel setup went through
    assert client.fileno() >= 0  # still connected (a broken client raises ConnectionBroken here)...
    assert client.needs_write()  # ... with data waiting for the socket
    proxy.cut()
    results = [client.wait(n, raise_errors=False, timeout=10) for n in promises]
    assert collections.Counter(outcome(r) for r in results) == {"ConnectionBroken": count}


def test_publishing_past_the_high_water_mark_blocks_until_the_connection_breaks(proxy):
    client = connect(proxy.url, recovery=False)
    client.wait(client.basic_publish(exchange="", routing_key="nowhere", body=b"ready"), timeout=5)
    proxy.throttle(0, "up")
    high_water = puka.client.PUBLISH_HIGH_WATER
    body = b"m" * (1024 * 1024)  # the same body each time: queued as views, never copied
    promises = []
    seen = {}

    def cut(pushing_back):
        # Past the high-water mark nothing drains (the proxy forwards nothing): basic_publish is blocked.
        seen["publishes returned"] = len(promises) if pushing_back else None
        proxy.cut()

    cutter = when(lambda: unsent_bytes(client) > high_water, cut)
    with pytest.raises(puka.ConnectionBroken):
        for _ in range(200):  # 200 MiB, far above PUBLISH_HIGH_WATER (64 MiB)
            promises.append(client.basic_publish(exchange="", routing_key="nowhere", body=body))
            assert unsent_bytes(client) <= high_water + len(body) + 4096
    cutter.join(30)
    # The publish that crossed the mark blocked until the cut, then returned; the next call raised.
    assert seen == {"publishes returned": len(promises) - 1}
    assert len(promises) > high_water // len(body)
    results = [client.wait(n, raise_errors=False, timeout=10) for n in promises]
    assert collections.Counter(outcome(r) for r in results) == {"ConnectionBroken": len(promises)}


def test_publishes_waiting_for_the_publish_channel_are_bounded_too():
    with FakeServer() as server:
        server.on("confirm.select", lambda srv, channel, meth: None, replace=True)  # never ready
        client = connect(server.url, recovery=False)
        assert pump(client, lambda: server.count("confirm.select") == 1)
        high_water = puka.client.PUBLISH_HIGH_WATER
        promises = []
        seen = {}

        def close_server(pushing_back):
            # Publishes wait for a channel that never gets ready: past the mark, basic_publish blocks.
            seen["publishes returned"] = len(promises) if pushing_back else None
            server.close()

        closer = when(lambda: unsent_bytes(client) > high_water, close_server)
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            with pytest.raises(puka.ConnectionBroken):
                for i in range(128):  # 128 distinct MiB, twice PUBLISH_HIGH_WATER
                    body = bytes([i]) * (1024 * 1024)
                    promises.append(client.basic_publish(exchange="", routing_key="q", body=body))
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
            closer.join(30)
            server.close()
    assert server.error is None
    assert seen == {"publishes returned": len(promises) - 1}
    assert len(promises) == high_water // (1024 * 1024) + 1  # the 65th publish (65 MiB waiting) is the one that blocked
    limit = high_water + 16 * 1024 * 1024
    assert peak < limit, "%.0f MiB held for publishes that cannot be sent" % (peak / 2**20)
    results = [client.wait(n, raise_errors=False, timeout=0) for n in promises]
    assert collections.Counter(outcome(r) for r in results) == {"ConnectionBroken": len(promises)}


# --- 13. no leak over many cycles ----------------------------------------------------------------------

LEAK_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, threading, warnings
    import puka
    from faults import Proxy, fd_count, pump

    url = sys.argv[1]
    p = puka.parse_amqp_url(url)

    def cycle(url):
        client = puka.Client(url)
        client.wait(client.connect(), timeout=10)
        client.wait(client.close(), timeout=10)

    def forced(proxy, i):
        client = puka.Client(proxy.url, recovery=False)
        down = proxy.bytes_down
        number = client.connect()
        if i % 3 == 0:
            # cut in the middle of the handshake: once connection.start came through
            assert pump(client, lambda: proxy.bytes_down > down, timeout=10)
        else:
            client.wait(number, timeout=10)
            if i % 3 == 2:
                client.basic_publish(exchange="", routing_key="nowhere", body=b"x" * 1000)
        proxy.cut()
        try:
            client.wait(client.queue_declare(queue="", exclusive=True), timeout=10)
        except puka.ConnectionBroken:
            pass
        else:
            raise AssertionError("no ConnectionBroken after a cut")
        client.close()

    cycle(url)  # warm up: imports, caches
    gc.collect()
    fds, threads = fd_count(), threading.active_count()
    for _ in range(200):
        cycle(url)
    with Proxy((p.host, p.port), p.vhost, p.username, p.password) as proxy:
        for i in range(100):
            forced(proxy, i)
    gc.collect()
    print(json.dumps({"fds": [fds, fd_count()], "threads": [threads, threading.active_count()]}))
    """
)


def test_connect_close_and_forced_close_cycles_leak_nothing(amqp_url, tmp_path):
    script = tmp_path / "leaks.py"
    script.write_text(LEAK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), PYTHONDEVMODE="1")
    out = subprocess.run(
        [sys.executable, "-W", "error", str(script), amqp_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Warning" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[-3000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["fds"][1] == counts["fds"][0], counts
    assert counts["threads"][1] == counts["threads"][0], counts


def test_proxy_itself_leaks_no_thread_or_fd(amqp_url):
    from faults import fd_count

    fds, threads = fd_count(), threading.active_count()
    with proxy_for(amqp_url) as proxy:
        client = connect(proxy.url, recovery=False)
        client.wait(client.queue_declare(exclusive=True), timeout=5)
        proxy.stall()
        proxy.resume()
        proxy.throttle(10_000)
        proxy.slice(3)
        client.wait(client.queue_declare(exclusive=True), timeout=5)
        proxy.cut()
        assert wait_until(lambda: proxy.active == 0, 10)
        with pytest.raises(puka.ConnectionBroken):
            client.wait(client.queue_declare(exclusive=True), timeout=5)
    # fewer if an earlier test's socket or thread ended meanwhile
    assert fd_count() <= fds and threading.active_count() <= threads
