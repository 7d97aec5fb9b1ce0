"""The client against a real RabbitMQ: the puka API, operation by operation."""

from __future__ import annotations

import select
import subprocess
import time

import pytest
from faults import pump
from seam import install_client_clock

import puka
from puka.tracing import FrameRecorder


def drain(client, consume, count, timeout=10.0, ack=True):
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        msg = client.wait(consume, timeout=max(0.0, deadline - time.monotonic()))
        assert msg is not None, "only %d of %d messages arrived" % (len(messages), count)
        if ack:
            client.basic_ack(msg)
        messages.append(msg)
    return messages


# --- connection ---------------------------------------------------------------------------------


def test_connect_reports_the_broker_and_close_ends_the_connection(amqp_url):
    client = puka.Client(amqp_url)
    result = client.wait(client.connect())
    assert result["server_properties"]["product"] == "RabbitMQ"
    assert client.wait(client.close()) == {}
    with pytest.raises(puka.ConnectionBroken):
        client.queue_declare(queue="anything")


def test_context_manager_connects_and_closes(amqp_url):
    with puka.Client(amqp_url) as client:
        assert client.wait(client.queue_declare(queue="", exclusive=True))["queue"].startswith("amq.gen-")
    with pytest.raises(puka.ConnectionBroken):
        client.basic_publish(exchange="", routing_key="x", body=b"")


def test_client_properties_reach_the_broker(amqp_url, name):
    client = puka.Client(amqp_url, client_properties={"connection_name": name})
    client.wait(client.connect())
    try:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "client_properties"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        line = next(line for line in out.splitlines() if name in line)
        assert '"puka"' in line and "publisher_confirms" in line and "authentication_failure_close" in line
    finally:
        client.wait(client.close())


def test_wrong_password_fails_promptly_and_clearly(amqp_url):
    url = amqp_url.replace("guest:guest@", "guest:wrong-secret@")
    # The broker's refusal, not the connection timeout: AccessRefused (403), from a client whose
    # timeout could not pass during the test (the time it takes is benchmarks/test_failure_latency.py's).
    client = puka.Client(url, connection_timeout=3600)
    with pytest.raises(puka.AccessRefused) as info:
        client.wait(client.connect())
    assert info.value.reply_code == 403 and "ACCESS_REFUSED" in str(info.value)
    assert "wrong-secret" not in str(info.value) and "wrong-secret" not in repr(client)
    # Every later call raises ConnectionBroken at once, the broker's error as its cause.
    with pytest.raises(puka.ConnectionBroken) as later:
        client.queue_declare(queue="anything")
    assert later.value.__cause__ is info.value


def test_refused_connection_fails_promptly():
    client = puka.Client("amqp://guest:guest@127.0.0.1:1/", connection_timeout=3600)
    with pytest.raises(puka.ConnectionBroken, match="cannot connect to 127.0.0.1:1: Connection refused"):
        client.wait(client.connect())


def test_unknown_vhost_fails_the_connect_promise(amqp_url):
    client = puka.Client(amqp_url.rstrip("/") + "/no-such-vhost-for-puka")
    with pytest.raises(puka.NotAllowed) as info:
        client.wait(client.connect(), timeout=10)
    assert info.value.reply_code == 530 and "no-such-vhost-for-puka" in str(info.value)


def heartbeat_offered(recorder):
    """The heartbeat the client said in connection.tune-ok (what the broker will hold it to)."""
    (tune_ok,) = [f.method for f in recorder.frames if f.direction == "out" and f.name == "connection.tune-ok"]
    return tune_ok["heartbeat"]


