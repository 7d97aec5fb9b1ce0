"""puka.framing: bytes in -> frames out (FrameReader), frames out -> bytes (the writers)."""

from __future__ import annotations

import array
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands, header
from pamqp import frame as pamqp_frame

from puka import framing, spec
from puka.framing import HEARTBEAT, JOIN_LIMIT, FrameReader, content_frames, frames_to_bytes, method_frame
from puka.spec import DecodeError

METHOD, HEADER, BODY, HEART = 1, 2, 3, 8
FRAME_MAX = 4096
MiB = 1 << 20


def raw_frame(frame_type, channel, payload, end=b"\xce"):
    """A frame as the AMQP spec lays it out: type, channel, size, payload, frame-end."""
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + end


#: A varied stream: every frame type, channels 0 to 65535, empty and maximal payloads.
FRAMES = [
    (METHOD, 0, spec.METHODS_BY_NAME["connection.tune"].encode(channel_max=2047, frame_max=FRAME_MAX)),
    (HEART, 0, b""),
    (METHOD, 1, spec.METHODS_BY_NAME["basic.publish"].encode(exchange="x", routing_key="r")),
    (HEADER, 1, struct.pack(">HHQ", 60, 0, 5000) + b"\x00\x00"),
    (BODY, 1, bytes(range(256)) * 15 + b"\xce" * (FRAME_MAX - 8 - 3840)),  # exactly frame_max - 8
    (BODY, 1, b"\xce\xce" + bytes(904)),
    (BODY, 65535, b""),
    (METHOD, 2, spec.METHODS_BY_NAME["basic.ack"].encode(delivery_tag=1)),
    (HEART, 0, b""),
]
STREAM = b"".join(raw_frame(*f) for f in FRAMES)


def feed_pieces(pieces, frame_max=FRAME_MAX):
    reader = FrameReader(frame_max)
    frames = []
    for piece in pieces:
        frames.extend(reader.feed(piece))
    assert len(reader) == 0, "bytes left over after the last complete frame"
    return frames


def split(data, cuts):
    cuts = sorted(set(cuts))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


# --- FrameReader ---------------------------------------------------------------------------------


def test_whole_stream_gives_every_frame():
    assert len(FRAMES[4][2]) == FRAME_MAX - 8  # the stream holds a frame of exactly frame_max
    frames = feed_pieces([STREAM])
    assert frames == FRAMES
    for frame in frames:
        assert type(frame[2]) is bytes


def test_one_byte_at_a_time_gives_the_same_frames():
    reader = FrameReader(FRAME_MAX)
    frames = []
    complete_at = []
    for i in range(len(STREAM)):
        got = reader.feed(STREAM[i : i + 1])
        if got:
            complete_at.append(i)
        frames.extend(got)
        assert len(reader) + sum(len(raw_frame(*f)) for f in frames) == i + 1
    assert frames == FRAMES
    # Each frame comes out exactly when its frame-end octet arrives.
    ends = []
    pos = 0
    for f in FRAMES:
        pos += len(raw_frame(*f))
        ends.append(pos - 1)
    assert complete_at == ends


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=40), st.sampled_from([bytes, bytearray, memoryview]))
def test_random_splits_give_the_same_frames(cuts, kind):
    assert feed_pieces([kind(p) for p in split(STREAM, cuts)]) == FRAMES


def test_seeded_random_splits_give_the_same_frames():
    rng = random.Random(1234)
    for _ in range(200):
        cuts = [rng.randrange(len(STREAM)) for _ in range(rng.randrange(1, 30))]
        assert feed_pieces(split(STREAM, cuts)) == FRAMES


def test_the_reader_copies_what_it_keeps():
    # A transport reusing its receive buffer must not corrupt a buffered partial frame.
    frame = raw_frame(METHOD, 3, b"payload!")
    reader = FrameReader()
    chunk = bytearray(frame[:10])
    assert reader.feed(chunk) == []
    chunk[:] = b"\xff" * 10
    assert reader.feed(frame[10:]) == [(METHOD, 3, b"payload!")]


def test_bad_frame_end_is_a_decode_error():
    with pytest.raises(DecodeError, match="frame-end"):
        FrameReader().feed(raw_frame(METHOD, 1, b"abc", end=b"\x00"))
    # Also when it arrives alone, after the rest of the frame.
    reader = FrameReader()
    assert reader.feed(raw_frame(METHOD, 1, b"abc")[:-1]) == []
    with pytest.raises(DecodeError):
        reader.feed(b"\xcd")


