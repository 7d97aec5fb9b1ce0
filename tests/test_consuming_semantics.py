"""Consuming semantics (issue 12, "Consuming"): basic_qos on a running consume, channel errors on a
consuming channel, running out of channels, duplicate consumer tags.

Against the real RabbitMQ; :class:`faults.FakeServer` only to script the exact order of frames after a
``channel.close`` that the broker produces by itself only as a race.  The behaviours are described in
docs/reliability.rst ("Consuming: windows, channels and tags").
"""

from __future__ import annotations

import subprocess
import time

import pytest
from faults import FakeServer, message, method, pump

import puka
from puka.tracing import FrameRecorder, Middleware

pytestmark = pytest.mark.timeout(180)

#: What the broker says, for every wait on it: generous, never a measure of speed.
PATIENCE = 30
#: How long "nothing more arrives" is watched.
QUIET = 0.6

QUEUE_TYPES = pytest.mark.parametrize("queue_type", ["classic", "quorum"])


def connect(url, **kwargs):
    client = puka.Client(url, **kwargs)
    client.wait(client.connect(), timeout=PATIENCE)
    return client


def declare(client, queue, queue_type="classic", **kwargs):
    arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else {}
    durable = queue_type == "quorum"
    client.wait(client.queue_declare(queue=queue, durable=durable, arguments=arguments, **kwargs), timeout=PATIENCE)


def publish(client, queue, count, prefix=b""):
    client.wait_for_all(
        [client.basic_publish(exchange="", routing_key=queue, body=prefix + b"%d" % i) for i in range(count)]
    )


def take(client, consume, count):
    """The next ``count`` messages of a consume promise (not settled)."""
    messages = []
    for _ in range(count):
        msg = client.wait(consume, timeout=PATIENCE)
        assert msg is not None, "only %d of %d messages arrived" % (len(messages), count)
        messages.append(msg)
    return messages


def more(client, consume, timeout=QUIET):
    """Every message that arrives within ``timeout`` (the window is full when this is empty)."""
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        msg = client.wait(consume, timeout=max(0.0, deadline - time.monotonic()))
        if msg is None:
            return messages
        messages.append(msg)


def queue_state(client, queue):
    return client.wait(client.queue_declare(queue=queue, passive=True), timeout=PATIENCE)


def eventually(measure, expected=None, timeout=PATIENCE):
    """``measure()`` once it stops changing (or equals ``expected``): the broker settles asynchronously."""
    deadline = time.monotonic() + timeout
    last = measure()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        value = measure()
        if value == last and (expected is None or value == expected):
            return value
        last = value
    return last


def rabbitmqctl(*args):
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def consumers_of(queue):
    """(consumer tag, prefetch) of each consumer of ``queue`` at the broker."""
    rows = rabbitmqctl("list_consumers", "-p", "/", "queue_name", "consumer_tag", "prefetch_count")
    found = []
    for line in rows.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == queue:
            found.append((parts[1], int(parts[2])))
    return sorted(found)


@pytest.fixture
def cleanup(amqp_url):
    queues = []
    yield queues
    with puka.Client(amqp_url) as other:
        for queue in queues:
            other.wait(other.queue_delete(queue=queue), raise_errors=False, timeout=PATIENCE)


# --- 1. basic_qos on a running consume ------------------------------------------------------------------


def test_basic_qos_on_the_only_consumer_of_an_auto_delete_queue_keeps_the_queue_and_resolves(client, name, cleanup):
    cleanup.append(name)
    declare(client, name, auto_delete=True)
    publish(client, name, 6)
    consume = client.basic_consume(queue=name, prefetch_count=1)
    first = take(client, consume, 1)[0]
    qos = client.basic_qos(consume, prefetch_count=3)
    # Resolves (one message held fits the new window of 3), and the queue was never without a consumer.
    assert client.wait(qos, timeout=PATIENCE) == {"prefetch_count": 3}
    assert queue_state(client, name)["consumer_count"] == 1
    client.basic_ack(first)
    rest = []
    for _ in range(5):
        rest += take(client, consume, 1)
        client.basic_ack(rest[-1])
    assert sorted(m["body"] for m in [first, *rest]) == [b"%d" % i for i in range(6)]
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)