def test_heartbeat_is_negotiated(amqp_url, monkeypatch):
    clock = install_client_clock(monkeypatch)
    recorder = FrameRecorder()
    client = puka.Client(amqp_url, heartbeat=3, middleware=[recorder], recovery=False)  # fail-fast: it gives up
    client.wait(client.connect())
    (tune,) = [f.method for f in recorder.frames if f.name == "connection.tune"]
    assert tune["heartbeat"] > 3  # RabbitMQ proposes 60: the smaller value wins
    assert heartbeat_offered(recorder) == 3

    def heartbeats_sent():
        return recorder.names("out").count("heartbeat")

    # The client sends a heartbeat once it has sent nothing for N/2 seconds (nothing else is sent here)...
    clock.advance(1.4)
    assert client.on_timer() == pytest.approx(0.1)  # seconds until the next one is due
    assert heartbeats_sent() == 0
    for sent, step in ((1, 0.11), (2, 1.6), (3, 1.6)):  # at 1.51 s, 3.11 s, 4.71 s
        clock.advance(step)
        client.on_timer()
        assert heartbeats_sent() == sent
    # ...and gives the broker up once nothing arrived for two intervals (nothing was read since connecting).
    clock.advance(1.19)  # 5.9 s
    assert client.on_timer() == pytest.approx(0.1)
    clock.advance(0.2)  # 6.1 s
    client.on_timer()
    assert heartbeats_sent() == 3
    with pytest.raises(puka.ConnectionBroken, match=r"no data or heartbeat .* \(heartbeat 3s\): peer presumed dead"):
        client.queue_declare(queue="anything")


def test_repr_never_shows_the_password(amqp_url):
    client = puka.Client("amqp://user:s3cr3t-pw@localhost/")
    assert "s3cr3t-pw" not in repr(client)
    assert "s3cr3t-pw" not in repr(client.params)


# --- exchanges and queues ------------------------------------------------------------------------


def test_queue_declare_purge_delete(client, name):
    declared = client.wait(client.queue_declare(queue=name, durable=False))
    assert declared == {"queue": name, "message_count": 0, "consumer_count": 0}
    for i in range(3):
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"%d" % i))
    assert client.wait(client.queue_declare(queue=name, passive=True))["message_count"] == 3
    assert client.wait(client.queue_purge(queue=name))["message_count"] == 3
    assert client.wait(client.queue_delete(queue=name))["message_count"] == 0


def test_passive_declare_of_a_missing_queue_fails_only_that_promise(client, name):
    with pytest.raises(puka.NotFound) as info:
        client.wait(client.queue_declare(queue=name, passive=True))
    assert info.value.reply_code == 404 and name in str(info.value)
    # The client stays usable.
    assert client.wait(client.queue_declare(queue=name, auto_delete=True))["queue"] == name


def test_redeclare_with_other_arguments_is_precondition_failed(client, name):
    client.wait(client.queue_declare(queue=name, auto_delete=True, arguments={"x-message-ttl": 1000}))
    bad = client.queue_declare(queue=name, auto_delete=True, arguments={"x-message-ttl": 2000})
    good = client.queue_declare(queue=name, auto_delete=True, arguments={"x-message-ttl": 1000})
    result = client.wait(bad, raise_errors=False)
    assert result.is_error and isinstance(result.exception, puka.PreconditionFailed)
    assert client.wait(good)["queue"] == name


def test_exchange_declare_bind_route_unbind_delete(client, name):
    source, destination = name + "-src", name + "-dst"
    client.wait(client.exchange_declare(exchange=source, type="topic", auto_delete=False))
    client.wait(client.exchange_declare(exchange=destination, type="fanout"))
    client.wait(client.exchange_declare(exchange=source, type="topic", passive=True))
    client.wait(client.exchange_bind(destination=destination, source=source, routing_key="a.*"))
    q = client.wait(client.queue_declare(exclusive=True))["queue"]
    client.wait(client.queue_bind(queue=q, exchange=destination))
    client.wait(client.basic_publish(exchange=source, routing_key="a.b", body=b"routed"))
    client.wait(client.basic_publish(exchange=source, routing_key="b.b", body=b"dropped"))
    got = client.wait(client.basic_get(queue=q, no_ack=True))
    assert got["body"] == b"routed" and got["exchange"] == source and got["routing_key"] == "a.b"
    assert client.wait(client.basic_get(queue=q)) == {"empty": True}
    client.wait(client.exchange_unbind(destination=destination, source=source, routing_key="a.*"))
    client.wait(client.queue_unbind(queue=q, exchange=destination))
    client.wait(client.basic_publish(exchange=source, routing_key="a.b", body=b"unbound"))
    assert client.wait(client.basic_get(queue=q))["empty"]
    client.wait(client.exchange_delete(exchange=destination))
    client.wait(client.exchange_delete(exchange=source, if_unused=True))
    with pytest.raises(puka.NotFound):
        client.wait(client.exchange_declare(exchange=source, passive=True))


