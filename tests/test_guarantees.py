"""The guarantees of docs/reliability.rst that no other test checks, one test each, and the table that maps
every guarantee of that page to the tests that check it (kept honest by a test of its own, at the end).

Against the real RabbitMQ.  :class:`faults.FakeServer` only for what RabbitMQ will not do here (answer
with a protocol header, stay silent, never answer connection.close, send a multiple nack, block the
connection without a resource alarm); :class:`faults.Proxy` for a cut.  Only the public API: what is on
the wire is seen through :class:`puka.tracing.FrameRecorder`.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from faults import FakeServer, Proxy, method, wait_until

import puka
from puka.tracing import FrameRecorder

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
DOCS = os.path.join(ROOT, "docs")

#: What the broker says, for every wait on it: generous, never a measure of speed.
PATIENCE = 30

#: A failed first connect fails the same way with or without recovery (docs/reliability.rst, "Recovery":
#: the first connect() tries every host once and fails fast): the fail-fast client and the default one.
EITHER_MODE = pytest.mark.parametrize("mode", [{"recovery": False}, {}], ids=["recovery=False", "default"])


def connect(url, **kwargs):
    client = puka.Client(url, **kwargs)
    client.wait(client.connect(), timeout=PATIENCE)
    return client


def take(client, consume, count):
    """The next ``count`` messages of a consume promise (not settled)."""
    messages = []
    for _ in range(count):
        message = client.wait(consume, timeout=PATIENCE)
        assert message is not None, "only %d of %d messages arrived" % (len(messages), count)
        messages.append(message)
    return messages


def queue_state(client, queue):
    return client.wait(client.queue_declare(queue=queue, passive=True), timeout=PATIENCE)


def out_frames(recorder, name, start=0, channel=None):
    return [
        (index, frame)
        for index, frame in enumerate(recorder.frames[start:], start)
        if frame.direction == "out" and frame.name == name and (channel is None or frame.channel == channel)
    ]


def in_frames(recorder, name, start=0, channel=None):
    return [
        (index, frame)
        for index, frame in enumerate(recorder.frames[start:], start)
        if frame.direction == "in" and frame.name == name and (channel is None or frame.channel == channel)
    ]


# --- publish channels -----------------------------------------------------------------------------


@pytest.mark.parametrize("cause", ["missing exchange", "refused message"])
def test_publishes_made_while_the_publish_channel_reopens_are_not_lost(amqp_url, client, queue, name, cause):
    exchange = name + "-x"
    if cause == "refused message":
        client.wait(client.exchange_declare(exchange=exchange, auto_delete=True))
        client.wait(client.queue_bind(queue=queue, exchange=exchange, routing_key="k"))
    recorder = FrameRecorder()
    publisher = connect(amqp_url, middleware=[recorder])
    try:
        if cause == "missing exchange":
            bad = publisher.basic_publish(exchange=exchange, routing_key="k", body=b"lost")
            expected = puka.NotFound
        else:  # RabbitMQ refuses a user_id that is not the connection's user: 406, on an existing exchange
            other_user = "not-" + puka.parse_amqp_url(amqp_url).username
            bad = publisher.basic_publish(
                exchange=exchange, routing_key="k", body=b"lost", headers={"user_id": other_user}
            )
            expected = puka.PreconditionFailed
        with pytest.raises(expected):
            publisher.wait(bad, timeout=PATIENCE)
        [(_, sent)] = out_frames(recorder, "basic.publish")
        channel = sent.channel
        [(closed_at, _)] = in_frames(recorder, "channel.close", channel=channel)
        # The channel is closed; puka asked for it again, and no answer was read yet (the client ran no I/O
        # since wait() returned).  Publishes made now wait for it.
        queued = [publisher.basic_publish(exchange=exchange, routing_key="k", body=b"%d" % i) for i in range(100)]
        assert out_frames(recorder, "basic.publish", closed_at) == []
        if cause == "missing exchange":  # declared meanwhile, by another client
            client.wait(client.exchange_declare(exchange=exchange, auto_delete=True))
            client.wait(client.queue_bind(queue=queue, exchange=exchange, routing_key="k"))
        assert publisher.wait_for_all(queued) == [{}] * 100
        # On the wire: they went out on that channel once it was open again, in confirm mode.
        [(ready_at, _)] = in_frames(recorder, "confirm.select-ok", closed_at, channel=channel)
        resent = out_frames(recorder, "basic.publish", closed_at)
        assert len(resent) == 100
        assert all(frame.channel == channel and index > ready_at for index, frame in resent)
    finally:
        publisher.wait(publisher.close(), timeout=PATIENCE)
    consume = client.basic_consume(queue=queue, prefetch_count=100)
    messages = take(client, consume, 100)
    assert [m["body"] for m in messages] == [b"%d" % i for i in range(100)]  # all there, in order, once
    client.basic_ack(messages[-1], multiple=True)
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    assert queue_state(client, queue)["message_count"] == 0


def test_a_channel_error_result_holds_the_channel_close_fields(amqp_url, client, name):
    vhost = puka.parse_amqp_url(amqp_url).vhost
    result = client.wait(client.queue_declare(queue=name, passive=True), raise_errors=False, timeout=PATIENCE)
    assert isinstance(result.exception, puka.NotFound)
    assert dict(result) == {
        "reply_code": 404,
        "reply_text": "NOT_FOUND - no queue '%s' in vhost '%s'" % (name, vhost),
        "class_id": 50,  # queue
        "method_id": 10,  # declare
    }
    assert result.exception.method_name == "queue.declare"
    assert client.wait(client.queue_declare(queue=name, exclusive=True), timeout=PATIENCE)["queue"] == name


def test_a_refused_message_fails_the_publishes_sent_behind_it_to_its_exchange(amqp_url, client, queue, name):
    exchange = name + "-x"
    client.wait(client.exchange_declare(exchange=exchange, auto_delete=True))
    client.wait(client.queue_bind(queue=queue, exchange=exchange, routing_key="k"))
    publisher = connect(amqp_url)
    try:
        assert publisher.wait(publisher.basic_publish(exchange=exchange, routing_key="k", body=b"ready")) == {}
        other_user = "not-" + puka.parse_amqp_url(amqp_url).username
        bad = publisher.basic_publish(exchange=exchange, routing_key="k", body=b"bad", headers={"user_id": other_user})
        behind = [publisher.basic_publish(exchange=exchange, routing_key="k", body=b"behind") for _ in range(20)]
        elsewhere = [publisher.basic_publish(exchange="", routing_key=queue, body=b"elsewhere") for _ in range(20)]
        with pytest.raises(puka.PreconditionFailed) as info:
            publisher.wait(bad, timeout=PATIENCE)
        assert info.value.reply_code == 406 and "user_id" in str(info.value)
        # Never reported as confirmed: the broker dropped what followed the refused message on its channel.
        for number in behind:
            result = publisher.wait(number, raise_errors=False, timeout=PATIENCE)
            assert isinstance(result.exception, puka.PreconditionFailed)
        assert publisher.wait_for_all(elsewhere) == [{}] * 20  # another exchange, another channel
    finally:
        publisher.wait(publisher.close(), timeout=PATIENCE)
    assert queue_state(client, queue)["message_count"] == 21  # 'ready' and 'elsewhere'


@pytest.mark.parametrize(
    "headers",
    [{"expiration": "soon"}, {"expiration": 60000}, {"delivery_mode": 0}, {"delivery_mode": 3}],
    ids=["expiration 'soon'", "expiration 60000 (int)", "delivery_mode 0", "delivery_mode 3"],
)
def test_what_puka_can_check_is_refused_at_the_call_and_nothing_is_sent(amqp_url, queue, headers):
    recorder = FrameRecorder()
    publisher = connect(amqp_url, middleware=[recorder])
    try:
        with pytest.raises(ValueError):
            publisher.basic_publish(exchange="", routing_key=queue, body=b"refused", headers=headers)
        assert publisher.wait(publisher.basic_publish(exchange="", routing_key=queue, body=b"fine")) == {}
        bodies = [frame.size for _, frame in out_frames(recorder, "body")]
        assert bodies == [len(b"fine")]
    finally:
        publisher.wait(publisher.close(), timeout=PATIENCE)


@pytest.fixture
def exchanges(client, queue, name):
    """130 direct exchanges, the i-th bound to ``queue`` by routing keys 'k-<i>' and 'k' (deleted after the test)."""
    names = ["%s-%03d" % (name, i) for i in range(130)]
    client.wait_for_all([client.exchange_declare(exchange=x) for x in names])
    client.wait_for_all(
        [client.queue_bind(queue=queue, exchange=x, routing_key="k-%03d" % i) for i, x in enumerate(names)]
        + [client.queue_bind(queue=queue, exchange=x, routing_key="k") for x in names]
    )
    yield names
    client.wait_for_all([client.exchange_delete(exchange=x) for x in names], raise_errors=False)


def publish_to_each(publisher, exchanges):
    """One confirmed publish to each exchange, routing key 'k-<i>'; returns the channel each one used."""
    recorder = next(m for m in publisher.middleware if isinstance(m, FrameRecorder))
    mark = len(recorder.frames)
    promises = [
        publisher.basic_publish(exchange=x, routing_key="k-%03d" % i, body=x.encode()) for i, x in enumerate(exchanges)
    ]
    assert publisher.wait_for_all(promises) == [{}] * len(exchanges)
    channel_of = {frame.method["exchange"]: frame.channel for _, frame in out_frames(recorder, "basic.publish", mark)}
    return [channel_of[x] for x in exchanges]


def test_publishing_to_more_than_128_exchanges_shares_the_default_exchanges_channel(
    amqp_url, client, queue, name, exchanges
):
    recorder = FrameRecorder()
    publisher = connect(amqp_url, middleware=[recorder])
    try:
        channels = publish_to_each(publisher, exchanges)
        # Channel 1 is the default exchange's; 127 more exchanges get one each (128 in all), the others share 1.
        assert 1 not in channels[:127] and len(set(channels[:127])) == 127
        assert channels[127:] == [1, 1, 1]

        # An error on the shared channel fails the publishes in flight on it, whatever their exchange:
        # here a 131st exchange that does not exist fails the default exchange's publishes sent behind it.
        mark = len(recorder.frames)
        own = [publisher.basic_publish(exchange=exchanges[0], routing_key="k-000", body=b"own") for _ in range(20)]
        bad = publisher.basic_publish(exchange=name + "-missing", routing_key="missing", body=b"lost")
        behind = [publisher.basic_publish(exchange="", routing_key=queue, body=b"behind") for _ in range(20)]
        assert isinstance(publisher.wait(bad, raise_errors=False, timeout=PATIENCE).exception, puka.NotFound)
        for number in behind:
            result = publisher.wait(number, raise_errors=False, timeout=PATIENCE)
            assert isinstance(result.exception, puka.NotFound) and result.exception.method_name == "basic.publish"
        # An exchange with a channel of its own is not affected.
        assert publisher.wait_for_all(own) == [{}] * 20
        sent = [(frame.method["exchange"], frame.channel) for _, frame in out_frames(recorder, "basic.publish", mark)]
        assert sent == [(exchanges[0], channels[0])] * 20 + [(name + "-missing", 1)] + [("", 1)] * 20
        # The shared channel reopens: both kinds of publish work again.
        again = [
            publisher.basic_publish(exchange="", routing_key=queue, body=b"default"),
            publisher.basic_publish(exchange=exchanges[-1], routing_key="k-129", body=b"shared"),
        ]
        assert publisher.wait_for_all(again) == [{}, {}]
    finally:
        publisher.wait(publisher.close(), timeout=PATIENCE)
    # Every confirmed message arrived, through its own exchange; those that failed did not.
    consume = client.basic_consume(queue=queue, prefetch_count=200, no_ack=True)
    arrived = [(m["exchange"], m["body"]) for m in take(client, consume, 130 + 20 + 2)]
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    expected = [(x, x.encode()) for x in exchanges] + [(exchanges[0], b"own")] * 20
    assert sorted(arrived) == sorted(expected + [("", b"default"), (exchanges[-1], b"shared")])
    assert queue_state(client, queue)["message_count"] == 0


def test_a_shared_publish_channel_sends_each_publish_to_its_own_exchange(amqp_url, client, queue, exchanges):
    # On the shared channel 1, publishes with the same routing key (and mandatory flag) to different
    # exchanges each go to their own exchange (puka once sent them to the first exchange used there).
    recorder = FrameRecorder()
    publisher = connect(amqp_url, middleware=[recorder])
    try:
        publish_to_each(publisher, exchanges[:127])  # every publish channel of its own is taken
        mark = len(recorder.frames)
        promises = [
            publisher.basic_publish(exchange=exchanges[127], routing_key="k", body=b"to 127"),
            publisher.basic_publish(exchange=exchanges[128], routing_key="k", body=b"to 128"),
            publisher.basic_publish(exchange="", routing_key=queue, body=b"to the default exchange"),
            # exchanges[129] has no binding for this key: the broker confirms it and drops it.
            publisher.basic_publish(exchange=exchanges[129], routing_key=queue, body=b"to 129"),
        ]
        assert publisher.wait_for_all(promises) == [{}] * 4
        sent = [
            (f.method["exchange"], f.method["routing_key"], f.channel)
            for _, f in out_frames(recorder, "basic.publish", mark)
        ]
        assert sent == [(exchanges[127], "k", 1), (exchanges[128], "k", 1), ("", queue, 1), (exchanges[129], queue, 1)]
        # Behind them on the same channel, once they are all confirmed (so all in the queue already).
        sentinel = publisher.basic_publish(exchange="", routing_key=queue, body=b"sentinel")
        assert publisher.wait(sentinel, timeout=PATIENCE) == {}
    finally:
        publisher.wait(publisher.close(), timeout=PATIENCE)
    consume = client.basic_consume(queue=queue, prefetch_count=200, no_ack=True)
    arrived = [(m["body"], m["exchange"]) for m in take(client, consume, 127 + 4)][127:]
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    assert arrived == [
        (b"to 127", exchanges[127]),
        (b"to 128", exchanges[128]),
        (b"to the default exchange", ""),
        (b"sentinel", ""),  # not "to 129": it went to exchanges[129], where no binding took it
    ]
    assert queue_state(client, queue)["message_count"] == 0


# --- returned and nacked publishes ----------------------------------------------------------------


def test_a_publish_the_broker_cannot_take_fails_with_publish_nacked(amqp_url, name):
    publisher = connect(amqp_url)
    try:
        full = {"x-max-length": 1, "x-overflow": "reject-publish"}
        publisher.wait(publisher.queue_declare(queue=name, exclusive=True, arguments=full), timeout=PATIENCE)
        first = publisher.basic_publish(exchange="", routing_key=name, body=b"taken")
        second = publisher.basic_publish(exchange="", routing_key=name, body=b"refused: the queue is full")
        assert publisher.wait(first, timeout=PATIENCE) == {}
        result = publisher.wait(second, raise_errors=False, timeout=PATIENCE)
        assert isinstance(result.exception, puka.PublishNacked)
        assert dict(result) == {"delivery_tag": 2}
    finally:
        publisher.wait(publisher.close(), timeout=PATIENCE)


def test_a_returned_publish_fails_with_no_route_and_holds_the_returned_message(client, queue, name):
    headers = {"content_type": "text/plain", "x-attempt": 2}
    returned = client.basic_publish(
        exchange="amq.direct", routing_key=name + "-nowhere", body=b"back", headers=headers, mandatory=True
    )
    routed = client.basic_publish(exchange="", routing_key=queue, body=b"routed", mandatory=True)
    result = client.wait(returned, raise_errors=False, timeout=PATIENCE)
    assert type(result.exception) is puka.NoRoute and result.exception.reply_code == 312
    assert (result["body"], result["exchange"], result["routing_key"]) == (b"back", "amq.direct", name + "-nowhere")
    assert (result["reply_code"], result["reply_text"]) == (312, "NO_ROUTE")
    assert {k: v for k, v in result["headers"].items() if k != "x-puka-promise"} == headers
    assert client.wait(routed, timeout=PATIENCE) == {}


def test_a_multiple_nack_fails_every_publish_up_to_its_tag():
    # RabbitMQ cannot be made to send a multiple nack on demand: a scripted server does.
    def on_publish(server, channel, meth):
        if meth["tag"] == 4:
            return [
                method(channel, "basic.nack", delivery_tag=3, multiple=True, requeue=False),
                method(channel, "basic.ack", delivery_tag=4, multiple=False),
            ]
        return None

    with FakeServer() as server:
        server.on("basic.publish", on_publish)
        client = connect(server.url)
        publishes = [client.basic_publish(exchange="", routing_key="q", body=b"%d" % i) for i in range(1, 5)]
        results = [client.wait(number, raise_errors=False, timeout=PATIENCE) for number in publishes]
        for tag, result in enumerate(results[:3], 1):
            assert isinstance(result.exception, puka.PublishNacked) and dict(result) == {"delivery_tag": tag}
        assert results[3] == {} and not results[3].is_error
        client.wait(client.close(), timeout=PATIENCE)
    assert server.error is None


# --- settling -------------------------------------------------------------------------------------


def test_nack_multiple_requeues_every_earlier_unacked_message_of_the_consume(client, queue):
    client.wait_for_all([client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(5)])
    consume = client.basic_consume(queue=queue, prefetch_count=10)
    held = take(client, consume, 5)
    assert [m["redelivered"] for m in held] == [False] * 5
    client.basic_nack(held[2], multiple=True)  # 0, 1 and 2 go back to the queue; 3 and 4 stay held
    with pytest.raises(ValueError):
        client.basic_ack(held[0])  # settled by the multiple nack
    again = take(client, consume, 3)
    assert [(m["body"], m["redelivered"]) for m in again] == [(b"0", True), (b"1", True), (b"2", True)]
    for message in held[3:] + again:
        client.basic_ack(message)
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    assert queue_state(client, queue)["message_count"] == 0


def test_nack_multiple_without_requeue_discards_every_earlier_unacked_message(client, queue):
    client.wait_for_all([client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(5)])
    consume = client.basic_consume(queue=queue, prefetch_count=10)
    held = take(client, consume, 5)
    client.basic_nack(held[3], multiple=True, requeue=False)  # 0 to 3 are dropped; 4 stays held
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"sentinel"), timeout=PATIENCE)
    # A requeued message would come back before the sentinel, published after the nack.
    [next_message] = take(client, consume, 1)
    assert (next_message["body"], next_message["redelivered"]) == (b"sentinel", False)
    client.basic_ack(held[4])
    client.basic_ack(next_message)
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    assert queue_state(client, queue)["message_count"] == 0


def test_settling_a_no_ack_message_raises_value_error_and_sends_nothing(amqp_url, client, queue):
    client.wait_for_all([client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(2)])
    recorder = FrameRecorder()
    consumer = connect(amqp_url, middleware=[recorder])
    try:
        consume = consumer.basic_consume(queue=queue, no_ack=True)
        first = consumer.wait(consume, timeout=PATIENCE)
        for settle in (consumer.basic_ack, consumer.basic_reject, consumer.basic_nack):
            with pytest.raises(ValueError, match="not awaiting an acknowledgement"):
                settle(first)
        second = consumer.wait(consume, timeout=PATIENCE)  # the consumer goes on
        assert [m["body"] for m in (first, second)] == [b"0", b"1"]
        consumer.wait(consumer.basic_cancel(consume), timeout=PATIENCE)
        consumer.wait(consumer.basic_publish(exchange="", routing_key=queue, body=b"2"), timeout=PATIENCE)
        got = consumer.wait(consumer.basic_get(queue=queue, no_ack=True), timeout=PATIENCE)
        assert got["body"] == b"2"
        for settle in (consumer.basic_ack, consumer.basic_reject, consumer.basic_nack):
            with pytest.raises(ValueError, match="not awaiting an acknowledgement"):
                settle(got)
        sent = recorder.names("out")
        assert not {"basic.ack", "basic.reject", "basic.nack"} & set(sent)
        assert "channel.close" not in recorder.names("in")  # the broker saw nothing to refuse
    finally:
        consumer.wait(consumer.close(), timeout=PATIENCE)
    assert queue_state(client, queue)["message_count"] == 0


# --- consumers cancelled by the broker -------------------------------------------------------------


def test_consume_multi_cancels_its_other_consumers_when_the_broker_cancels_one(amqp_url, client, name):
    queues = ["%s-%d" % (name, i) for i in range(3)]
    for q in queues:
        client.wait(client.queue_declare(queue=q))
    consumer = connect(amqp_url)
    try:
        for q in queues:
            consumer.wait(consumer.basic_publish(exchange="", routing_key=q, body=q.encode()), timeout=PATIENCE)
        consume = consumer.basic_consume_multi(queues, prefetch_count=10)
        held = take(consumer, consume, 3)
        assert sorted(m["body"] for m in held) == sorted(q.encode() for q in queues)
        assert [queue_state(client, q)["consumer_count"] for q in queues] == [1, 1, 1]
        client.wait(client.queue_delete(queue=queues[0]))
        with pytest.raises(puka.ConsumerCancelled) as info:
            consumer.wait(consume, timeout=PATIENCE)
        [deleted] = [m for m in held if m["routing_key"] == queues[0]]
        assert info.value.result == {"consumer_tag": deleted["consumer_tag"]}

        def others_cancelled():
            # Asked through the consumer too: that runs its I/O, which sends the cancels.
            return (
                queue_state(consumer, queues[1])["consumer_count"] + queue_state(client, queues[2])["consumer_count"]
                == 0
            )

        assert wait_until(others_cancelled, timeout=PATIENCE)
        # The messages received before stay acknowledgeable, and the broker takes the acks.
        for message in held:
            consumer.basic_ack(message)
    finally:
        consumer.wait(consumer.close(), timeout=PATIENCE)
    # The connection is gone: an unacknowledged message would be back in its queue now.
    assert [queue_state(client, q)["message_count"] for q in queues[1:]] == [0, 0]
    for q in queues[1:]:
        client.wait(client.queue_delete(queue=q))


def test_async_iteration_over_a_consume_raises_consumer_cancelled(amqp_url, name):
    import asyncio

    import puka.asyncio

    async def main():
        async with puka.asyncio.Client(amqp_url) as client:
            await client.wait_async(client.queue_declare(queue=name))
            await client.wait_async(client.basic_publish(exchange="", routing_key=name, body=b"before"))
            consume = client.basic_consume(queue=name)
            bodies = []
            with pytest.raises(puka.ConsumerCancelled):
                async for message in client.messages(consume):
                    bodies.append(message["body"])
                    client.basic_ack(message)
                    await client.wait_async(client.queue_delete(queue=name))
            return bodies

    assert asyncio.run(asyncio.wait_for(main(), PATIENCE)) == [b"before"]


# --- what you can still lose ---------------------------------------------------------------------


def test_loop_drops_the_results_of_promises_without_a_callback(client, queue):
    broke = []

    def stop(number, result):
        broke.append(result)
        client.loop_break()

    # Confirms on one channel come in order: the first publish's result is there before the second's.
    without = client.basic_publish(exchange="", routing_key=queue, body=b"no callback")
    client.basic_publish(exchange="", routing_key=queue, body=b"callback", callback=stop)
    client.loop(timeout=PATIENCE)
    assert broke == [{}]
    with pytest.raises(ValueError, match="not pending"):  # its result was taken and dropped
        client.wait(without, timeout=0)


def test_no_ack_messages_not_yet_handled_are_lost_with_the_connection(amqp_url, client, queue):
    params = puka.parse_amqp_url(amqp_url)
    with Proxy((params.host, params.port), params.vhost, params.username, params.password) as proxy:
        consumer = connect(proxy.url, recovery=False)  # fail-fast: the cut ends the consume
        consume = consumer.basic_consume(queue=queue, no_ack=True)
        deadline = time.monotonic() + PATIENCE
        while queue_state(client, queue)["consumer_count"] != 1:
            assert time.monotonic() < deadline, "the consumer never started"
            assert consumer.wait(consume, timeout=0.05) is None
        proxy.throttle(0, "down")  # nothing more reaches the consumer
        client.wait_for_all([client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(10)])
        # With no_ack, the broker forgets a message as soon as it sent it: the queue empties.
        assert wait_until(lambda: queue_state(client, queue)["message_count"] == 0, timeout=PATIENCE)
        proxy.cut()
        with pytest.raises(puka.ConnectionBroken):
            consumer.wait(consume, timeout=PATIENCE)  # not one of them reached the application
    assert proxy.error is None
    assert queue_state(client, queue)["message_count"] == 0  # and none came back


# --- close(), connection errors ---------------------------------------------------------------------


def test_close_fails_every_pending_promise_with_connection_closed_by_the_client(amqp_url, client, queue):
    recorder = FrameRecorder()
    closing = connect(amqp_url, middleware=[recorder])
    consume = closing.basic_consume(queue=queue)
    deadline = time.monotonic() + PATIENCE
    while "basic.consume-ok" not in recorder.names("in"):  # the consume is in progress
        assert time.monotonic() < deadline, "the broker never started the consumer"
        assert closing.wait(consume, timeout=0.05) is None
    get = closing.basic_get(queue=queue)
    declare = closing.queue_declare(queue=queue, passive=True)
    # No idle channel: both wait for theirs, so neither request reaches the broker before close.
    assert recorder.names("out")[-2:] == ["channel.open", "channel.open"]
    close = closing.close()
    assert closing.wait(close, timeout=PATIENCE) == {}
    for number in (consume, get, declare):
        with pytest.raises(puka.ConnectionBroken) as info:
            closing.wait(number, timeout=PATIENCE)
        assert str(info.value) == "connection closed by the client"
    with pytest.raises(puka.ConnectionBroken):
        closing.basic_get(queue=queue)
    assert queue_state(client, queue)["consumer_count"] == 0


def test_a_broker_connection_error_fails_every_pending_promise_with_it(client, queue, name):
    consume = client.basic_consume(queue=queue)
    declare = client.exchange_declare(exchange=name + "-x", type="no-such-type")
    with pytest.raises(puka.CommandInvalid) as info:
        client.wait(declare, timeout=PATIENCE)
    assert info.value.reply_code == 503 and "unknown exchange type 'no-such-type'" in str(info.value)
    assert info.value.method_name == "exchange.declare"
    with pytest.raises(puka.CommandInvalid):
        client.wait(consume, timeout=PATIENCE)
    with pytest.raises(puka.ConnectionBroken) as later:
        client.queue_declare(queue=queue)
    assert isinstance(later.value.__cause__, puka.CommandInvalid)
    assert client.wait(client.close(), timeout=PATIENCE) == {}  # a harmless no-op


PROTOCOL_HEADERS = {
    "AMQP 0-9-1 header": b"AMQP\x00\x00\x09\x01",  # what RabbitMQ sends to a client it does not understand
    "AMQP 1.0 header": b"AMQP\x00\x01\x00\x00",
}


@EITHER_MODE
@pytest.mark.parametrize("answer", sorted(PROTOCOL_HEADERS))
def test_a_server_answering_with_a_protocol_header_fails_the_connect_promise(answer, mode):
    with FakeServer(silent=True) as server:
        client = puka.Client(server.url, **mode)
        promise = client.connect()
        assert server.connected.wait(PATIENCE)
        server.send(PROTOCOL_HEADERS[answer])
        with pytest.raises(puka.ConnectionBroken, match="protocol violation"):
            client.wait(promise, timeout=PATIENCE)
        assert server.client_closed.wait(PATIENCE)
    assert server.error is None


@EITHER_MODE
def test_a_server_announcing_another_amqp_version_fails_the_connect_promise(mode):
    with FakeServer(version=(0, 8)) as server:
        client = puka.Client(server.url, **mode)
        with pytest.raises(puka.ConnectionBroken, match="protocol violation.*AMQP 0-8"):
            client.wait(client.connect(), timeout=PATIENCE)
        assert server.client_closed.wait(PATIENCE)
    assert server.error is None


@pytest.mark.parametrize(
    "url,error",
    [
        # A connection timeout of an hour: only an immediate failure ends the first wait(), which has none.
        ("amqp://guest:guest@puka-test-host.invalid:5672/", "cannot resolve puka-test-host.invalid:5672: "),
        ("amqp://guest:guest@127.0.0.1:1/", "cannot connect to 127.0.0.1:1: Connection refused"),
    ],
    ids=["unresolvable", "refused"],
)
@pytest.mark.timeout(60)
@EITHER_MODE
def test_a_refused_or_unresolvable_address_fails_the_connect_promise_at_once(url, error, mode):
    client = puka.Client(url, connection_timeout=3600, **mode)
    promise = client.connect()
    with pytest.raises(puka.ConnectionBroken) as info:
        client.wait(promise)
    assert str(info.value).startswith(error)


@EITHER_MODE
def test_a_server_that_never_answers_fails_the_connect_promise_at_the_connection_timeout(mode):
    with FakeServer(silent=True) as server:
        client = puka.Client(server.url, connection_timeout=0.5, **mode)
        promise = client.connect()
        with pytest.raises(puka.ConnectionBroken) as info:
            client.wait(promise)  # no timeout of its own: the connection timeout ends it
        expected = "connecting to amqp://guest:***@127.0.0.1:%d/%%2F timed out after 0.5s" % server.port
        assert str(info.value) == expected
        assert server.client_closed.wait(PATIENCE)
    assert server.error is None


def test_close_gives_up_on_a_broker_that_does_not_answer_and_resolves_all_the_same(monkeypatch):
    monkeypatch.setattr(puka.client, "CLOSE_TIMEOUT", 0.5)
    with FakeServer() as server:
        server.on("connection.close", lambda srv, channel, meth: None, replace=True)  # never a close-ok
        client = connect(server.url)
        declare = client.queue_declare(queue="q")
        assert client.wait(declare, timeout=PATIENCE)["queue"] == "q"
        consume = client.basic_consume(queue="q")
        close = client.close()
        assert client.wait(close) == {}  # no timeout of its own: the close timeout ends it
        assert server.count("connection.close") == 1
        with pytest.raises(puka.ConnectionBroken):
            client.wait(consume, timeout=PATIENCE)
        assert server.client_closed.wait(PATIENCE)
    assert server.error is None


@pytest.mark.parametrize(
    "how,error,code",
    [("wrong password", puka.AccessRefused, 403), ("unknown vhost", puka.NotAllowed, 530)],
)
@EITHER_MODE
def test_the_broker_refusing_the_connection_fails_the_connect_promise_with_its_error(amqp_url, how, error, code, mode):
    params = puka.parse_amqp_url(amqp_url)
    if how == "wrong password":
        url = "amqp://%s:wrong-secret@%s:%d/" % (params.username, params.host, params.port)
    else:
        url = "amqp://%s:%s@%s:%d/puka-no-such-vhost" % (params.username, params.password, params.host, params.port)
    client = puka.Client(url, **mode)
    with pytest.raises(error) as info:
        client.wait(client.connect(), timeout=PATIENCE)
    assert info.value.reply_code == code
    with pytest.raises(puka.ConnectionBroken) as later:
        client.queue_declare(queue="anything")
    assert type(later.value.__cause__) is error


# --- heartbeats -----------------------------------------------------------------------------------


def tune_frames(recorder):
    [(_, tune)] = in_frames(recorder, "connection.tune")
    [(_, tune_ok)] = out_frames(recorder, "connection.tune-ok")
    return tune.method, tune_ok.method


@pytest.mark.parametrize(
    "kwargs,used",
    [
        ({}, 60),
        ({"heartbeat": 0}, 60),
        ({"recovery": puka.Recovery()}, 60),
        ({"recovery": False}, 0),
        ({"recovery": False, "heartbeat": 0}, 0),
    ],
    ids=["default", "heartbeat=0", "recovery=Recovery()", "recovery=False", "recovery=False,heartbeat=0"],
)
def test_heartbeats_default_to_the_brokers_proposal_with_recovery_and_to_off_without(amqp_url, kwargs, used):
    recorder = FrameRecorder()
    client = connect(amqp_url, middleware=[recorder], **kwargs)
    client.wait(client.close(), timeout=PATIENCE)
    tune, tune_ok = tune_frames(recorder)
    assert tune["heartbeat"] == 60  # RabbitMQ's default proposal
    assert tune_ok["heartbeat"] == used  # with recovery, the broker's; without, off whatever it proposes
    if not used:
        assert "heartbeat" not in recorder.names()


def with_heartbeat_query(url, seconds):
    return "%s%sheartbeat=%d" % (url, "&" if "?" in url else "?", seconds)


@pytest.mark.parametrize("how,asked,used", [("keyword", 3, 3), ("keyword", 600, 60), ("url", 3, 3), ("url", 600, 60)])
def test_the_smaller_of_the_client_and_broker_heartbeats_is_used(amqp_url, how, asked, used):
    recorder = FrameRecorder()
    if how == "keyword":
        client = connect(amqp_url, middleware=[recorder], heartbeat=asked)
    else:
        client = connect(with_heartbeat_query(amqp_url, asked), middleware=[recorder])
    client.wait(client.close(), timeout=PATIENCE)
    tune, tune_ok = tune_frames(recorder)
    assert (tune["heartbeat"], tune_ok["heartbeat"]) == (60, used)


def broker_has_connection(connection_name):
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "client_properties"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=True,
    ).stdout
    return connection_name in out


def test_a_client_not_called_for_longer_than_the_broker_allows_finds_out_on_its_next_call(amqp_url, name):
    client = connect(amqp_url, heartbeat=1, client_properties={"connection_name": name}, recovery=False)
    assert broker_has_connection(name)
    # Nothing calls into the client: it sends no heartbeat, and the broker gives up on it.
    assert wait_until(lambda: not broker_has_connection(name), timeout=PATIENCE, interval=0.2)
    declare = client.queue_declare(queue=name, exclusive=True)  # the client cannot know yet
    with pytest.raises(puka.ConnectionBroken):
        client.wait(declare, timeout=PATIENCE)
    with pytest.raises(puka.ConnectionBroken):
        client.queue_declare(queue=name, exclusive=True)


# --- logging ----------------------------------------------------------------------------------------

QUIET_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import puka
    from faults import FakeServer, method

    url, exchange = sys.argv[1], sys.argv[2]


    def failures():
        # The broker closes the publish channel (a warning), then the connection (a warning).
        client = puka.Client(url)
        client.wait(client.connect())
        result = client.wait(client.basic_publish(exchange=exchange, routing_key="x", body=b"x"), raise_errors=False)
        assert isinstance(result.exception, puka.NotFound), result
        result = client.wait(client.exchange_declare(exchange=exchange, type="no-such-type"), raise_errors=False)
        assert isinstance(result.exception, puka.CommandInvalid), result
        # Blocked and unblocked (RabbitMQ blocks only under a resource alarm), then a protocol violation.
        with FakeServer() as server:
            client = puka.Client(server.url, recovery=False)  # by default the violation starts a recovery
            client.wait(client.connect())
            server.send(
                method(0, "connection.blocked", reason="low on memory"),
                method(0, "connection.unblocked"),
                method(0, "connection.open-ok"),
            )
            result = client.wait(client.queue_declare(queue="q"), raise_errors=False)
            assert "protocol violation" in str(result.exception), result
        # A refused connection.
        client = puka.Client("amqp://guest:guest@127.0.0.1:1/")
        result = client.wait(client.connect(), raise_errors=False)
        assert isinstance(result.exception, puka.ConnectionBroken), result


    failures()
    seen = {"handlers": [type(h).__name__ for h in logging.getLogger("puka").handlers]}
    print("phase 1 done", file=sys.stderr)  # the marker the test looks for: nothing printed before it

    # The same failures, once the application configured logging: puka did log them.
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    logging.getLogger("puka").setLevel(logging.INFO)
    failures()
    seen["logged"] = [[r.name, r.levelname, r.getMessage()] for r in records]
    print(json.dumps(seen))
    """
)


