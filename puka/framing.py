"""Sans-IO AMQP framing: bytes in -> frames out, frames out -> bytes.

Theory of operation: an AMQP frame is a 7-byte header (type octet, channel
short, payload size long), the payload, and the frame-end octet 0xCE.
:class:`FrameReader` is fed whatever the transport received -- any split, one
byte at a time if need be -- and returns every complete frame as a
``(frame_type, channel, payload)`` tuple.  It checks the frame-end octet and
rejects a frame whose declared size exceeds the negotiated ``frame_max`` as
soon as its header arrives, before buffering any of it, so a hostile size
never allocates memory.  Any violation raises :class:`puka.spec.DecodeError`,
and the reader is then unusable (the connection must go).

The writers build frames for the other direction.  A message is a method
frame, a content header frame and as many body frames as ``frame_max - 8``
requires; small messages come out as one ``bytes`` (one allocation), large
ones as a list whose body parts are the caller's body or ``memoryview``
slices of it, so big bodies are never copied into frames (the transport
writes them from their own memory).  A ``bytes`` body counts as large above
:data:`JOIN_LIMIT`; a ``bytearray`` or ``memoryview`` one, which the caller
may change once the call returns, only above :data:`COPY_LIMIT` (below it, it
is copied at the call).

No sockets, no clocks: the connection layer owns those.
"""

from __future__ import annotations

from struct import Struct

from .spec import FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, DecodeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    Frame = tuple[int, int, bytes]
    Buffer = bytes | bytearray | memoryview

_header = Struct(">BHI")
_unpack_header = _header.unpack_from
_pack_header = _header.pack
_content_header = Struct(">BHIHHQ")
_pack_content_header = _content_header.pack
_END = bytes((FRAME_END,))
#: the frame-end octet of one frame and the header of the next: a content header, a body frame
_pack_end_content_header = Struct(">BBHIHHQ").pack
_pack_end_body_header = Struct(">BBHI").pack

#: A heartbeat frame (channel 0, empty payload).
HEARTBEAT = _pack_header(FRAME_HEARTBEAT, 0, 0) + _END
#: Body bytes at or under which a message with a ``bytes`` body is written as a single bytes object.
JOIN_LIMIT = 4096
#: Likewise for a ``bytearray`` or ``memoryview`` body: copied at the call up to this size, so the
#: caller may reuse its buffer once basic_publish returns.
COPY_LIMIT = 64 * 1024
_KNOWN_TYPES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT))


class FrameReader:
    """Feed received bytes, get complete frames.

    ``frame_max`` is the largest whole frame accepted (header and frame-end
    included), as negotiated by connection.tune; 0 means no limit.
    """

    __slots__ = ("_buffer", "_max_payload")

    def __init__(self, frame_max: int = 131072) -> None:
        self._buffer = bytearray()
        self.frame_max = frame_max

    @property
    def frame_max(self) -> int:
        return self._max_payload + 8 if self._max_payload < 0xFFFFFFFF else 0

    @frame_max.setter
    def frame_max(self, value: int) -> None:
        self._max_payload = value - 8 if value else 0xFFFFFFFF

    def __len__(self) -> int:
        """Bytes buffered that do not make a complete frame yet."""
        return len(self._buffer)

    def feed(self, data: Buffer) -> list[Frame]:
        """Add received bytes; return the frames they completed (maybe none).

        Frames are cut from ``data`` itself (a payload is one slice: one copy).
        A frame left incomplete by the previous read is completed from the head
        of ``data``, copying only what it lacks, so a read is never joined to
        what came before (that would cost a copy of the whole read, and at big
        frames fresh memory for every read).
        """
        if data.__class__ is not bytes:
            data = bytes(data)
        buf = self._buffer
        frames: list[Frame] = []
        pos = 0
        if buf:
            pos = self._complete(data, frames)
            if buf:  # still incomplete: all of ``data`` went into it
                return frames
        pos = self._cut(data, pos, frames)
        if pos < len(data):
            buf += memoryview(data)[pos:]
        return frames

    def _cut(self, data: bytes, pos: int, frames: list[Frame]) -> int:
        """Append the complete frames of ``data`` from ``pos`` on; return where the rest begins."""
        append = frames.append
        size = len(data)
        max_payload = self._max_payload
        while size - pos >= 7:
            frame_type, channel, length = _unpack_header(data, pos)
            if length > max_payload:
                raise self._too_big(length)
            end = pos + 7 + length
            if end >= size:
                break  # incomplete (the frame-end octet is at index `end`)
            if data[end] != FRAME_END:
                raise DecodeError("bad frame-end octet %#04x" % data[end])
            if frame_type not in _KNOWN_TYPES:
                raise DecodeError("unknown frame type %d" % frame_type)
            append((frame_type, channel, data[pos + 7 : end]))
            pos = end + 1
        return pos

    def _complete(self, data: bytes, frames: list[Frame]) -> int:
        """Complete the buffered partial frame from the head of ``data``; return the bytes taken.

        The buffer is empty afterwards if the frame was completed (and appended),
        otherwise every byte of ``data`` was added to it.
        """
        buf = self._buffer
        taken = 0
        if len(buf) < 7:  # its header first
            taken = min(7 - len(buf), len(data))
            buf += data[:taken]
            if len(buf) < 7:
                return taken
        length: int = _unpack_header(buf, 0)[2]
        if length > self._max_payload:
            raise self._too_big(length)
        need = 8 + length - len(buf)
        if need > len(data) - taken:
            buf += memoryview(data)[taken:]
            return len(data)
        buf += memoryview(data)[taken : taken + need]
        frame = bytes(buf)
        buf.clear()
        self._cut(frame, 0, frames)  # exactly one complete frame, checked as any other
        return taken + need

    def _too_big(self, length: int) -> DecodeError:
        return DecodeError("frame of %d bytes exceeds frame_max %d" % (length + 8, self._max_payload + 8))