def test_five_hundred_declares_in_parallel(amqp_url, name):
    recorder = FrameRecorder()
    client = puka.Client(amqp_url, middleware=[recorder])
    client.wait(client.connect())
    try:
        promises = [client.queue_declare(queue="%s-%d" % (name, i), exclusive=True) for i in range(500)]
        results = client.wait_for_all(promises)
    finally:
        client.wait(client.close())
    assert [r["queue"] for r in results] == ["%s-%d" % (name, i) for i in range(500)]
    # Short operations share a pool of at most 64 channels (docs/promises.rst): opening one costs the
    # broker more than a declare, so 500 declares go out 64 at a time, each channel taking the next.
    out = [f for f in recorder.frames if f.direction == "out"]
    declare_channels = {f.channel for f in out if f.name == "queue.declare"}
    opened = [f.channel for f in out if f.name == "channel.open"]
    assert len(declare_channels) == 64
    assert sorted(c for c in opened if c in declare_channels) == sorted(declare_channels)  # each opened once


# --- publishing ------------------------------------------------------------------------------------


def test_headers_carry_properties_and_application_headers(client, queue):
    headers = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 3,
        "correlation_id": "corr-1",
        "reply_to": "replies",
        "expiration": "60000",
        "message_id": "m-1",
        "timestamp": 1700000000,
        "type_": "order.created",
        "user_id": "guest",
        "app_id": "tests",
        "x-attempt": 2,
        "x-tags": ["a", "b"],
        "x-nested": {"k": True},
    }
    before = dict(headers)
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"{}", headers=headers))
    assert headers == before  # the caller's dict is not modified
    msg = client.wait(client.basic_get(queue=queue, no_ack=True))
    assert msg["headers"] == headers
    assert msg["body"] == b"{}"


@pytest.mark.parametrize(
    "body,expected",
    [
        (b"bytes", b"bytes"),
        (bytearray(b"bytearray"), b"bytearray"),
        (memoryview(b"memoryview"), b"memoryview"),
        ("str é", "str é".encode()),
        (b"", b""),
    ],
)
def test_bodies_of_every_accepted_type(client, queue, body, expected):
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=body))
    msg = client.wait(client.basic_get(queue=queue, no_ack=True))
    assert msg["body"] == expected and type(msg["body"]) is bytes


def test_pipelined_publishes_are_all_confirmed(client, queue):
    promises = [client.basic_publish(exchange="", routing_key=queue, body=b"m%d" % i) for i in range(5000)]
    results = client.wait_for_all(promises)
    assert all(r == {} and not r.is_error for r in results)
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 5000


def test_return_fails_exactly_the_returned_publish_among_thousands(client, queue):
    promises = []
    for i in range(3000):
        routing_key = "no-such-queue-%d" % i if i == 1777 else queue
        promises.append(client.basic_publish(exchange="", routing_key=routing_key, body=b"%d" % i, mandatory=True))
    results = [client.wait(p, raise_errors=False) for p in promises]
    failed = [i for i, r in enumerate(results) if r.is_error]
    assert failed == [1777]
    assert isinstance(results[1777].exception, puka.NoRoute)
    assert results[1777]["routing_key"] == "no-such-queue-1777"
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 2999


def test_publish_to_a_missing_exchange_fails_and_later_publishes_work(client, queue, name):
    with pytest.raises(puka.NotFound) as info:
        client.wait(client.basic_publish(exchange=name + "-missing", routing_key="x", body=b"lost"))
    assert info.value.method_name == "basic.publish"
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"after"))
    assert client.wait(client.basic_get(queue=queue))["body"] == b"after"