def run_script(tmp_path, script, *args):
    path = tmp_path / "script.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS])
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=PATIENCE * 2,
        env=env,
        cwd=str(tmp_path),
    )


def test_puka_prints_nothing_when_the_application_configures_no_logging(amqp_url, name, tmp_path):
    done = run_script(tmp_path, QUIET_SCRIPT, amqp_url, name + "-missing")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "phase 1 done\n"
    seen = json.loads(done.stdout)
    assert "NullHandler" in seen["handlers"]
    logged = [(logger, level, text.split(":")[0]) for logger, level, text in seen["logged"]]
    assert logged == [
        ("puka", "WARNING", "publish channel of exchange '%s-missing' closed by the broker" % name),
        ("puka", "WARNING", "connection closed by the broker"),
        ("puka", "WARNING", "connection blocked by the broker"),
        ("puka", "INFO", "connection unblocked"),
        ("puka", "ERROR", "protocol violation by the broker"),
    ]


TRACING_SCRIPT = textwrap.dedent(
    """
    import sys
    import puka
    from puka.tracing import Middleware

    class Failing(Middleware):
        def on_publish(self, publish):
            raise RuntimeError("a failing hook")

    client = puka.Client(sys.argv[1], middleware=[Failing()])
    client.wait(client.connect())
    client.wait(client.basic_publish(exchange="", routing_key="nowhere", body=b"x"))
    client.wait(client.close())
    print("published")
    """
)


