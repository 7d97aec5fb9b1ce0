"""A broker that breaks the protocol: every malformed input ends the connection with ConnectionBroken.

A :class:`faults.FakeServer` does the handshake, opens the publish channel
(1, confirm mode) and a consumer's channel (2), then sends one malformed
thing.  Whatever it is, the client must drop the connection as soon as it reads
it (no timer is armed: nothing else could end the wait) and fail every
outstanding promise with :class:`puka.ConnectionBroken` -- exactly that class,
or exactly its subclass ``FrameTooLarge`` for what is too large -- never hang,
never raise anything else, never allocate what a hostile size field asks for.

That is the fail-fast behaviour (``Client(recovery=False)``, docs/reliability.rst,
"Connection errors"): by default a protocol violation starts a recovery instead.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from faults import FakeServer, body_frame, frame, header_frame, method, pump

import puka
from puka import spec

pytestmark = pytest.mark.timeout(15)

M = spec.METHODS_BY_NAME
CONSUMER_TAG = "fake-consumer"
MiB = 1024 * 1024


def deliver(channel=2, delivery_tag=1):
    return method(
        channel,
        "basic.deliver",
        consumer_tag=CONSUMER_TAG,
        delivery_tag=delivery_tag,
        redelivered=False,
        exchange="",
        routing_key="q",
    )


def method_payload(name, **fields):
    return M[name].encode(**fields)


def raw_deliver_payload(consumer_tag_len, consumer_tag=b"abc"):
    """basic.deliver whose consumer-tag length octet says ``consumer_tag_len``."""
    return struct.pack(">HH", 60, 60) + bytes((consumer_tag_len,)) + consumer_tag


def header_payload(body_size, flags, values, class_id=60):
    return struct.pack(">HHQH", class_id, 0, body_size, flags) + values


def nested_table(depth):
    """A field table holding a table holding a table... ``depth`` levels deep."""
    inner = b""
    for _ in range(depth):
        inner = b"\x01kF" + struct.pack(">I", len(inner)) + inner
    return struct.pack(">I", len(inner)) + inner


HEADERS_FLAG = 1 << 13  # the headers property (third property of class basic)


#: name -> (bytes the server sends, exception class expected)
CASES = {
    "bad frame-end octet": (frame(1, 1, method_payload("basic.ack", delivery_tag=1), end=0x00), puka.ConnectionBroken),
    "unknown frame type": (frame(7, 0, b"\x00\x00\x00\x00"), puka.ConnectionBroken),
    "heartbeat on a non-zero channel": (frame(8, 1, b""), puka.ConnectionBroken),
    "method on an unopened channel": (method(5, "basic.ack", delivery_tag=1), puka.ConnectionBroken),
    "body on an unopened channel": (body_frame(9, b"stray"), puka.ConnectionBroken),
    "frame above channel_max": (method(3000, "channel.close", reply_code=200), puka.ConnectionBroken),
    "frame on channel 65535": (method(65535, "channel.open-ok"), puka.ConnectionBroken),
    "content header without a method": (header_frame(2, 5), puka.ConnectionBroken),
    "body without a header": (body_frame(2, b"hello"), puka.ConnectionBroken),
    "body without a method or header": (body_frame(1, b"hello"), puka.ConnectionBroken),
    "body longer than declared": (deliver() + header_frame(2, 3) + body_frame(2, b"hello"), puka.ConnectionBroken),
    "body longer than declared over two frames": (
        deliver() + header_frame(2, 5) + body_frame(2, b"abc") + body_frame(2, b"def"),
        puka.ConnectionBroken,
    ),
    "method while a message is incomplete": (
        deliver() + header_frame(2, 5) + body_frame(2, b"ab") + deliver(delivery_tag=2),
        puka.ConnectionBroken,
    ),
    "content header of another class": (deliver() + header_frame(2, 5, class_id=50), puka.ConnectionBroken),
    "reply nobody asked for": (method(2, "queue.declare-ok", queue="q"), puka.ConnectionBroken),
    "unknown method id": (frame(1, 2, struct.pack(">HH", 60, 999)), puka.ConnectionBroken),
    "unknown class id": (frame(1, 1, struct.pack(">HH", 999, 10)), puka.ConnectionBroken),
    "method frame shorter than a method id": (frame(1, 1, b"\x00\x3c"), puka.ConnectionBroken),
    "method arguments with trailing bytes": (
        frame(1, 1, method_payload("basic.ack", delivery_tag=1) + b"junk"),
        puka.ConnectionBroken,
    ),
    "frame larger than frame_max": (frame(3, 2, b"\x00" * 131072), puka.FrameTooLarge),
    "message above max_message_size (default, 200 MiB declared)": (
        deliver() + header_frame(2, 200 * MiB),
        puka.FrameTooLarge,
    ),
    # Truncated arguments: the frame ends inside a fixed-width field or before a string's length.
    "truncated basic.ack arguments": (
        frame(1, 1, method_payload("basic.ack", delivery_tag=1)[:7]),
        puka.ConnectionBroken,
    ),
    "truncated basic.deliver arguments": (
        frame(1, 2, method_payload("basic.deliver", consumer_tag="abc", delivery_tag=7)[:12]),
        puka.ConnectionBroken,
    ),
    "basic.deliver ending before its consumer tag": (frame(1, 2, struct.pack(">HH", 60, 60)), puka.ConnectionBroken),
    "truncated connection.close arguments": (
        frame(1, 0, method_payload("connection.close", reply_code=541, reply_text="x")[:5]),
        puka.ConnectionBroken,
    ),
    "truncated content header": (deliver() + frame(2, 2, header_payload(5, 0, b"")[:9]), puka.ConnectionBroken),
    # Lengths that run past the frame.
    "short string length past the frame": (frame(1, 2, raw_deliver_payload(200)), puka.ConnectionBroken),
    "connection.close ending inside its class id": (
        frame(1, 0, struct.pack(">HHH", 10, 50, 320) + b"\x05hello" + b"\x00"),
        puka.ConnectionBroken,
    ),
    "long string length past the frame": (
        frame(1, 0, struct.pack(">HHBB", 10, 10, 0, 9) + struct.pack(">I", 0) + struct.pack(">I", 5000) + b"PLA"),
        puka.ConnectionBroken,
    ),
    "table length past the frame": (
        deliver() + frame(2, 2, header_payload(5, HEADERS_FLAG, struct.pack(">I", 1000) + b"\x01k")),
        puka.ConnectionBroken,
    ),
    "table entry running past its table": (
        deliver()
        + frame(
            2,
            2,
            header_payload(5, HEADERS_FLAG, struct.pack(">I", 10) + b"\x01kS" + struct.pack(">I", 10_000) + b"ab"),
        ),
        puka.ConnectionBroken,
    ),
    "table entry cut after its key": (
        deliver() + frame(2, 2, header_payload(5, HEADERS_FLAG, struct.pack(">I", 2) + b"\x01k")),
        puka.ConnectionBroken,
    ),
    "table with an unknown field type": (
        deliver() + frame(2, 2, header_payload(5, HEADERS_FLAG, struct.pack(">I", 3) + b"\x01k?")),
        puka.ConnectionBroken,
    ),
    "tables nested too deeply": (
        deliver() + frame(2, 2, header_payload(0, HEADERS_FLAG, nested_table(3000))),
        puka.ConnectionBroken,
    ),
    "property flags of unknown properties": (
        deliver() + frame(2, 2, header_payload(5, 0x0002, b"")),
        puka.ConnectionBroken,
    ),
}


def _param(name):
    data, expected = CASES[name]
    return pytest.param(name, data, expected, id=name)


@pytest.fixture
def setup():
    """A client on a FakeServer with a publish in flight (channel 1) and a consumer (channel 2).

    ``recovery`` is the client's: False for the tests of what a violation does to the promises
    (fail-fast; by default a protocol violation would start a recovery instead).
    """
    made = []

    def make(recovery, **client_kwargs):
        server = FakeServer()
        made.append(server)
        client = puka.Client(server.url, recovery=recovery, **client_kwargs)
        client.wait(client.connect(), timeout=5)
        publish = client.basic_publish(exchange="", routing_key="q", body=b"in flight")
        consume = client.basic_consume(queue="q", consumer_tag=CONSUMER_TAG)
        assert pump(client, lambda: server.count("basic.publish") == 1 and server.count("basic.consume") == 1)
        assert client.wait(consume, timeout=0.05) is None  # consume-ok processed, nothing delivered
        return server, client, [publish, consume]

    yield make
    for server in made:
        server.close()
        assert server.error is None, server.error


def expect_broken(server, client, promises, data, expected):
    """Send ``data``; every promise must fail with exactly ``expected``, a protocol violation."""
    server.send(data)
    errors = []
    for number in promises:
        try:
            result = client.wait(number, raise_errors=False, timeout=10)
        except Exception as exc:  # the failure this module tests for
            pytest.fail("%s escaped from Client.wait instead of ConnectionBroken: %s" % (type(exc).__name__, exc))
        assert result is not None, "promise %d still pending" % number
        errors.append(result.exception)
    for exc in errors:
        assert type(exc) is expected, repr(exc)
        assert str(exc).startswith("protocol violation by "), repr(exc)
    assert server.client_closed.wait(10), "the client kept the connection open"
    with pytest.raises(puka.ConnectionBroken):
        client.basic_publish(exchange="", routing_key="q", body=b"after")
    with pytest.raises(puka.ConnectionBroken):
        client.queue_declare(queue="after")
    return errors


@pytest.mark.parametrize("name,data,expected", [_param(name) for name in CASES])
def test_malformed_input_breaks_the_connection(setup, name, data, expected):
    server, client, promises = setup(recovery=False)
    expect_broken(server, client, promises, data, expected)


@pytest.mark.parametrize("split", [1, 3, 7])
def test_malformed_input_sliced_into_small_writes_still_breaks_the_connection(setup, split):
    server, client, promises = setup(recovery=False)
    data = deliver() + header_frame(2, 3) + body_frame(2, b"hello")
    server.send(data[:-split])
    assert client.wait(promises[1], timeout=0.1) is None  # incomplete: nothing decided yet
    expect_broken(server, client, promises, data[-split:], puka.ConnectionBroken)


def test_a_frame_header_declaring_four_gib_is_never_allocated(setup):
    server, client, promises = setup(recovery=False)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        errors = expect_broken(server, client, promises, struct.pack(">BHI", 3, 2, 0xFFFFFFF0), puka.FrameTooLarge)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert peak < 10 * MiB, "%.1f MiB allocated" % (peak / MiB)
    assert "frame_max" in str(errors[0])


def test_a_message_above_a_small_max_message_size_is_refused_at_its_header(setup):
    server, client, promises = setup(recovery=False, max_message_size=1000)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        errors = expect_broken(server, client, promises, deliver() + header_frame(2, 1001), puka.FrameTooLarge)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert peak < 10 * MiB
    assert "max_message_size" in str(errors[0])


def test_a_message_at_a_small_max_message_size_is_accepted(setup):
    server, client, (publish, consume) = setup(recovery=True, max_message_size=1000)
    body = bytes(range(256)) * 3 + b"x" * 232
    server.send(deliver() + header_frame(2, 1000) + body_frame(2, body[:600]) + body_frame(2, body[600:]))
    msg = client.wait(consume, timeout=1)
    assert msg["body"] == body and msg["delivery_tag"] == 1


def test_a_200_mib_message_under_the_default_limit_is_refused_without_allocating_it(setup):
    server, client, promises = setup(recovery=False)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        # The header declares 200 MiB; the first body frames follow, then the server goes quiet.
        data = deliver() + header_frame(2, 200 * MiB) + body_frame(2, b"\x00" * 100_000) * 3
        errors = expect_broken(server, client, promises, data, puka.FrameTooLarge)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert peak < 10 * MiB, "%.1f MiB allocated" % (peak / MiB)
    # The documented default limit: 128 MiB.
    assert "message of %d bytes exceeds max_message_size %d" % (200 * MiB, 128 * MiB) in str(errors[0])
