"""Fuzzing the inbound path: mutated frame streams through FrameReader and the sans-IO Session.

Valid streams are what a broker would send to a client in a known state --
deliveries, confirms, returns, replies, channel and connection closes --
built with puka.spec and puka.framing.  Hypothesis mutates them (flips, sets,
truncates, inserts, deletes, splices, duplicates bytes or whole frames) and
feeds them in random pieces.  The contract checked:

* ``FrameReader.feed`` raises nothing but ``puka.spec.DecodeError``;
* the public decoders raise nothing but ``DecodeError``;
* the Session, fed frames the way :class:`puka.connection.Connection` feeds it
  (heartbeats taken out; a ``DecodeError`` ends the connection), either goes
  on or ends broken -- ``status == 'closed'``, ``error`` a ConnectionBroken
  (or the broker's AMQPError after its connection.close), every promise
  resolved -- and never lets another exception escape.
"""

from __future__ import annotations

import functools
import gc
import logging
import struct
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import puka
from puka import spec
from puka.exceptions import AMQPError, ConnectionBroken
from puka.framing import FrameReader, content_frames, method_frame
from puka.machines import Session

pytestmark = pytest.mark.timeout(120)

M = spec.METHODS_BY_NAME
DecodeError = spec.DecodeError
CONSUMER_TAG = "ctag"
FRAME_MAX = 131072
#: The promise numbers the session below hands out, in order (see new_session).
CONNECT, PUB1 = 1, 2
N_PUBLISHES = 6  # promises 2..7, delivery tags 1..6; tag 5 is mandatory
CONSUME, DECLARE, GET = 8, 9, 10

#: CPU seconds one input may take.  Measured as this thread's CPU time rather than with hypothesis's
#: wall-clock ``deadline``: on a loaded shared machine a descheduled thread would trip that at random.
BUDGET = 0.1

SETTINGS = dict(
    deadline=None,  # see BUDGET
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    database=None,
)