@QUEUE_TYPES
def test_after_basic_qos_the_window_counts_the_messages_held_from_before(client, name, cleanup, queue_type):
    # The case: one message held, basic_qos(2): at most one more may come, not two.
    cleanup.append(name)
    declare(client, name, queue_type)
    publish(client, name, 10)
    consume = client.basic_consume(queue=name, prefetch_count=1)
    held = take(client, consume, 1)
    assert client.wait(client.basic_qos(consume, prefetch_count=2), timeout=PATIENCE) == {"prefetch_count": 2}
    held += more(client, consume)
    assert len(held) == 2, [m["body"] for m in held]
    # An ack of the message delivered before the change makes room for exactly one: it does not
    # credit the new consumer beyond its window.
    client.basic_ack(held.pop(0))
    held += more(client, consume)
    assert len(held) == 2, [m["body"] for m in held]
    seen = 3
    while seen < 10:
        client.basic_ack(held.pop(0))
        arrived = more(client, consume, timeout=0.3 if seen < 9 else QUIET)
        held += arrived
        seen += len(arrived)
        assert len(held) <= 2, [m["body"] for m in held]
    for msg in held:
        client.basic_ack(msg)
    # The broker has the new window, under a fresh tag, which the deliveries since carry.
    assert consumers_of(name) == [("puka.%d.0.q1" % consume, 2)]
    assert held[-1]["consumer_tag"] == "puka.%d.0.q1" % consume
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    assert queue_state(client, name)["message_count"] == 0


@QUEUE_TYPES
def test_a_smaller_window_resolves_once_the_held_messages_fit_it(client, name, cleanup, queue_type):
    cleanup.append(name)
    declare(client, name, queue_type)
    publish(client, name, 8)
    consume = client.basic_consume(queue=name, prefetch_count=3)
    held = take(client, consume, 3)
    qos = client.basic_qos(consume, prefetch_count=1)
    assert client.wait(qos, timeout=QUIET) is None  # three held: the window of 1 cannot hold yet
    client.basic_ack(held.pop(0))
    assert client.wait(qos, timeout=QUIET) is None
    assert more(client, consume) == []  # nothing comes while more than the window is held
    client.basic_ack(held.pop(0))
    assert client.wait(qos, timeout=PATIENCE) == {"prefetch_count": 1}
    assert more(client, consume) == []  # one held: the window is full
    client.basic_ack(held.pop(0))
    bodies = []
    for _ in range(5):
        (msg,) = take(client, consume, 1)
        assert more(client, consume, timeout=0.2) == []
        bodies.append(msg["body"])
        client.basic_ack(msg)
    assert bodies == [b"%d" % i for i in range(3, 8)]  # in order, none lost
    assert consumers_of(name)[0][1] == 1
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)


def test_basic_qos_of_a_multi_consume_keeps_the_window_per_queue_and_the_queue_of_each_delivery(
    amqp_url, name, cleanup
):
    queues = [name + "-a", name + "-b"]
    cleanup.extend(queues)

    class Queues(Middleware):
        def __init__(self):
            self.seen = []

        def on_deliver(self, delivery):
            self.seen.append((delivery.queue, delivery.message["routing_key"]))

    watch = Queues()
    client = connect(amqp_url, middleware=[watch])
    try:
        for queue in queues:
            declare(client, queue)
            publish(client, queue, 6)
        consume = client.basic_consume_multi(queues, prefetch_count=2)
        held = take(client, consume, 4)
        assert more(client, consume) == []
        client.wait(client.basic_qos(consume, prefetch_count=3), timeout=PATIENCE)
        held += more(client, consume)
        assert sorted(m["routing_key"] for m in held) == sorted(queues * 3)
        for msg in held:
            client.basic_ack(msg)
        rest = take(client, consume, 6)
        for msg in rest:
            client.basic_ack(msg)
        # Deliveries under the fresh tags are told apart by queue, as before the change.
        assert all(queue == routing_key for queue, routing_key in watch.seen), watch.seen
        assert len({m["consumer_tag"] for m in held + rest}) == 4
        assert {p for _tag, p in consumers_of(queues[0]) + consumers_of(queues[1])} == {3}
        client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    finally:
        client.wait(client.close(), timeout=PATIENCE)