def test_a_middleware_error_logged_before_the_puka_logger_was_used_reaches_the_last_resort_handler(amqp_url, tmp_path):
    # Documented limitation: the NullHandler is added when puka first logs on 'puka'; until then, a
    # 'puka.tracing' record finds no handler and Python's last-resort handler prints it on stderr.
    done = run_script(tmp_path, TRACING_SCRIPT, amqp_url)
    assert done.returncode == 0 and done.stdout == "published\n", done.stderr
    assert done.stderr.startswith("middleware hook Failing.on_publish failed (ignored)\n")
    assert "RuntimeError: a failing hook" in done.stderr


# --- the publish_reliably example -----------------------------------------------------------------


def load_example(name):
    spec = importlib.util.spec_from_file_location("example_" + name, os.path.join(ROOT, "examples", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documented_publish_reliably_loop_delivers_every_message_across_a_cut(amqp_url, client, name):
    example = load_example("publish_reliably")
    params = puka.parse_amqp_url(amqp_url)
    bodies = [b"job %d" % i for i in range(3000)]
    with Proxy((params.host, params.port), params.vhost, params.username, params.password) as proxy:
        # Slow the way up, and cut the connection once a fifth of the publishes went through.
        proxy.throttle(150_000, "up")
        cut = threading.Event()

        def cut_in_the_middle():
            if wait_until(lambda: proxy.bytes_up > 40_000, timeout=PATIENCE):
                proxy.cut()
                proxy.throttle(None)
                cut.set()

        watcher = threading.Thread(target=cut_in_the_middle)
        watcher.start()
        try:
            connections = example.publish_reliably(proxy.url, name, bodies)
        finally:
            watcher.join(PATIENCE)
        assert cut.is_set(), "the connection was never cut"
        assert connections >= 2
    assert proxy.error is None
    try:
        count = queue_state(client, name)["message_count"]
        assert count >= len(bodies)
        consume = client.basic_consume(queue=name, prefetch_count=1000, no_ack=True)
        received = [m["body"] for m in take(client, consume, count)]
        client.wait(client.basic_cancel(consume), timeout=PATIENCE)
        assert set(received) == set(bodies)  # every message at least once (maybe twice)
    finally:
        client.wait(client.queue_delete(queue=name), timeout=PATIENCE)


def test_the_reliability_page_shows_the_publish_reliably_example():
    with open(os.path.join(DOCS, "reliability.rst"), encoding="utf-8") as f:
        page = f.read()
    assert ".. literalinclude:: ../examples/publish_reliably.py" in page


# --- the table: where each guarantee is tested ----------------------------------------------------

TABLE_TITLE = "Where each guarantee is tested"
TEST_REFERENCE = re.compile(r"``(tests/[\w/]+\.py)::(test_\w+)``")


def guarantee_table():
    """(guarantee, [(file, test name)...]) for each row of the table in docs/reliability.rst."""
    with open(os.path.join(DOCS, "reliability.rst"), encoding="utf-8") as f:
        page = f.read()
    start = page.index(".. list-table::", page.index(TABLE_TITLE))
    lines = []
    for line in page[start:].splitlines()[1:]:
        if line and not line.startswith("   "):
            break  # the end of the table's indented block
        lines.append(line)
    rows = re.split(r"\n   \* - ", "\n".join(lines))[1:]
    assert rows[0].startswith("Guarantee\n     - Tests"), rows[0]  # the header row
    table = []
    for row in rows[1:]:
        guarantee, separator, tests = row.partition("\n     - ")
        assert separator, "a row without a second cell: %s" % row
        table.append((" ".join(guarantee.split()), TEST_REFERENCE.findall(tests)))
    return table


@functools.cache
def defined_tests(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
    }


def test_every_test_named_in_the_guarantee_table_exists():
    rows = guarantee_table()
    assert len(rows) >= 60, "the table in docs/reliability.rst was not found whole (%d rows)" % len(rows)
    missing = []
    for guarantee, references in rows:
        assert references, "no test named for: %s" % guarantee
        for path, test in references:
            if not os.path.exists(os.path.join(ROOT, path)) or test not in defined_tests(path):
                missing.append("%s::%s" % (path, test))
    assert not missing, "docs/reliability.rst names tests that do not exist: %s" % ", ".join(missing)


def test_every_test_of_this_file_is_in_the_guarantee_table():
    here = "tests/test_guarantees.py"
    named = {test for _, references in guarantee_table() for path, test in references if path == here}
    own = defined_tests(here)
    table_tests = {
        "test_every_test_named_in_the_guarantee_table_exists",
        "test_every_test_of_this_file_is_in_the_guarantee_table",
        "test_the_reliability_page_shows_the_publish_reliably_example",
    }
    assert sorted(own - table_tests - named) == []