def test_a_bad_frame_end_after_good_frames_is_still_caught():
    with pytest.raises(DecodeError):
        FrameReader().feed(HEARTBEAT + raw_frame(BODY, 1, b"x", end=b"\xcf"))


@pytest.mark.parametrize("frame_type", [0, 4, 7, 9, 65, 206, 255])
def test_unknown_frame_type_is_a_decode_error(frame_type):
    with pytest.raises(DecodeError, match="frame type"):
        FrameReader().feed(raw_frame(frame_type, 0, b"x"))


def test_a_frame_of_exactly_frame_max_is_accepted():
    payload = bytes(FRAME_MAX - 8)
    assert FrameReader(FRAME_MAX).feed(raw_frame(BODY, 1, payload)) == [(BODY, 1, payload)]


def test_an_oversized_header_is_rejected_as_soon_as_its_seven_bytes_arrive():
    head = struct.pack(">BHI", BODY, 1, FRAME_MAX - 7)  # one byte over frame_max - 8
    with pytest.raises(DecodeError, match="frame_max"):
        FrameReader(FRAME_MAX).feed(head)
    # Byte by byte: nothing until the seventh byte, which raises.
    reader = FrameReader(FRAME_MAX)
    for i in range(6):
        assert reader.feed(head[i : i + 1]) == []
    with pytest.raises(DecodeError):
        reader.feed(head[6:])


@pytest.mark.parametrize("size", [2**32 - 1, 2**31, 131072 - 7])
def test_a_huge_declared_size_raises_immediately(size):
    reader = FrameReader()  # frame_max 131072, RabbitMQ's default
    assert reader.frame_max == 131072
    with pytest.raises(DecodeError):
        reader.feed(struct.pack(">BHI", METHOD, 0, size))


def test_frame_max_can_change_after_tuning():
    reader = FrameReader(FRAME_MAX)
    reader.frame_max = 8192
    assert reader.frame_max == 8192
    payload = bytes(8000)
    assert reader.feed(raw_frame(BODY, 1, payload)) == [(BODY, 1, payload)]
    with pytest.raises(DecodeError):
        reader.feed(struct.pack(">BHI", BODY, 1, 8185))


def test_frame_max_zero_means_no_limit():
    reader = FrameReader(0)
    assert reader.frame_max == 0
    payload = bytes(200_000)
    assert reader.feed(raw_frame(BODY, 1, payload)) == [(BODY, 1, payload)]
    assert reader.feed(struct.pack(">BHI", BODY, 1, 2**32 - 1)) == []
    assert len(reader) == 7


# --- writers ------------------------------------------------------------------------------------


def test_heartbeat_is_the_spec_frame():
    assert HEARTBEAT == b"\x08\x00\x00\x00\x00\x00\x00\xce"
    assert FrameReader().feed(HEARTBEAT) == [(HEART, 0, b"")]


def test_method_frame_layout():
    payload = spec.METHODS_BY_NAME["basic.ack"].encode(delivery_tag=7, multiple=True)
    frame = method_frame(513, payload)
    assert frame == b"\x01" + b"\x02\x01" + struct.pack(">I", len(payload)) + payload + b"\xce"
    assert frame == pamqp_frame.marshal(commands.Basic.Ack(7, True), 513)


def test_small_message_is_one_bytes_object_matching_pamqp():
    publish = spec.METHODS_BY_NAME["basic.publish"].encode(exchange="ex", routing_key="rk")
    props = {"content_type": "text/plain", "delivery_mode": 2}
    out = content_frames(5, publish, 60, spec.encode_properties(60, props), b"hello", FRAME_MAX)
    assert len(out) == 1 and type(out[0]) is bytes
    expected = (
        pamqp_frame.marshal(commands.Basic.Publish(exchange="ex", routing_key="rk"), 5)
        + pamqp_frame.marshal(
            header.ContentHeader(0, 5, commands.Basic.Properties(content_type="text/plain", delivery_mode=2)),
            5,
        )
        + pamqp_frame.marshal(pamqp_body.ContentBody(b"hello"), 5)
    )
    assert out[0] == expected


def test_empty_body_sends_no_body_frame():
    out = content_frames(1, b"\x00\x3c\x00\x28", 60, b"\x00\x00", b"", FRAME_MAX)
    frames = feed_pieces(out)
    assert [f[0] for f in frames] == [METHOD, HEADER]
    assert frames[1][2] == struct.pack(">HHQ", 60, 0, 0) + b"\x00\x00"