def test_error_on_the_publish_channel_fails_all_publishes_in_flight(client, queue, name):
    """A publish channel error fails every publish in flight to that exchange, and only those."""
    missing = name + "-missing"
    first = [client.basic_publish(exchange="", routing_key=queue, body=b"a") for _ in range(50)]
    bad = [client.basic_publish(exchange=missing, routing_key="x", body=b"lost %d" % i) for i in range(5)]
    after = [client.basic_publish(exchange="", routing_key=queue, body=b"b") for _ in range(50)]
    failed = [client.wait(p, raise_errors=False) for p in bad]
    assert [type(r.exception) for r in failed] == [puka.NotFound] * 5
    assert all(r.exception.method_name == "basic.publish" and missing in str(r.exception) for r in failed)
    # The default exchange publishes on a channel of its own: none of its publishes is affected.
    assert client.wait_for_all(first + after) == [{}] * 100
    # The failed channel is reopened: publishes to that exchange fail for their own reason, once each.
    with pytest.raises(puka.NotFound):
        client.wait(client.basic_publish(exchange=missing, routing_key="x", body=b"again"))
    assert client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"later")) == {}
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 101


def test_pubacks_false_emulates_confirms(amqp_url, queue):
    client = puka.Client(amqp_url, pubacks=False)
    client.wait(client.connect())
    try:
        ok = [client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(100)]
        returned = client.basic_publish(exchange="", routing_key="no-such-queue", body=b"x", mandatory=True)
        assert all(r == {} for r in client.wait_for_all(ok))
        assert isinstance(client.wait(returned, raise_errors=False).exception, puka.NoRoute)
    finally:
        client.wait(client.close())


def test_bad_publish_arguments_raise_at_the_call_and_send_nothing(client, queue):
    with pytest.raises(TypeError):
        client.basic_publish(exchange="", routing_key=queue, body=12345)
    with pytest.raises(TypeError, match="x-bad"):
        client.basic_publish(exchange="", routing_key=queue, body=b"", headers={"x-bad": object()})
    with pytest.raises(ValueError):
        client.basic_publish(exchange="", routing_key="r" * 256, body=b"")
    with pytest.raises(ValueError):
        client.basic_publish(exchange="", routing_key=queue, body=b"", headers={"delivery_mode": 3})
    with pytest.raises(ValueError):
        client.basic_publish(exchange="", routing_key=queue, body=b"", headers={"priority": 256})
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"fine"))
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 1


def test_large_message_round_trip(client, queue):
    body = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=body))
    msg = client.wait(client.basic_get(queue=queue, no_ack=True))
    assert len(msg["body"]) == len(body) and msg["body"] == body


# --- consuming -------------------------------------------------------------------------------------


def test_consume_ack_and_cancel(client, queue):
    for i in range(20):
        client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i)
    consume = client.basic_consume(queue=queue, prefetch_count=5)
    messages = drain(client, consume, 20)
    assert [m["body"] for m in messages] == [b"%d" % i for i in range(20)]
    assert all(m["promise_number"] == consume for m in messages)
    client.wait(client.basic_cancel(consume))
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 0


def test_prefetch_limits_unacked_deliveries_and_basic_qos_changes_it(client, queue):
    for i in range(30):
        client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i)
    consume = client.basic_consume(queue=queue, prefetch_count=4)
    held = drain(client, consume, 4, ack=False)
    assert client.wait(consume, timeout=0.5) is None  # the window is full
    client.wait(client.basic_qos(consume, prefetch_count=10))
    # The new window counts the 4 held from before: 6 more, then it is full.
    more = drain(client, consume, 6, ack=False)
    assert client.wait(consume, timeout=0.5) is None
    for msg in held + more:
        client.basic_ack(msg)
    drain(client, consume, 20)
    client.wait(client.basic_cancel(consume))


