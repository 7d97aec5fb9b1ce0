"""A minimal AMQP 0-9-1 client on a raw socket (stdlib only), as fast as plain Python gets.

It is the benchmarks' ceiling (``worker_raw.py``) and the way every worker fills
its queue before timing a consume (:func:`fill`).  It knows just enough of the
protocol for that: the handshake (PLAIN auth), one channel in confirm mode,
queue declare / purge / delete, and

* publish: one message's method + header + body frames are encoded once; a
  block of copies of it (about 256 KiB) is written over and over, straight
  from its memory, until ``n`` messages are out, while basic.ack confirms
  (``multiple`` or not) are read and counted until all ``n`` are in;
* consume: basic.qos + basic.consume, then every basic.deliver is answered with
  a pre-built basic.ack frame of which only the 8-byte delivery tag changes
  (the acks of one read go out in one send), until ``n`` bodies have arrived.

No properties, no tables, no error recovery: any unexpected frame raises.
"""

from __future__ import annotations

import select
import socket
import struct
from urllib.parse import unquote, urlsplit

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
_frame_header = struct.Struct(">BHI")
_method_id = struct.Struct(">I")
_tag = struct.Struct(">Q")


def mid(class_id: int, method_id: int) -> int:
    return (class_id << 16) | method_id


CONNECTION_START, CONNECTION_START_OK = mid(10, 10), mid(10, 11)
CONNECTION_TUNE, CONNECTION_TUNE_OK = mid(10, 30), mid(10, 31)
CONNECTION_OPEN, CONNECTION_OPEN_OK = mid(10, 40), mid(10, 41)
CONNECTION_CLOSE, CONNECTION_CLOSE_OK = mid(10, 50), mid(10, 51)
CHANNEL_OPEN, CHANNEL_OPEN_OK = mid(20, 10), mid(20, 11)
CHANNEL_CLOSE = mid(20, 40)
QUEUE_DECLARE, QUEUE_DECLARE_OK = mid(50, 10), mid(50, 11)
QUEUE_PURGE, QUEUE_PURGE_OK = mid(50, 30), mid(50, 31)
QUEUE_DELETE, QUEUE_DELETE_OK = mid(50, 40), mid(50, 41)
BASIC_QOS, BASIC_QOS_OK = mid(60, 10), mid(60, 11)
BASIC_CONSUME, BASIC_CONSUME_OK = mid(60, 20), mid(60, 21)
BASIC_CANCEL, BASIC_CANCEL_OK = mid(60, 30), mid(60, 31)
BASIC_PUBLISH, BASIC_DELIVER = mid(60, 40), mid(60, 60)
BASIC_ACK, BASIC_NACK = mid(60, 80), mid(60, 120)
CONFIRM_SELECT, CONFIRM_SELECT_OK = mid(85, 10), mid(85, 11)


def shortstr(value: str) -> bytes:
    data = value.encode()
    return bytes((len(data),)) + data