def test_basic_cancel_after_basic_qos_gives_back_what_waited_in_the_client(client, name, cleanup):
    cleanup.append(name)
    declare(client, name)
    publish(client, name, 10)
    consume = client.basic_consume(queue=name, prefetch_count=4)
    held = take(client, consume, 4)
    client.wait(client.basic_qos(consume, prefetch_count=5), timeout=PATIENCE)
    held += more(client, consume)
    assert len(held) == 5
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    for msg in held:
        client.basic_ack(msg)
    # The deliveries the new consumer got that were still waiting in the client went back to the queue.
    assert eventually(lambda: queue_state(client, name)["message_count"]) == 5


def test_basic_qos_of_an_exclusive_consumer_is_refused_at_the_call(client, name, cleanup):
    cleanup.append(name)
    declare(client, name)
    consume = client.basic_consume(queue=name, exclusive=True)
    with pytest.raises(ValueError, match="exclusive consumer"):
        client.basic_qos(consume, prefetch_count=5)
    client.wait(client.basic_cancel(consume), timeout=PATIENCE)


def test_basic_qos_and_basic_cancel_of_a_consume_that_fails_fail_with_it(client, name):
    consume = client.basic_consume(queue=name + "-missing")
    qos = client.basic_qos(consume, prefetch_count=5)
    cancel = client.basic_cancel(consume)
    with pytest.raises(puka.NotFound):
        client.wait(consume, timeout=PATIENCE)
    with pytest.raises(puka.NotFound):
        client.wait(qos, timeout=PATIENCE)
    with pytest.raises(puka.NotFound):
        client.wait(cancel, timeout=PATIENCE)


def test_consumers_come_back_after_a_recovery_with_the_tags_and_window_of_the_last_basic_qos(proxy, name, cleanup):
    cleanup.append(name)
    recorder = FrameRecorder()
    client = connect(proxy.url, middleware=[recorder])
    try:
        declare(client, name)
        publish(client, name, 4)
        consume = client.basic_consume(queue=name, prefetch_count=1)
        held = take(client, consume, 1)
        client.wait(client.basic_qos(consume, prefetch_count=2), timeout=PATIENCE)
        held += more(client, consume)
        assert len(held) == 2
        tag = held[-1]["consumer_tag"]
        proxy.cut()
        # The held messages are stale: settling them sends nothing; the broker gives them again.
        assert pump(
            client, lambda: len(consumers_of(name)) == 1 and consumers_of(name)[0] == (tag, 2), timeout=PATIENCE
        )
        again = take(client, consume, 2)
        for msg in held:
            client.basic_ack(msg)
        assert more(client, consume) == []
        for msg in again:
            client.basic_ack(msg)
        rest = take(client, consume, 2)
        assert sorted(m["body"] for m in again + rest) == [b"%d" % i for i in range(4)]
        for msg in rest:
            client.basic_ack(msg)
        client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    finally:
        client.wait(client.close(), timeout=PATIENCE)


# --- 2. a channel error on a consuming channel fails only its promise ------------------------------------


def test_deliveries_sent_after_a_consume_channel_closed_are_discarded_and_the_connection_goes_on(
    amqp_url, name, cleanup
):
    cleanup.append(name)
    # Fail-fast: with recovery, a connection dropped for a protocol violation would come back unseen.
    client = connect(amqp_url, recovery=False)
    try:
        declare(client, name)
        publish(client, name, 10)
        consume = client.basic_consume_multi([name, name + "-missing"], prefetch_count=10)
        with pytest.raises(puka.NotFound) as info:
            client.wait(consume, timeout=PATIENCE)
        assert info.value.method_name == "basic.consume"
        # What RabbitMQ had sent on the channel before reading the close-ok was dropped: the connection
        # is up, and the broker put the deliveries back in the queue.
        assert eventually(lambda: queue_state(client, name)["message_count"], 10) == 10
        again = client.basic_consume(queue=name, prefetch_count=10)
        assert sorted(m["body"] for m in take(client, again, 10)) == sorted(b"%d" % i for i in range(10))
    finally:
        client.wait(client.close(), timeout=PATIENCE)