def test_consume_multi_reads_every_queue(client, name):
    queues = ["%s-%d" % (name, i) for i in range(3)]
    for q in queues:
        client.wait(client.queue_declare(queue=q, auto_delete=True))
        client.wait(client.basic_publish(exchange="", routing_key=q, body=q.encode()))
    consume = client.basic_consume_multi(queues, prefetch_count=10)
    bodies = sorted(m["body"] for m in drain(client, consume, 3))
    assert bodies == sorted(q.encode() for q in queues)
    client.wait(client.basic_cancel(consume))


def test_deleting_the_queue_resolves_the_consume_promise(client, name):
    client.wait(client.queue_declare(queue=name))
    consume = client.basic_consume(queue=name)
    assert client.wait(consume, timeout=0.3) is None
    client.wait(client.queue_delete(queue=name))
    with pytest.raises(puka.ConsumerCancelled):
        client.wait(consume, timeout=5)


def test_reject_requeues_and_nack_discards(client, queue):
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"again"))
    consume = client.basic_consume(queue=queue)
    first = client.wait(consume, timeout=5)
    client.basic_reject(first)
    second = client.wait(consume, timeout=5)
    assert second["body"] == b"again" and second["redelivered"] is True
    client.basic_nack(second, requeue=False)
    assert client.wait(consume, timeout=0.5) is None
    client.wait(client.basic_cancel(consume))
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 0


def test_acking_twice_is_an_error_at_the_call(client, queue):
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"once"))
    msg = client.wait(client.basic_get(queue=queue))
    client.basic_ack(msg)
    with pytest.raises(ValueError, match="not awaiting"):
        client.basic_ack(msg)
    # Still usable.
    assert client.wait(client.basic_get(queue=queue))["empty"]


def test_acking_a_message_of_another_client_is_an_error(amqp_url, client, queue):
    other = puka.Client(amqp_url)
    other.wait(other.connect())
    try:
        other.wait(other.basic_publish(exchange="", routing_key=queue, body=b"theirs"))
        msg = other.wait(other.basic_get(queue=queue))
        with pytest.raises(ValueError):
            client.basic_ack(msg)
        other.basic_ack(msg)
    finally:
        other.wait(other.close())


def test_basic_get_empty_and_ack(client, queue):
    empty = client.wait(client.basic_get(queue=queue))
    assert empty["empty"] is True and "body" not in empty
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"got"))
    msg = client.wait(client.basic_get(queue=queue))
    assert msg["body"] == b"got" and msg["message_count"] == 0
    client.basic_ack(msg)
    assert client.wait(client.basic_get(queue=queue))["empty"]


# --- promises, callbacks and the loop -------------------------------------------------------------


def test_callbacks_run_in_loop_until_loop_break(client, queue):
    seen = []
    published = []

    def done_yet():
        # Deliveries may overtake the confirms of their publishes: wait for both.
        if len(seen) == 10 and len(published) == 10:
            client.loop_break()

    def on_message(promise, msg):
        seen.append(msg["body"])
        client.basic_ack(msg)
        done_yet()

    def on_confirm(promise, result):
        published.append(promise)
        done_yet()

    for i in range(10):
        client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i, callback=on_confirm)
    consume = client.basic_consume(queue=queue, callback=on_message)
    client.loop(timeout=10)
    assert seen == [b"%d" % i for i in range(10)]
    assert len(published) == 10
    client.wait(client.basic_cancel(consume))


def test_wait_timeout_returns_none_and_raise_errors_false_returns_the_error(client, queue, name):
    consume = client.basic_consume(queue=queue, no_ack=True)
    assert client.wait(consume, timeout=0.3) is None
    # The operation goes on after the timeout: wait again later.
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"later"))
    assert client.wait(consume)["body"] == b"later"
    client.wait(client.basic_cancel(consume))
    result = client.wait(client.queue_declare(queue=name + "-missing", passive=True), raise_errors=False)
    assert result.is_error and isinstance(result.exception, puka.NotFound)
    assert result["reply_code"] == 404


