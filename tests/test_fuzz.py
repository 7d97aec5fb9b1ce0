"""Fuzzing the inbound path: mutated frame streams through FrameReader and the sans-IO protocol core.

Valid streams are what a broker would send to a client in a known state --
deliveries, confirms, returns, replies, channel and connection closes --
built with puka.spec and puka.framing.  Hypothesis mutates them (flips, sets,
truncates, inserts, deletes, splices, duplicates bytes or whole frames) and
feeds them in random pieces.  The contract checked:

* ``FrameReader.feed`` raises nothing but ``puka.spec.DecodeError``;
* the public decoders raise nothing but ``DecodeError``;
* the protocol core (``seam.Core``: what a Client runs between its socket and
  its promises), fed the bytes as the transport feeds it (heartbeats taken
  out; a framing error ends the connection), either goes on or ends broken --
  its error a ConnectionBroken (or the broker's AMQPError after its
  connection.close), every promise resolved, no publish left in flight -- and
  never lets an exception escape.  No promise is ever resolved twice, and
  while it goes on no resolved publish is still tracked as in flight.

What one input costs in CPU is measured by ``benchmarks/test_fuzz_cost.py``,
not asserted here.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from seam import Core

import puka
from puka import spec
from puka.exceptions import AMQPError, ConnectionBroken
from puka.framing import FrameReader, content_frames, method_frame

pytestmark = pytest.mark.timeout(300)

M = spec.METHODS_BY_NAME
DecodeError = spec.DecodeError
CONSUMER_TAG = "ctag"
FRAME_MAX = 131072
#: The promise numbers the core below hands out, in order (see new_core).
CONNECT, PUB1 = 1, 2
N_PUBLISHES = 6  # promises 2..7, delivery tags 1..6; tag 5 is mandatory
CONSUME, DECLARE, GET = 8, 9, 10
#: The channels the broker's answers below are on: publishes, the consumer, the declare, the get.
PUBLISH_CHANNEL, CONSUME_CHANNEL, DECLARE_CHANNEL, GET_CHANNEL = 1, 2, 3, 4

SETTINGS = dict(
    deadline=None,  # CPU cost is the benchmark's business, and wall-clock deadlines trip on a loaded machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    database=None,
)


@pytest.fixture(scope="module", autouse=True)
def quiet_puka_logger():
    """Protocol violations are logged at ERROR: tens of thousands of them, on purpose, here."""
    import logging

    logger = logging.getLogger("puka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


# --- a core in a known state, and what its broker would say next ------------------------------------


def new_core(max_message_size=None):
    """An open core with publishes in flight, a consumer, a pending declare and get."""
    core = Core(max_message_size=max_message_size)
    assert core.open() == CONNECT
    publishes = [
        core.publish("q", b"body %d" % i, headers={"x-n": i} if i % 2 else None, mandatory=i == 4)
        for i in range(N_PUBLISHES)
    ]
    consume = core.consume("q", prefetch_count=10, consumer_tag=CONSUMER_TAG)
    declare = core.declare("q")
    get = core.get("q")
    core.answer("channel.open")
    core.answer("basic.qos", "basic.consume")
    # PIECES below are built for these numbers and channels.
    assert publishes == list(range(PUB1, PUB1 + N_PUBLISHES))
    assert (consume, declare, get) == (CONSUME, DECLARE, GET)
    channels = {name: channel for channel, name, _method in core.sent}
    assert (channels["basic.publish"], channels["basic.consume"], channels["queue.declare"], channels["basic.get"]) == (
        PUBLISH_CHANNEL,
        CONSUME_CHANNEL,
        DECLARE_CHANNEL,
        GET_CHANNEL,
    )
    assert core.pending() == [*publishes, CONSUME, DECLARE, GET]
    assert core.in_flight_publishes() == publishes
    return core


def frames_bytes(frames):
    return b"".join(struct.pack(">BHI", t, c, len(p)) + p + b"\xce" for t, c, p in frames)


def content(channel, name, body=b"", properties=None, body_frames=1, **fields):
    props = spec.encode_properties(60, properties or {})
    if body_frames == 1:
        return b"".join(bytes(b) for b in content_frames(channel, M[name].encode(**fields), 60, props, body, FRAME_MAX))
    head = frames_bytes(
        [(1, channel, M[name].encode(**fields)), (2, channel, struct.pack(">HHQ", 60, 0, len(body)) + props)]
    )
    step = max(1, -(-len(body) // body_frames))
    return head + frames_bytes([(3, channel, body[i : i + step]) for i in range(0, len(body), step)])


def deliver(tag, body=b"hello", properties=None, body_frames=1):
    return content(
        CONSUME_CHANNEL,
        "basic.deliver",
        body,
        properties,
        body_frames,
        consumer_tag=CONSUMER_TAG,
        delivery_tag=tag,
        redelivered=False,
        exchange="",
        routing_key="q",
    )


def method(channel, name, **fields):
    return method_frame(channel, M[name].encode(**fields))


RICH_PROPERTIES = {
    "content_type": "application/json",
    "delivery_mode": 2,
    "priority": 3,
    "correlation_id": "c-1",
    "timestamp": 1700000000,
    "headers": {"x-int": 7, "x-str": "s", "x-list": [1, "a", True], "x-table": {"k": 1.5}, "x-bytes": b"\x00\xce"},
}

#: Pieces of valid broker output for the state of new_session (each valid at least once, in some order).
PIECES = [
    deliver(1),
    deliver(2, b"", None),
    deliver(3, b"a longer body " * 20, RICH_PROPERTIES, body_frames=3),
    method(PUBLISH_CHANNEL, "basic.ack", delivery_tag=2, multiple=True),
    method(PUBLISH_CHANNEL, "basic.nack", delivery_tag=3, multiple=False, requeue=False),
    method(PUBLISH_CHANNEL, "basic.ack", delivery_tag=4),
    content(
        PUBLISH_CHANNEL,
        "basic.return",
        b"body 4",
        {"headers": {"x-puka-promise": PUB1 + 4}},
        reply_code=312,
        reply_text="NO_ROUTE",
        exchange="",
        routing_key="q",
    )
    + method(PUBLISH_CHANNEL, "basic.ack", delivery_tag=5),
    method(PUBLISH_CHANNEL, "basic.ack", delivery_tag=6, multiple=True),
    method(DECLARE_CHANNEL, "queue.declare-ok", queue="q", message_count=5, consumer_count=1),
    method(
        DECLARE_CHANNEL,
        "channel.close",
        reply_code=404,
        reply_text="NOT_FOUND - no queue 'q'",
        class_id=50,
        method_id=10,
    ),
    content(
        GET_CHANNEL,
        "basic.get-ok",
        b"got",
        {"content_type": "text/plain"},
        delivery_tag=9,
        exchange="",
        routing_key="q",
        message_count=0,
    ),
    method(GET_CHANNEL, "basic.get-empty"),
    method(CONSUME_CHANNEL, "basic.cancel", consumer_tag=CONSUMER_TAG, no_wait=True),
    method(
        PUBLISH_CHANNEL, "channel.close", reply_code=406, reply_text="PRECONDITION_FAILED", class_id=60, method_id=40
    )
    + method(PUBLISH_CHANNEL, "channel.open-ok")
    + method(PUBLISH_CHANNEL, "confirm.select-ok"),
    method(0, "connection.blocked", reason="low on memory") + method(0, "connection.unblocked"),
    struct.pack(">BHI", 8, 0, 0) + b"\xce",  # heartbeat
    method(0, "connection.close-ok"),  # valid after a client close
    method(0, "connection.close", reply_code=320, reply_text="CONNECTION_FORCED - bye", class_id=0, method_id=0),
]


def frame_starts(data):
    """Offsets where each frame of a well-formed stream begins."""
    starts, pos = [], 0
    while pos + 7 <= len(data):
        starts.append(pos)
        (size,) = struct.unpack_from(">I", data, pos + 3)
        pos += 8 + size
    return starts


# --- mutations ---------------------------------------------------------------------------------------

INTERESTING_BYTES = [0, 1, 2, 3, 4, 7, 8, 0x0A, 0x14, 0x28, 0x3C, 0x50, 0x7F, 0x80, 0xCE, 0xFE, 0xFF]


@st.composite
def mutated_stream(draw, max_mutations=4):
    pieces = draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6))
    data = bytearray(b"".join(pieces))
    starts = frame_starts(bytes(data))
    for _ in range(draw(st.integers(0, max_mutations))):
        if draw(st.booleans()) and starts:
            # near a frame boundary: frame headers, method ids and lengths live there
            pos = min(len(data), draw(st.sampled_from(starts)) + draw(st.integers(0, 16)))
        else:
            pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice", "frame"]))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and pos < len(data):
            data[pos] = draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 12))]
        elif kind == "splice" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 64))]
        elif kind == "frame":
            data[pos:pos] = draw(st.sampled_from(PIECES))
    cuts = draw(st.lists(st.integers(1, 200), max_size=5))
    return bytes(data), cuts


def pieces_of(data, cuts):
    out, pos = [], 0
    for size in cuts:
        if pos >= len(data):
            break
        out.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        out.append(data[pos:])
    return out


# --- the checks -----------------------------------------------------------------------------------


def check_invariants(core):
    for number in core.promises_made():
        assert core.resolutions(number) <= 1, "promise %d resolved %d times" % (number, core.resolutions(number))
    in_flight = core.in_flight_publishes()
    if core.is_broken:
        assert isinstance(core.error, (ConnectionBroken, AMQPError)), repr(core.error)
        assert core.pending() == [], "promises left pending on a broken connection"
        assert in_flight == [], "publishes left in flight on a broken connection"
    else:
        resolved = set(in_flight) - set(core.pending())
        assert not resolved, "resolved publishes still in flight: %r" % sorted(resolved)


def act(core, action):
    """A client action between two reads; documented failures only."""
    try:
        if action == "publish":
            core.publish("q", b"more")
        elif action == "take":
            for _number, result in core.take_results():
                if "delivery_tag" in result and "promise_number" in result and not result.is_error:
                    core.ack(result)
        elif action == "cancel":
            core.cancel(CONSUME)
        elif action == "qos":
            core.qos(CONSUME, 5)
        elif action == "declare":
            core.declare("q2")
        elif action == "close":
            core.close()
    except ConnectionBroken:
        assert core.is_broken
    except ValueError as exc:  # a promise no longer consuming, or a message no longer awaiting its ack
        assert "not" in str(exc)


def read_frames(data, cuts, frame_max):
    """Feed ``data`` in pieces to a FrameReader: (reader, frames re-encoded), or None after a DecodeError."""
    reader = FrameReader(frame_max)
    consumed = []
    try:
        for piece in pieces_of(data, cuts):
            for frame_type, channel, payload in reader.feed(piece):
                assert frame_type in (1, 2, 3, 8) and 0 <= channel <= 0xFFFF
                if frame_max:
                    assert len(payload) + 8 <= frame_max
                consumed.append(struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce")
    except DecodeError:
        return None
    return reader, consumed


def decode_payloads(data):
    """Every public decoder over every frame of ``data``: DecodeError is the only failure allowed."""
    try:
        frames = FrameReader(0).feed(data)
    except DecodeError:
        return
    for frame_type, _channel, payload in frames:
        decoders = [(spec.decode_table, 0), (spec.decode_table, min(4, len(payload)))]
        if frame_type == 1:
            decoders.append((spec.decode_method, 0))
        elif frame_type == 2:
            decoders.append((spec.decode_properties, 12))
        for decode, offset in decoders:
            try:
                decode(payload, offset)
            except DecodeError:
                pass


def run_core(data, cuts, actions, max_message_size):
    """A fresh core fed ``data`` in pieces, with client actions between them, checked all along."""
    core = new_core(max_message_size)
    for index, piece in enumerate(pieces_of(data, cuts)):
        going_on = core.feed_bytes(piece)
        check_invariants(core)
        if not going_on:
            break
        if index < len(actions) and actions[index]:  # client actions between the reads
            act(core, actions[index])
            check_invariants(core)
    if not core.is_broken:
        core.lose_connection("the test is over")
    check_invariants(core)
    return core


# --- the tests -----------------------------------------------------------------------------------------


@settings(max_examples=1500, **SETTINGS)
@given(mutated_stream(max_mutations=6), st.sampled_from([0, 4096, FRAME_MAX]))
def test_frame_reader_raises_only_decode_error(stream, frame_max):
    data, cuts = stream
    outcome = read_frames(data, cuts, frame_max)
    if outcome is None:
        return
    reader, consumed = outcome
    joined = b"".join(consumed)
    assert data.startswith(joined) and len(reader) == len(data) - len(joined)


@settings(max_examples=1500, **SETTINGS)
@given(mutated_stream(max_mutations=6))
def test_public_decoders_raise_only_decode_error(stream):
    data, _cuts = stream
    decode_payloads(data)


ACTIONS = st.lists(st.sampled_from(["publish", "take", "cancel", "qos", "declare", "close", None]), max_size=4)


@settings(max_examples=10_000, **SETTINGS)
@given(mutated_stream(), ACTIONS, st.sampled_from([None, 100]))
@example((frames_bytes([(1, 1, M["basic.ack"].encode(delivery_tag=1)[:7])]), []), [], 100)  # truncated arguments
def test_core_survives_mutated_streams(stream, actions, max_message_size):
    """10,000 mutated streams: the core goes on or ends broken, and nothing escapes it."""
    data, cuts = stream
    run_core(data, cuts, actions, max_message_size)


def test_the_unmutated_pieces_give_every_promise_its_documented_result():
    """The fuzzer starts from valid broker output: fed in a valid order, each promise gets what the docs say."""
    core = new_core()
    valid_order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15]  # PIECES without the alternatives and closes
    for index in valid_order:
        assert core.feed_bytes(PIECES[index]), core.error
    results = core.take_results()
    by_number = {}
    for number, result in results:
        by_number.setdefault(number, []).append(result)
    assert not by_number[CONNECT][0].is_error
    assert by_number[PUB1] == [{}] and by_number[PUB1 + 1] == [{}]  # one basic.ack with multiple
    assert isinstance(by_number[PUB1 + 2][0].exception, puka.PublishNacked)
    assert by_number[PUB1 + 3] == [{}]
    returned = by_number[PUB1 + 4][0]  # mandatory, returned, then acked: fails with the return
    assert isinstance(returned.exception, puka.NoRoute) and returned["body"] == b"body 4"
    assert by_number[PUB1 + 5] == [{}]
    deliveries = by_number[CONSUME]
    assert [m["body"] for m in deliveries[:3]] == [b"hello", b"", b"a longer body " * 20]
    properties = {key: value for key, value in RICH_PROPERTIES.items() if key != "headers"}
    assert deliveries[2]["headers"] == {**RICH_PROPERTIES["headers"], **properties}
    assert isinstance(deliveries[3].exception, puka.ConsumerCancelled)
    assert by_number[DECLARE] == [{"queue": "q", "message_count": 5, "consumer_count": 1}]
    assert by_number[GET][0]["body"] == b"got" and by_number[GET][0]["headers"] == {"content_type": "text/plain"}
    assert core.pending() == [] and core.in_flight_publishes() == [] and not core.is_broken
    assert not core.feed_bytes(PIECES[-1])  # the broker closes the connection
    assert isinstance(core.error, puka.ConnectionForced)