def method_frame(channel: int, payload: bytes) -> bytes:
    """A method frame around an encoded method payload."""
    return _pack_header(FRAME_METHOD, channel, len(payload)) + payload + _END


def content_frames(
    channel: int,
    method_payload: bytes,
    class_id: int,
    properties: bytes,
    body: Buffer,
    frame_max: int,
) -> list[Buffer]:
    """The frames of a content-bearing method: method, content header, body frames.

    ``properties`` is the encoded property list (flag words + values).  Returns a
    list of buffers to write in order: one ``bytes`` when the body is small, the
    body's own memory (``memoryview`` slices) otherwise.
    """
    join_limit = JOIN_LIMIT
    if body.__class__ is not bytes:
        body = memoryview(body)
        if body.format != "B" or body.ndim != 1:
            body = body.cast("B")
        join_limit = COPY_LIMIT
    body_size = len(body)
    chunk = frame_max - 8 if frame_max else body_size
    if 0 < body_size <= join_limit and body_size <= chunk:
        # One bytes object: method frame, content header, body frame.
        return [
            b"".join(
                (
                    _pack_header(FRAME_METHOD, channel, len(method_payload)),
                    method_payload,
                    _pack_end_content_header(
                        FRAME_END, FRAME_HEADER, channel, 12 + len(properties), class_id, 0, body_size
                    ),
                    properties,
                    _pack_end_body_header(FRAME_END, FRAME_BODY, channel, body_size),
                    body,
                    _END,
                )
            )
        ]
    head = b"".join(
        (
            _pack_header(FRAME_METHOD, channel, len(method_payload)),
            method_payload,
            _pack_end_content_header(FRAME_END, FRAME_HEADER, channel, 12 + len(properties), class_id, 0, body_size),
            properties,
            _END,
        )
    )
    if not body_size:
        return [head]
    if body_size <= chunk:
        return [head, _pack_header(FRAME_BODY, channel, body_size), body, _END]
    view = memoryview(body)
    out: list[Buffer] = [head]
    for start in range(0, body_size, chunk):
        part = view[start : start + chunk]
        out.append(_pack_header(FRAME_BODY, channel, len(part)))
        out.append(part)
        out.append(_END)
    return out


def frames_to_bytes(frames: list[Buffer]) -> bytes:
    """Join buffers from the writers (for tests and small messages)."""
    return b"".join(frames)


__all__ = [
    "FrameReader",
    "HEARTBEAT",
    "method_frame",
    "content_frames",
    "frames_to_bytes",
    "DecodeError",
]