def test_wait_on_several_promises_returns_the_first_ready(client, queue):
    idle = client.wait(client.queue_declare(exclusive=True))["queue"]
    never = client.basic_consume(queue=idle)  # nothing is ever published there
    consume = client.basic_consume(queue=queue)
    declare = client.queue_declare(queue=queue, passive=True)
    declared = client.wait([never, consume, declare])  # the consumers get nothing: the declare answers first
    assert declared["queue"] == queue and declared["message_count"] == 0
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"x"))
    message = client.wait([never, consume])
    assert message["body"] == b"x" and message["promise_number"] == consume
    client.basic_ack(message)
    assert client.wait([never, consume], timeout=0.2) is None  # both still going: wait again later
    client.wait(client.basic_cancel(never))
    client.wait(client.basic_cancel(consume))


def test_set_callback_and_run_any_callbacks(client, queue):
    calls = []
    p = client.queue_declare(queue=queue, passive=True)
    client.set_callback(p, lambda number, result: calls.append((number, result["queue"])))
    # The event loop of docs/promises.rst ("Driving the client from your own event loop").
    fd = client.fileno()
    for _round in range(1000):
        client.run_any_callbacks()
        if calls:
            break
        readable, writable, _ = select.select([fd], [fd] if client.needs_write() else [], [], client.on_timer() or 1)
        if readable:
            client.on_read()
        if writable:
            client.on_write()
    assert calls == [(p, queue)]


# --- acknowledgements on the wire -------------------------------------------------------------------


def ack_frames(recorder):
    return [f for f in recorder.frames if f.direction == "out" and f.name == "basic.ack"]


def test_in_order_acks_given_between_two_calls_go_out_as_one_multiple_ack(amqp_url, queue):
    recorder = FrameRecorder()
    client = puka.Client(amqp_url, middleware=[recorder])
    client.wait(client.connect())
    try:
        for i in range(100):
            client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i)
        consume = client.basic_consume(queue=queue, prefetch_count=100)
        # The whole window arrives; half of it is taken, half still waits in the client.
        assert pump(client, lambda: recorder.names("in").count("basic.deliver") == 100, 10)
        taken = drain(client, consume, 50, ack=False)
        for message in taken:
            client.basic_ack(message)  # further deliveries wait in the client: deferred, merged
        assert ack_frames(recorder) == [], "acks given between two calls went out one by one"
        client.wait(client.queue_declare(queue=queue, passive=True))  # any call writes them first
        acks = ack_frames(recorder)
        assert [(f.method["delivery_tag"], f.method["multiple"]) for f in acks] == [(50, True)]
        drain(client, consume, 50)
        client.wait(client.basic_cancel(consume))
        assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 0
    finally:
        client.wait(client.close())


def test_out_of_order_acks_and_rejects_settle_exactly_their_messages(amqp_url, queue):
    client = puka.Client(amqp_url)
    client.wait(client.connect())
    for body in (b"one", b"two", b"three", b"four"):
        client.basic_publish(exchange="", routing_key=queue, body=body)
    consume = client.basic_consume(queue=queue, prefetch_count=10)
    one, two, three, four = drain(client, consume, 4, ack=False)
    client.basic_ack(three)  # out of order: sent at once, alone
    client.basic_ack(one)  # deferred: everything up to it is settled
    client.basic_reject(two, requeue=True)  # goes back to the queue
    client.basic_ack(four)  # deferred, covers 3 and 4 only (2 is already rejected)
    again = client.wait(consume, timeout=5)
    assert again["body"] == b"two" and again["redelivered"] is True
    client.basic_ack(again)
    client.wait(client.basic_cancel(consume))
    client.wait(client.close())
    # A fresh connection finds nothing left: every settlement reached the broker.
    other = puka.Client(amqp_url)
    other.wait(other.connect())
    try:
        assert other.wait(other.queue_declare(queue=queue, passive=True))["message_count"] == 0
    finally:
        other.wait(other.close())