def test_frames_after_the_brokers_channel_close_and_before_the_number_reopens_are_discarded():
    with FakeServer() as fake:
        stale = {}

        def reopen(server, channel, _method):
            # The number comes back into use: what the broker sent before it read the close-ok (a
            # delivery, split over its frames) reaches the client before the channel.open-ok.
            if channel == stale.get("channel"):
                return [stale.pop("frames"), method(channel, "channel.open-ok")]
            return [method(channel, "channel.open-ok")]

        fake.on("channel.open", reopen, replace=True)
        client = connect(fake.url)
        consume = client.basic_consume(queue="q", consumer_tag="c1", prefetch_count=5)
        assert pump(client, lambda: fake.count("basic.consume") == 1)
        channel = fake.received[-1][0]

        def deliver(tag, body):
            return message(
                channel, "basic.deliver", body, consumer_tag="c1", delivery_tag=tag, exchange="", routing_key="q"
            )

        fake.send(deliver(1, b"one"))
        first = client.wait(consume, timeout=PATIENCE)
        stale["channel"] = channel
        stale["frames"] = deliver(4, b"four")
        # The broker closes the channel, then deliveries it had already queued still arrive.
        fake.send(
            method(
                channel,
                "channel.close",
                reply_code=404,
                reply_text="NOT_FOUND - no queue 'q2'",
                class_id=60,
                method_id=20,
            ),
            deliver(2, b"two"),
            deliver(3, b"three" * 40000),  # a body over several frames
        )
        with pytest.raises(puka.NotFound):
            client.wait(consume, timeout=PATIENCE)
        assert pump(client, lambda: fake.count("channel.close-ok") == 1)
        with pytest.raises(ValueError):
            client.basic_ack(first)  # its channel is gone
        declare_ok = client.wait(client.queue_declare(queue="after"), timeout=PATIENCE)
        assert declare_ok["queue"] == "after"
        assert "frames" not in stale  # the number was reused, and the leftovers came before open-ok
        assert fake.received[-1][0] == channel
        assert not fake.error, fake.error
        client.wait(client.close(), timeout=PATIENCE)


def test_channels_given_back_beyond_the_idle_limit_are_closed(amqp_url, name, cleanup):
    cleanup.append(name)
    recorder = FrameRecorder()
    client = connect(amqp_url, middleware=[recorder])
    try:
        declare(client, name)
        consumes = [client.basic_consume(queue=name) for _ in range(100)]
        client.wait_for_all([client.basic_cancel(consume) for consume in consumes])
        closes = [f for f in recorder.frames if f.direction == "out" and f.name == "channel.close"]
        assert len(closes) >= 100 - 64
        assert client.wait(client.queue_declare(queue=name, passive=True), timeout=PATIENCE)["consumer_count"] == 0
        # The closed numbers serve again.
        again = [client.basic_consume(queue=name) for _ in range(50)]
        publish(client, name, 1)
        assert client.wait(again, timeout=PATIENCE)["body"] == b"0"
    finally:
        client.wait(client.close(), timeout=PATIENCE)


# --- 3. no operation waits forever because channels ran out ---------------------------------------------


def test_thousands_of_consumes_get_a_channel_or_fail_naming_the_limit_and_declares_go_on(amqp_url, name, cleanup):
    cleanup.append(name)
    client = connect(amqp_url)
    try:
        declare(client, name)
        channel_max = client.channel_max
        assert channel_max == 2047
        consumes = [client.basic_consume(queue=name) for _ in range(2100)]
        # A short operation still gets a channel (a few are kept for them).
        declared = client.wait(client.queue_declare(queue=name, passive=True), timeout=PATIENCE)
        refused, running = [], []
        for consume in consumes:
            result = client.wait(consume, timeout=0, raise_errors=False)
            if result is None:
                running.append(consume)
            else:
                assert result.is_error
                refused.append(result.exception)
        assert refused and all(isinstance(exc, puka.ResourceError) for exc in refused)
        assert "channel_max" in str(refused[0]) and "basic_consume_multi" in str(refused[0])
        assert len(running) >= channel_max - 1 - 16
        # Every other consume has its consumer at the broker.
        deadline = time.monotonic() + PATIENCE
        while declared["consumer_count"] != len(running):
            assert time.monotonic() < deadline, (declared, len(running))
            declared = queue_state(client, name)
        publish(client, name, 1)
        assert client.wait(running, timeout=PATIENCE)["body"] == b"0"
    finally:
        client.wait(client.close(), timeout=PATIENCE)