def _parse_message(out, frame_max, channel=1):
    frames = feed_pieces([frames_to_bytes(out)], frame_max)
    (mt, mch, _), (ht, hch, head), *bodies = frames
    assert (mt, ht, mch, hch) == (METHOD, HEADER, channel, channel)
    class_id, weight, size = struct.unpack(">HHQ", head[:12])
    assert (class_id, weight) == (60, 0)
    for frame_type, ch, _ in bodies:
        assert (frame_type, ch) == (BODY, channel)
    return size, head[12:], [payload for _, _, payload in bodies]


@pytest.mark.parametrize("size", [1, 4087, 4088, 4089, 3 * 4088, 3 * 4088 + 1, 70_000])
def test_body_is_split_at_frame_max_minus_eight(size):
    body = bytes(random.Random(size).randbytes(size))
    props = spec.encode_properties(60, {"message_id": "m"})
    out = content_frames(1, b"\x00\x3c\x00\x28\x00\x00\x00\x00\x00", 60, props, body, FRAME_MAX)
    declared, got_props, parts = _parse_message(out, FRAME_MAX)
    assert declared == size and got_props == props
    assert b"".join(parts) == body
    assert len(parts) == -(-size // (FRAME_MAX - 8))
    assert all(len(p) == FRAME_MAX - 8 for p in parts[:-1])
    assert 0 < len(parts[-1]) <= FRAME_MAX - 8


def test_bodies_up_to_the_join_limit_in_one_frame_are_joined():
    body = bytes(JOIN_LIMIT)
    out = content_frames(1, b"\x00\x3c\x00\x28", 60, b"\x00\x00", body, 131072)
    assert len(out) == 1 and type(out[0]) is bytes
    out = content_frames(1, b"\x00\x3c\x00\x28", 60, b"\x00\x00", bytes(JOIN_LIMIT + 1), 131072)
    assert len(out) > 1


def _body_parts(out):
    """The body slices among the writer's output: every third buffer after the head."""
    parts = out[1:]
    assert len(parts) % 3 == 0
    for i in range(0, len(parts), 3):
        assert parts[i][:1] == bytes([BODY]) and parts[i + 2] == b"\xce"
    return parts[1::3]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_large_bodies_are_memoryview_slices_of_the_callers_memory(kind):
    backing = bytearray(random.Random(5).randbytes(5 * MiB))
    body = {"bytes": bytes(backing), "bytearray": backing, "memoryview": memoryview(backing)}[kind]
    owner = body.obj if isinstance(body, memoryview) else body
    frame_max = 131072
    out = content_frames(1, b"\x00\x3c\x00\x28", 60, b"\x00\x00", body, frame_max)
    assert type(out[0]) is bytes
    parts = _body_parts(out)
    assert len(parts) == -(-5 * MiB // (frame_max - 8))
    for part in parts:
        assert isinstance(part, memoryview)
        assert part.obj is owner  # a view on the caller's buffer, not a copy
    assert b"".join(parts) == bytes(backing)
    if kind != "bytes":
        backing[0] ^= 0xFF  # the caller's memory, seen through the first slice
        assert parts[0][0] == backing[0]
    size, _, frames = _parse_message(out, frame_max)
    assert size == 5 * MiB and b"".join(frames) == bytes(backing)


def test_typed_arrays_are_sent_as_their_bytes():
    body = array.array("H", range(50_000))
    out = content_frames(2, b"\x00\x3c\x00\x28", 60, b"\x00\x00", body, FRAME_MAX)
    size, _, parts = _parse_message(out, FRAME_MAX, channel=2)
    assert size == 100_000 == body.itemsize * len(body)
    assert b"".join(parts) == body.tobytes()


def test_frame_max_zero_sends_the_body_in_one_frame():
    body = bytes(3 * JOIN_LIMIT)
    out = content_frames(1, b"\x00\x3c\x00\x28", 60, b"\x00\x00", body, 0)
    assert len(_body_parts(out)) == 1
    size, _, parts = _parse_message(out, 0)
    assert size == len(body) and parts == [body]


def test_frames_to_bytes_joins_every_buffer():
    assert frames_to_bytes([b"a", memoryview(b"bc"), bytearray(b"d")]) == b"abcd"
    assert framing.DecodeError is DecodeError