def longstr(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


EMPTY_TABLE = b"\x00\x00\x00\x00"


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _frame_header.pack(frame_type, channel, len(payload)) + payload + FRAME_END


def method(channel: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, _method_id.pack(method_id) + args)


class RawClient:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "localhost", parts.port or 5672))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.frame_max = 131072
        self.server_version = "?"
        user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.handshake(user, password, vhost)

    # --- synchronous plumbing (everything outside the measured loops) ------------------------------

    def read_frame(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= 7:
                frame_type, channel, size = _frame_header.unpack_from(self.buf, 0)
                if len(self.buf) >= size + 8:
                    payload = bytes(self.buf[7 : 7 + size])
                    assert self.buf[7 + size] == 0xCE, "bad frame end"
                    del self.buf[: size + 8]
                    if frame_type != FRAME_HEARTBEAT:
                        return frame_type, channel, payload
                    continue
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("broker closed the connection")
            self.buf += data

    def expect(self, method_id: int) -> bytes:
        """Read the next frame, which must be ``method_id``; returns its arguments."""
        frame_type, _, payload = self.read_frame()
        got = _method_id.unpack_from(payload, 0)[0] if frame_type == FRAME_METHOD else None
        if got != method_id:
            raise RuntimeError("expected method %#x, got frame %d %r" % (method_id, frame_type, payload[:80]))
        return payload[4:]

    def call(self, method_id: int, args: bytes, reply_id: int, channel: int = 1) -> bytes:
        self.sock.sendall(method(channel, method_id, args))
        return self.expect(reply_id)

    def handshake(self, user: str, password: str, vhost: str) -> None:
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        start = self.expect(CONNECTION_START)
        # Not a table decoder: the one string wanted from server-properties, found by its key.
        at = start.find(b"\x07versionS")
        if at >= 0:
            (length,) = struct.unpack_from(">I", start, at + 9)
            self.server_version = start[at + 13 : at + 13 + length].decode(errors="replace")
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.sock.sendall(
            method(0, CONNECTION_START_OK, EMPTY_TABLE + shortstr("PLAIN") + longstr(response) + shortstr("en_US"))
        )
        channel_max, frame_max, _heartbeat = struct.unpack_from(">HIH", self.expect(CONNECTION_TUNE), 0)
        self.frame_max = min(frame_max or 131072, 131072)
        self.sock.sendall(method(0, CONNECTION_TUNE_OK, struct.pack(">HIH", channel_max, self.frame_max, 0)))
        self.call(CONNECTION_OPEN, shortstr(vhost) + shortstr("") + b"\x00", CONNECTION_OPEN_OK, channel=0)
        self.call(CHANNEL_OPEN, shortstr(""), CHANNEL_OPEN_OK)
        self.call(CONFIRM_SELECT, b"\x00", CONFIRM_SELECT_OK)
        self.published = 0  # delivery tags of confirm mode, counted by the client

    def declare(self, queue: str) -> None:
        self.call(QUEUE_DECLARE, b"\x00\x00" + shortstr(queue) + b"\x00" + EMPTY_TABLE, QUEUE_DECLARE_OK)
        self.call(QUEUE_PURGE, b"\x00\x00" + shortstr(queue) + b"\x00", QUEUE_PURGE_OK)

    def delete(self, queue: str) -> None:
        self.call(QUEUE_DELETE, b"\x00\x00" + shortstr(queue) + b"\x00", QUEUE_DELETE_OK)

    def close(self) -> None:
        self.call(CONNECTION_CLOSE, b"\x00\xc8" + shortstr("") + b"\x00\x00\x00\x00", CONNECTION_CLOSE_OK, channel=0)
        self.sock.close()

    def encode_publish(self, queue: str, body: bytes) -> bytes:
        """Method + header + body frames of one message to ``queue`` (no properties)."""
        out = [
            method(1, BASIC_PUBLISH, b"\x00\x00" + shortstr("") + shortstr(queue) + b"\x00"),
            frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, len(body), 0)),
        ]
        chunk = self.frame_max - 8
        out += [frame(FRAME_BODY, 1, body[i : i + chunk]) for i in range(0, len(body), chunk)]
        return b"".join(out)

    # --- the measured loops ------------------------------------------------------------------------

    def publish_pipelined(self, message: bytes, n: int) -> None:
        """Write ``message`` (one encoded message) ``n`` times while counting confirms until all ``n`` are in."""
        first = self.published + 1
        self.published += n
        block = message * max(1, 262144 // len(message))  # whole messages: the stream repeats every block
        out = memoryview(block)
        period = len(block)
        total = len(message) * n
        sent = 0
        done = bytearray(n + 1)  # done[i]: tag first-1+i confirmed
        floor = 0  # every index <= floor is confirmed
        confirmed = 0
        sock = self.sock
        sock.setblocking(False)
        buf = self.buf
        unpack_header = _frame_header.unpack_from
        unpack_id = _method_id.unpack_from
        try:
            while confirmed < n:
                writing = [sock] if sent < total else []
                readable, writable, _ = select.select([sock], writing, [])
                if writable:
                    at = sent % period
                    try:
                        sent += sock.send(out[at : at + min(period - at, total - sent)])
                    except BlockingIOError:
                        pass
                if not readable:
                    continue
                try:
                    data = sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError("broker closed the connection")
                buf += data
                pos = 0
                end = len(buf)
                while end - pos >= 7:
                    frame_type, _, size = unpack_header(buf, pos)
                    if end - pos < size + 8:
                        break
                    if frame_type == FRAME_METHOD:
                        method_id = unpack_id(buf, pos + 7)[0]
                        if method_id != BASIC_ACK:
                            raise RuntimeError("unexpected method %#x while publishing" % method_id)
                        index = _tag.unpack_from(buf, pos + 11)[0] - first + 1
                        if buf[pos + 19] & 1:  # multiple: every tag up to this one
                            if index > floor:
                                confirmed += index - floor - done.count(1, floor + 1, index + 1)
                                done[floor + 1 : index + 1] = b"\x01" * (index - floor)
                                floor = index
                        elif not done[index]:
                            done[index] = 1
                            confirmed += 1
                    pos += size + 8
                del buf[:pos]
        finally:
            sock.setblocking(True)

    def publish_one(self, message: bytes) -> None:
        """Publish one encoded message and wait for its confirm."""
        self.sock.sendall(message)
        self.published += 1
        args = self.expect(BASIC_ACK)
        tag = _tag.unpack_from(args, 0)[0]
        if tag != self.published:
            raise RuntimeError("confirm of tag %d, expected %d" % (tag, self.published))

    def consume(self, queue: str, n: int, prefetch: int) -> int:
        """qos + consume, then ack every delivery until ``n`` bodies are in; returns the last body's size."""
        self.call(BASIC_QOS, struct.pack(">IHB", 0, prefetch, 0), BASIC_QOS_OK)
        ctag = self.call(
            BASIC_CONSUME, b"\x00\x00" + shortstr(queue) + shortstr("") + b"\x00" + EMPTY_TABLE, BASIC_CONSUME_OK
        )
        ack = bytearray(method(1, BASIC_ACK, b"\x00" * 8 + b"\x00"))  # tag at bytes 11..18
        acks = bytearray()
        sock = self.sock
        buf = self.buf
        unpack_header = _frame_header.unpack_from
        unpack_id = _method_id.unpack_from
        received = 0
        body_left = 0
        last_size = -1
        while received < n:
            data = sock.recv(1 << 18)
            if not data:
                raise ConnectionError("broker closed the connection")
            buf += data
            pos = 0
            end = len(buf)
            while end - pos >= 7:
                frame_type, _, size = unpack_header(buf, pos)
                if end - pos < size + 8:
                    break
                if frame_type == FRAME_BODY:
                    body_left -= size
                    if body_left == 0:
                        received += 1
                elif frame_type == FRAME_HEADER:
                    last_size = body_left = _tag.unpack_from(buf, pos + 11)[0]
                    if body_left == 0:
                        received += 1
                elif frame_type == FRAME_METHOD:
                    if unpack_id(buf, pos + 7)[0] != BASIC_DELIVER:
                        raise RuntimeError("unexpected method while consuming")
                    tag_at = pos + 12 + buf[pos + 11]  # after the consumer tag shortstr
                    ack[11:19] = buf[tag_at : tag_at + 8]
                    acks += ack
                pos += size + 8
            del buf[:pos]
            if acks:
                sock.sendall(acks)
                del acks[:]
        self.call(BASIC_CANCEL, ctag + b"\x00", BASIC_CANCEL_OK)
        return last_size


def fill(url: str, queue: str, size: int, n: int) -> None:
    """Put ``n`` messages of ``size`` bytes in the existing ``queue``, confirmed, on a connection of its own."""
    client = RawClient(url)
    client.publish_pipelined(client.encode_publish(queue, b"x" * size), n)
    client.close()