def test_the_last_channels_are_kept_for_short_operations(amqp_url, name, cleanup):
    cleanup.append(name)
    client = connect(amqp_url + "?channel_max=20")
    try:
        declare(client, name)
        consumes = [client.basic_consume(queue=name) for _ in range(19)]
        results = [client.wait(consume, timeout=0, raise_errors=False) for consume in consumes]
        # 20 channels: 1 publishes, 2 are kept for short operations, 17 consume.
        assert [r is None for r in results] == [True] * 17 + [False] * 2
        assert "channel_max" in str(results[-1].exception)
        # Short operations get the kept channels, many at once; a publish to a new exchange shares
        # channel 1 rather than take one of them.
        assert eventually(lambda: queue_state(client, name)["consumer_count"], 17) == 17
        declares = [client.queue_declare(queue=name, passive=True) for _ in range(50)]
        assert [r["consumer_count"] for r in client.wait_for_all(declares)] == [17] * 50
        client.wait(client.exchange_declare(exchange=name, type="fanout"), timeout=PATIENCE)
        client.wait(client.queue_bind(queue=name, exchange=name), timeout=PATIENCE)
        client.wait(client.basic_publish(exchange=name, routing_key="", body=b"x"), timeout=PATIENCE)
        client.basic_ack(client.wait(consumes[:17], timeout=PATIENCE))
        client.wait(client.exchange_delete(exchange=name), timeout=PATIENCE)
        # A cancel gives a consume's channel back.
        client.wait(client.basic_cancel(consumes[0]), timeout=PATIENCE)
        assert client.wait(client.basic_consume(queue=name), timeout=QUIET, raise_errors=False) is None
    finally:
        client.wait(client.close(), timeout=PATIENCE)


def test_results_nobody_took_yet_do_not_hold_channels(client):
    declares = [client.queue_declare(queue="", exclusive=True) for _ in range(200)]
    assert client.wait(declares[-1], timeout=PATIENCE)["queue"].startswith("amq.gen-")
    assert all(r["queue"].startswith("amq.gen-") for r in client.wait_for_all(declares[:-1]))


# --- 5. duplicate consumer tags in one basic_consume_multi -----------------------------------------------


def test_a_consumer_tag_given_twice_is_refused_at_the_call_and_the_connection_goes_on(client, name, cleanup):
    queues = [name + "-a", name + "-b"]
    cleanup.extend(queues)
    for queue in queues:
        declare(client, queue)
    with pytest.raises(ValueError, match="'same' given more than once"):
        client.basic_consume_multi([{"queue": q, "consumer_tag": "same"} for q in queues])
    consume = client.basic_consume_multi([{"queue": q, "consumer_tag": "own-" + q} for q in queues])
    publish(client, queues[1], 1)
    assert client.wait(consume, timeout=PATIENCE)["consumer_tag"] == "own-" + queues[1]
    assert queue_state(client, queues[0])["consumer_count"] == 1


def test_a_generated_tag_steps_aside_for_a_tag_the_application_chose(client, name, cleanup):
    queues = [name + "-a", name + "-b"]
    cleanup.extend(queues)
    for queue in queues:
        declare(client, queue)
    # The generated tag of the second queue would be "puka.<promise>.1": take it for the first.
    probe = client.basic_consume(queue=queues[0], consumer_tag="probe")
    client.wait(client.basic_cancel(probe), timeout=PATIENCE)
    number = probe + 2  # the cancel took probe + 1
    consume = client.basic_consume_multi([{"queue": queues[0], "consumer_tag": "puka.%d.1" % number}, queues[1]])
    assert consume == number
    publish(client, queues[0], 1)
    publish(client, queues[1], 1)
    tags = sorted(m["consumer_tag"] for m in take(client, consume, 2))
    assert tags == ["puka.%d.1" % number, "puka.%d.1.1" % number]