@pytest.fixture(scope="module", autouse=True)
def quiet_puka_logger():
    """Protocol violations are logged at ERROR: tens of thousands of them, on purpose, here."""
    logger = logging.getLogger("puka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


# --- a session in a known state, and what its broker would say next --------------------------------


def mf(channel, name, **fields):
    return (1, channel, M[name].encode(**fields))


def new_session(max_message_size=puka.machines.MAX_MESSAGE_SIZE):
    """An open Session (sans-IO) with publishes in flight, a consumer, a pending declare and get."""
    out = []
    session = Session(out.append, out.extend, max_message_size=max_message_size)
    session.start()
    caps = {"publisher_confirms": True, "consumer_cancel_notify": True, "basic.nack": True}
    session.on_frames(
        [
            mf(
                0,
                "connection.start",
                version_major=0,
                version_minor=9,
                server_properties={"capabilities": caps},
                mechanisms="PLAIN",
                locales="en_US",
            ),
        ]
    )
    session.on_frames([mf(0, "connection.tune", channel_max=2047, frame_max=FRAME_MAX, heartbeat=0)])
    session.on_frames([mf(0, "connection.open-ok")])
    session.on_frames([mf(1, "channel.open-ok"), mf(1, "confirm.select-ok")])
    assert session.status == "open" and session.publishers[""].ready
    for i in range(N_PUBLISHES):
        session.publish("", "q", b"body %d" % i, {"x-n": i} if i % 2 else None, i == 4, None)
    session.consume([{"queue": "q", "consumer_tag": CONSUMER_TAG}], 10, False, None)
    declare = M["queue.declare"]
    session.call(declare, (M["queue.declare-ok"].method_id,), ("q", False, False, False, False, False, {}), None)
    session.get("q", False, None)
    session.on_frames([mf(2, "channel.open-ok"), mf(3, "channel.open-ok"), mf(4, "channel.open-ok")])
    session.on_frames([mf(2, "basic.qos-ok"), mf(2, "basic.consume-ok", consumer_tag=CONSUMER_TAG)])
    assert sorted(session.promises) == [CONNECT, *range(PUB1, PUB1 + N_PUBLISHES), CONSUME, DECLARE, GET]
    assert sorted(session.publishers[""].inflight) == list(range(1, N_PUBLISHES + 1))
    return session, out


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
        2,
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
    method(1, "basic.ack", delivery_tag=2, multiple=True),
    method(1, "basic.nack", delivery_tag=3, multiple=False, requeue=False),
    method(1, "basic.ack", delivery_tag=4),
    content(
        1,
        "basic.return",
        b"body 4",
        {"headers": {"x-puka-promise": PUB1 + 4}},
        reply_code=312,
        reply_text="NO_ROUTE",
        exchange="",
        routing_key="q",
    )
    + method(1, "basic.ack", delivery_tag=5),
    method(1, "basic.ack", delivery_tag=6, multiple=True),
    method(3, "queue.declare-ok", queue="q", message_count=5, consumer_count=1),
    method(3, "channel.close", reply_code=404, reply_text="NOT_FOUND - no queue 'q'", class_id=50, method_id=10),
    content(
        4,
        "basic.get-ok",
        b"got",
        {"content_type": "text/plain"},
        delivery_tag=9,
        exchange="",
        routing_key="q",
        message_count=0,
    ),
    method(4, "basic.get-empty"),
    method(2, "basic.cancel", consumer_tag=CONSUMER_TAG, no_wait=True),
    method(1, "channel.close", reply_code=406, reply_text="PRECONDITION_FAILED", class_id=60, method_id=40)
    + method(1, "channel.open-ok")
    + method(1, "confirm.select-ok"),
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


def within_budget(fn, seconds=BUDGET):
    """Run ``fn()``; it must take under ``seconds`` of this thread's CPU time.

    The collector is held off while it runs (its pauses belong to the garbage of
    earlier inputs), and an input over budget runs once more before failing: a
    slow input is slow every time, a pause of the machine is not.
    """
    for _attempt in (1, 2):
        gc.disable()
        started = time.thread_time()
        try:
            result = fn()
        finally:
            spent = time.thread_time() - started
            gc.enable()
        if spent < seconds:
            return result
    raise AssertionError("one input took %.0f ms of CPU, twice" % (spent * 1000))


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


# --- the harness: what Connection does with the frames -----------------------------------------------


class Transport:
    """What Connection does between the socket and the Session: frame, drop heartbeats, break on errors."""

    def __init__(self, session):
        self.session = session
        self.reader = FrameReader(FRAME_MAX)
        self.ended = None

    def feed(self, piece):
        """Feed received bytes; returns False once the connection is over."""
        session = self.session
        if self.ended is not None:
            return False
        try:
            frames = self.reader.feed(piece)
        except DecodeError as exc:
            return self.broken("reader", "protocol violation: %s" % exc)
        payload_frames = []
        for frame in frames:
            if frame[0] == 8:
                if frame[1] != 0:
                    return self.broken("heartbeat", "heartbeat on channel %d" % frame[1])
                continue
            payload_frames.append(frame)
        if payload_frames:
            # The Session itself must turn any violation into a broken session: nothing may escape.
            session.on_frames(payload_frames)
        if session.status == "closed":
            self.ended = "closed"
            return False
        return True

    def broken(self, why, message):
        self.ended = why
        self.session.on_broken(ConnectionBroken(message))
        return False


def check_invariants(session):
    if session.status == "closed":
        assert isinstance(session.error, (ConnectionBroken, AMQPError)), repr(session.error)
        pending = [p for p in session.promises.values() if not p.final]
        assert not pending, "promises left pending on a closed session: %r" % pending
        assert not session.publishers[""].inflight and not session.publishers[""].backlog
    else:
        assert session.status in ("open", "closing") and session.error is None
        assert all(not p.final for p in session.publishers[""].inflight.values()), (
            "a confirmed publish is still in flight"
        )
    for promise in session.promises.values():
        if promise.number != CONSUME and promise.results is not None and promise.results.__class__ is list:
            assert len(promise.results) <= 1, "promise %d resolved twice: %r" % (promise.number, promise.results)


def act(session, action):
    """A client action between two reads; documented failures only."""
    try:
        if action == "publish":
            session.publish("", "q", b"more", None, False, None)
        elif action == "take":
            for promise in list(session.ready):
                if promise.results:
                    result = session.take(promise)
                    if "delivery_tag" in result and "promise_number" in result and not result.is_error:
                        session.settle(result, "ack")
        elif action == "cancel":
            session.cancel(CONSUME, None)
        elif action == "qos":
            session.qos(CONSUME, 5, None)
        elif action == "declare":
            declare = M["queue.declare"]
            session.call(
                declare, (M["queue.declare-ok"].method_id,), ("q2", False, False, False, False, False, {}), None
            )
        elif action == "close":
            session.close(None)
    except ConnectionBroken:
        assert session.error is not None
    except ValueError as exc:  # a promise no longer consuming, or a message no longer awaiting its ack
        assert "not" in str(exc)


# --- the tests -----------------------------------------------------------------------------------------


@settings(max_examples=1500, **SETTINGS)
@given(mutated_stream(max_mutations=6), st.sampled_from([0, 4096, FRAME_MAX]))
def test_frame_reader_raises_only_decode_error(stream, frame_max):
    data, cuts = stream

    def run():
        reader = FrameReader(frame_max)
        consumed = []
        try:
            for piece in pieces_of(data, cuts):
                for frame_type, channel, payload in reader.feed(piece):
                    assert frame_type in (1, 2, 3, 8) and 0 <= channel <= 0xFFFF
                    assert not frame_max or len(payload) + 8 <= frame_max
                    consumed.append(struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce")
        except DecodeError:
            return None
        return reader, consumed

    outcome = within_budget(run)
    if outcome is None:
        return
    reader, consumed = outcome
    joined = b"".join(consumed)
    assert data.startswith(joined) and len(reader) == len(data) - len(joined)


@settings(max_examples=1500, **SETTINGS)
@given(mutated_stream(max_mutations=6))
def test_public_decoders_raise_only_decode_error(stream):
    data, _cuts = stream
    reader = FrameReader(0)
    try:
        frames = reader.feed(data)
    except DecodeError:
        return
    for frame_type, _channel, payload in frames:
        decoders = [(spec.decode_table, 0), (spec.decode_table, min(4, len(payload)))]
        if frame_type == 1:
            decoders.append((spec.decode_method, 0))
        elif frame_type == 2:
            decoders.append((spec.decode_properties, 12))
        for decode, offset in decoders:
            within_budget(functools.partial(decode_or_decode_error, decode, payload, offset))


def decode_or_decode_error(decode, payload, offset):
    try:
        decode(payload, offset)
    except DecodeError:
        pass


ACTIONS = st.lists(st.sampled_from(["publish", "take", "cancel", "qos", "declare", "close", None]), max_size=4)


@settings(max_examples=10_000, **SETTINGS)
@given(mutated_stream(), ACTIONS, st.sampled_from([puka.machines.MAX_MESSAGE_SIZE, 100]))
@example((frames_bytes([(1, 1, M["basic.ack"].encode(delivery_tag=1)[:7])]), []), [], 100)  # truncated arguments
def test_session_survives_mutated_streams(stream, actions, max_message_size):
    """10,000 mutated streams: the Session goes on or ends broken, and nothing escapes on_frames."""
    data, cuts = stream

    def run():
        session, _out = new_session(max_message_size)
        transport = Transport(session)
        for index, piece in enumerate(pieces_of(data, cuts)):
            going_on = transport.feed(piece)
            check_invariants(session)
            if not going_on:
                break
            if index < len(actions) and actions[index]:  # client actions between the reads
                act(session, actions[index])
                check_invariants(session)
        if session.status != "closed":
            session.on_broken(ConnectionBroken("the test is over"))
        check_invariants(session)

    within_budget(run)
