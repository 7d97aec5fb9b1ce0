"""Fault injection for puka's tests: a controllable TCP proxy and a scripted fake AMQP server.

``Proxy`` sits between a client and the broker (or any upstream address) and
can cut, stall, throttle or slice the traffic on demand.  ``FakeServer`` plays
the broker's side of AMQP 0-9-1 from a script, so a test can make it say what
no real broker would (duplicate acks, malformed frames, silence...).

Both run in one background thread each, release every socket they opened on
``close()`` (they are context managers too) and never raise into the test:
an unexpected error inside a thread is kept in ``error`` for the test to check.
"""

from __future__ import annotations

import select
import selectors
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from urllib.parse import quote

from puka import ConnectionBroken, spec
from puka.framing import FrameReader, content_frames, method_frame

M = spec.METHODS_BY_NAME
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8

__all__ = [
    "Proxy",
    "FakeServer",
    "frame",
    "method",
    "message",
    "header_frame",
    "body_frame",
    "wait_until",
    "rst_close",
    "fd_count",
    "pump",
]


# --- frame builders ------------------------------------------------------------------------------


def frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE, size: int | None = None) -> bytes:
    """A raw frame; ``end`` and ``size`` may lie (for malformed-input tests)."""
    length = len(payload) if size is None else size
    return struct.pack(">BHI", frame_type, channel, length) + payload + bytes((end,))


def method(channel: int, name: str, **fields) -> bytes:
    """A method frame built with puka.spec (missing fields take their defaults)."""
    return method_frame(channel, M[name].encode(**fields))


def header_frame(channel: int, body_size: int, properties: dict | None = None, class_id: int = 60) -> bytes:
    """A content header frame declaring ``body_size``."""
    props = spec.encode_properties(60, properties or {})
    return frame(FRAME_HEADER, channel, struct.pack(">HHQ", class_id, 0, body_size) + props)


def body_frame(channel: int, body: bytes) -> bytes:
    return frame(FRAME_BODY, channel, body)


def message(
    channel: int, name: str, body: bytes = b"", properties: dict | None = None, frame_max: int = 131072, **fields
) -> bytes:
    """A content-bearing method (deliver, return, get-ok...) as method + header + body frames."""
    props = spec.encode_properties(60, properties or {})
    return b"".join(
        bytes(part) for part in content_frames(channel, M[name].encode(**fields), 60, props, body, frame_max)
    )


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true (returns True) or ``timeout`` passes (returns False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def rst_close(sock: socket.socket) -> None:
    """Close a socket abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# --- the proxy -----------------------------------------------------------------------------------

UP, DOWN = "up", "down"
#: Most bytes the proxy holds per direction before it stops reading (so back-pressure reaches the sender).
PROXY_BUFFER = 64 * 1024


class _Pair:
    """One proxied connection: the client's socket, the upstream socket, a buffer per direction."""

    __slots__ = ("client", "server", "buf", "eof", "shut", "dead")

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.buf = {UP: bytearray(), DOWN: bytearray()}
        self.eof = {UP: False, DOWN: False}  # the source of that direction sent FIN
        self.shut = {UP: False, DOWN: False}  # FIN passed on to the destination
        self.dead = False

    def ends(self, direction: str) -> tuple[socket.socket, socket.socket]:
        """(source, destination) of a direction."""
        return (self.client, self.server) if direction == UP else (self.server, self.client)


class Proxy:
    """A TCP proxy in a background thread, with faults on demand.

    ``up`` is client -> upstream, ``down`` upstream -> client.  Controls (safe
    from any thread; each takes effect before it returns):

    * ``cut()``: close both sides of every connection with RST;
    * ``stall()`` / ``resume()``: stop / restart forwarding both ways, sockets kept open
      (the proxy stops reading too, so TCP back-pressure reaches the senders);
    * ``throttle(bytes_per_second, direction='up'|'down'|'both')``: 0 stops that
      direction, None lifts the limit;
    * ``slice(n, delay=0.0)``: forward in ``n``-byte chunks, one ``send()`` each
      (TCP_NODELAY: one segment each), optionally ``delay`` seconds apart; ``slice(None)`` ends it.

    ``bytes_up`` / ``bytes_down`` count bytes delivered to the destination,
    ``accepted`` the connections accepted, ``active`` those still open.
    """

    def __init__(
        self,
        upstream: tuple[str, int] = ("127.0.0.1", 5672),
        vhost: str = "/",
        username: str = "guest",
        password: str = "guest",
    ) -> None:
        self.upstream = upstream
        self.vhost = vhost
        self.credentials = (username, password)
        self.error: BaseException | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.accepted = 0
        self._pairs: list[_Pair] = []
        self._stalled = False
        self._rate: dict[str, float | None] = {UP: None, DOWN: None}
        self._tokens = {UP: 0.0, DOWN: 0.0}
        self._refilled = {UP: time.monotonic(), DOWN: time.monotonic()}
        self._slice: int | None = None
        self._slice_delay = 0.0
        self._next_send = {UP: 0.0, DOWN: 0.0}
        self._commands: deque = deque()
        self._lock = threading.Lock()
        self._stop = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._registered: dict[socket.socket, int] = {}
        self._thread = threading.Thread(target=self._run, name="faults.Proxy:%d" % self.port, daemon=True)
        self._thread.start()

    # --- public interface ---

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        user, password = (quote(part, safe="") for part in self.credentials)
        return "amqp://%s:%s@127.0.0.1:%d/%s" % (user, password, self.port, quote(self.vhost, safe=""))

    @property
    def active(self) -> int:
        return sum(1 for p in self._pairs if not p.dead)

    def cut(self) -> None:
        """Close both sides of every proxied connection abruptly (RST)."""
        self._call(self._do_cut)

    def stall(self) -> None:
        self._call(lambda: setattr(self, "_stalled", True))

    def resume(self) -> None:
        self._call(lambda: setattr(self, "_stalled", False))

    def throttle(self, bytes_per_second: float | None, direction: str = "both") -> None:
        if direction not in (UP, DOWN, "both"):
            raise ValueError("direction must be 'up', 'down' or 'both'")
        if bytes_per_second is not None and bytes_per_second < 0:
            raise ValueError("bytes_per_second must be >= 0 (or None for no limit)")

        def apply() -> None:
            now = time.monotonic()
            for d in (UP, DOWN) if direction == "both" else (direction,):
                self._rate[d] = bytes_per_second
                self._tokens[d] = 0.0
                self._refilled[d] = now

        self._call(apply)

    def slice(self, n: int | None, delay: float = 0.0) -> None:
        if n is not None and n < 1:
            raise ValueError("slice size must be >= 1 byte (or None)")

        def apply() -> None:
            self._slice = n
            self._slice_delay = delay if n else 0.0

        self._call(apply)

    def close(self) -> None:
        """Stop the thread and close every socket (the proxied connections get RST)."""
        if self._thread.is_alive():
            self._stop = True
            self._wake()
            self._thread.join(10)
        if self._thread.is_alive():  # pragma: no cover - would be a bug in the proxy
            raise RuntimeError("proxy thread did not stop")

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- plumbing ---

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _call(self, fn, timeout: float = 5.0) -> None:
        """Run ``fn`` in the proxy thread and wait for it."""
        if not self._thread.is_alive():
            raise RuntimeError("proxy is closed")
        done = threading.Event()
        with self._lock:
            self._commands.append((fn, done))
        self._wake()
        if not done.wait(timeout):
            raise RuntimeError("proxy thread did not answer")
        if self.error is not None:
            raise RuntimeError("proxy thread failed") from self.error

    def _run(self) -> None:
        sel = self._sel
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop:
                self._run_commands()
                timeout = self._update_interest()
                for key, events in sel.select(timeout):
                    what = key.data
                    if what == "accept":
                        self._accept()
                    elif what == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                    else:
                        pair, side = what
                        if pair.dead:
                            continue
                        if events & selectors.EVENT_READ:
                            self._read(pair, UP if side == "client" else DOWN)
                        if events & selectors.EVENT_WRITE and not pair.dead:
                            self._write(pair, DOWN if side == "client" else UP)
                self._pairs = [p for p in self._pairs if not p.dead]
        except BaseException as exc:  # pragma: no cover - kept for the test to see
            self.error = exc
        finally:
            self._run_commands()
            for pair in self._pairs:
                self._abort(pair)
            self._pairs = []
            sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                fn, done = self._commands.popleft()
            try:
                fn()
            except BaseException as exc:  # pragma: no cover
                self.error = exc
            done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self.accepted += 1
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                rst_close(client)
                continue
            for s in (client, server):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pairs.append(_Pair(client, server))

    def _allowed(self, direction: str, now: float) -> float:
        """Bytes the throttle lets through now (inf when unthrottled)."""
        rate = self._rate[direction]
        if rate is None:
            return float("inf")
        if rate == 0:
            return 0.0
        tokens = self._tokens[direction] + (now - self._refilled[direction]) * rate
        self._tokens[direction] = min(tokens, max(1.0, rate / 20))  # bursts of at most 50 ms
        self._refilled[direction] = now
        return self._tokens[direction]

    def _update_interest(self) -> float | None:
        """(Re)register each socket for what it can do now; returns the select timeout."""
        now = time.monotonic()
        timeout: float | None = None
        wanted: dict[socket.socket, tuple[int, tuple]] = {}
        for pair in self._pairs:
            if pair.dead:
                continue
            for direction in (UP, DOWN):
                src, dst = pair.ends(direction)
                src_side = "client" if direction == UP else "server"
                dst_side = "server" if direction == UP else "client"
                flowing = not self._stalled and self._rate[direction] != 0
                buf = pair.buf[direction]
                if flowing and not pair.eof[direction] and len(buf) < PROXY_BUFFER:
                    ev = wanted.get(src, (0, (pair, src_side)))
                    wanted[src] = (ev[0] | selectors.EVENT_READ, (pair, src_side))
                if flowing and buf:
                    wait = self._next_send[direction] - now
                    if self._rate[direction] is not None and self._allowed(direction, now) < 1:
                        wait = max(wait, (1 - self._tokens[direction]) / self._rate[direction])
                    if wait > 0:
                        timeout = wait if timeout is None else min(timeout, wait)
                    else:
                        ev = wanted.get(dst, (0, (pair, dst_side)))
                        wanted[dst] = (ev[0] | selectors.EVENT_WRITE, (pair, dst_side))
                elif pair.eof[direction] and not buf and not pair.shut[direction]:
                    pair.shut[direction] = True
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
            if pair.shut[UP] and pair.shut[DOWN]:
                self._close_pair(pair)
        for sock in list(self._registered):
            if sock not in wanted:
                self._sel.unregister(sock)
                del self._registered[sock]
        for sock, (events, data) in wanted.items():
            current = self._registered.get(sock)
            if current is None:
                self._sel.register(sock, events, data)
            elif current != events:
                self._sel.modify(sock, events, data)
            self._registered[sock] = events
        return timeout

    def _read(self, pair: _Pair, direction: str) -> None:
        src, _dst = pair.ends(direction)
        buf = pair.buf[direction]
        try:
            data = src.recv(PROXY_BUFFER - len(buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort(pair)
            return
        if not data:
            pair.eof[direction] = True
            return
        buf += data

    def _write(self, pair: _Pair, direction: str) -> None:
        _src, dst = pair.ends(direction)
        buf = pair.buf[direction]
        while buf and not self._stalled:
            now = time.monotonic()
            if now < self._next_send[direction]:
                return
            limit = self._allowed(direction, now)
            if limit < 1:
                return
            n = len(buf) if limit == float("inf") else min(len(buf), int(limit))
            if self._slice:
                n = min(n, self._slice)
            try:
                sent = dst.send(bytes(buf[:n]))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._abort(pair)
                return
            del buf[:sent]
            if direction == UP:
                self.bytes_up += sent
            else:
                self.bytes_down += sent
            if self._rate[direction] is not None:
                self._tokens[direction] -= sent
            if self._slice and self._slice_delay:
                self._next_send[direction] = now + self._slice_delay
                return
            if sent < n:
                return

    def _unregister(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.server):
            if sock in self._registered:
                self._sel.unregister(sock)
                del self._registered[sock]

    def _close_pair(self, pair: _Pair) -> None:
        self._unregister(pair)
        pair.dead = True
        pair.client.close()
        pair.server.close()

    def _abort(self, pair: _Pair) -> None:
        if pair.dead:
            return
        self._unregister(pair)
        pair.dead = True
        rst_close(pair.client)
        rst_close(pair.server)

    def _do_cut(self) -> None:
        for pair in self._pairs:
            self._abort(pair)
        self._pairs = []


# --- the fake server ------------------------------------------------------------------------------

SERVER_PROPERTIES = {
    "product": "puka-fake-server",
    "version": "0",
    "capabilities": {
        "publisher_confirms": True,
        "consumer_cancel_notify": True,
        "basic.nack": True,
        "connection.blocked": True,
        "exchange_exchange_bindings": True,
        "authentication_failure_close": True,
        "per_consumer_qos": True,
    },
}


class FakeServer:
    """A scripted AMQP 0-9-1 server for one connection, in a background thread.

    It does the handshake (start / tune / open-ok), then answers the usual
    synchronous methods with their ``-ok`` (channel.open, confirm.select,
    basic.qos, basic.consume, basic.cancel, queue.declare...) and records every
    frame the client sends (``received``: (channel, name, method) tuples, with
    publishes also in ``published`` with their delivery tag, properties and body).

    Hooks script the rest: ``on(name, fn)`` calls ``fn(server, channel, method)``
    after the default answer to ``name`` (``replace=True``: instead of it); it may
    return bytes (or a list of bytes) to send.  ``send(*chunks)`` injects raw
    bytes at any time from the test thread.  ``silent=True`` accepts the
    connection and never says a word.  ``auto_ack=True`` confirms each publish.
    """

    def __init__(
        self,
        *,
        silent: bool = False,
        server_properties: dict | None = None,
        mechanisms: str = "PLAIN",
        version: tuple[int, int] = (0, 9),
        channel_max: int = 2047,
        frame_max: int = 131072,
        heartbeat: int = 0,
        auto_ack: bool = False,
    ) -> None:
        self.silent = silent
        self.server_properties = SERVER_PROPERTIES if server_properties is None else server_properties
        self.mechanisms = mechanisms
        self.version = version
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat
        self.auto_ack = auto_ack
        self.hooks: dict[str, list[tuple]] = defaultdict(list)
        self.received: list[tuple[int, str, dict]] = []
        self.published: list[dict] = []
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self.client_closed = threading.Event()  # the client closed (or reset) its side
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._stop = False
        self._conn: socket.socket | None = None
        self._confirming: set[int] = set()
        self._pub_tags: dict[int, int] = defaultdict(int)
        self._partial: dict[int, dict] = {}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="faults.FakeServer:%d" % self.port, daemon=True)
        self._thread.start()

    # --- public interface ---

    @property
    def url(self) -> str:
        return "amqp://guest:guest@127.0.0.1:%d/" % self.port

    def on(self, name: str, fn, replace: bool = False) -> FakeServer:
        if name not in M:
            raise ValueError("unknown method %r" % name)
        self.hooks[name].append((fn, replace))
        return self

    def send(self, *chunks: bytes) -> None:
        """Send raw bytes to the client now (from any thread)."""
        if not self.connected.wait(5):
            raise RuntimeError("no client connected")
        data = b"".join(bytes(c) for c in chunks)
        with self._send_lock:
            conn = self._conn
            if conn is None:
                raise ConnectionError("the client connection is closed")
            conn.sendall(data)

    def count(self, name: str) -> int:
        with self._cond:
            return sum(1 for _ch, n, _m in self.received if n == name)

    def wait_for(self, name: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until the client sent ``name`` at least ``count`` times (False on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for _ch, n, _m in self.received if n == name) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    return False
                self._cond.wait(remaining)
            return True

    def names(self) -> list[str]:
        with self._cond:
            return [n for _ch, n, _m in self.received]

    def close(self) -> None:
        self._stop = True
        self._thread.join(10)
        if self._thread.is_alive():  # pragma: no cover
            raise RuntimeError("fake server thread did not stop")

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- the server thread ---

    def _serve(self) -> None:
        try:
            conn = None
            while not self._stop:
                try:
                    conn, _addr = self._listener.accept()
                    break
                except TimeoutError:
                    continue
            if conn is None:
                return
            conn.settimeout(0.05)
            self._conn = conn
            self.connected.set()
            try:
                self._talk(conn)
            finally:
                with self._send_lock:
                    self._conn = None
                    if self.client_closed.is_set():
                        conn.close()
                    else:
                        rst_close(conn)
        except BaseException as exc:
            self.error = exc
        finally:
            self._listener.close()
            with self._cond:
                self._cond.notify_all()

    def _recv(self, conn: socket.socket) -> bytes | None:
        """Some bytes, b'' when the client closed, None when stopping."""
        while not self._stop:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                self.client_closed.set()
                return b""
            if not data:
                self.client_closed.set()
            return data
        return None

    def _talk(self, conn: socket.socket) -> None:
        if self.silent:
            while True:
                data = self._recv(conn)
                if not data:
                    return
        header = b""
        while len(header) < 8:
            data = self._recv(conn)
            if not data:
                return
            header += data
        rest = header[8:]
        with self._cond:
            self.received.append((0, "protocol-header", {"header": header[:8]}))
            self._cond.notify_all()
        self.send(
            method(
                0,
                "connection.start",
                version_major=self.version[0],
                version_minor=self.version[1],
                server_properties=self.server_properties,
                mechanisms=self.mechanisms,
                locales="en_US",
            )
        )
        reader = FrameReader(0)
        data = rest
        while True:
            if data:
                for frame_type, channel, payload in reader.feed(data):
                    self._on_frame(frame_type, channel, payload)
            data = self._recv(conn)
            if not data:
                return

    def _record(self, channel: int, name: str, fields: dict) -> None:
        with self._cond:
            self.received.append((channel, name, fields))
            self._cond.notify_all()

    def _on_frame(self, frame_type: int, channel: int, payload: bytes) -> None:
        if frame_type == FRAME_HEARTBEAT:
            self._record(channel, "heartbeat", {})
            return
        if frame_type == FRAME_METHOD:
            meth, _end = spec.decode_method(payload)
            if meth.has_content:
                self._partial[channel] = {"method": meth, "size": -1, "chunks": []}
                return
            self._dispatch(channel, meth)
        elif frame_type == FRAME_HEADER:
            partial = self._partial[channel]
            (partial["size"],) = struct.unpack_from(">Q", payload, 4)
            partial["properties"], _end = spec.decode_properties(payload, 12)
            if partial["size"] == 0:
                self._content_done(channel)
        elif frame_type == FRAME_BODY:
            partial = self._partial[channel]
            partial["chunks"].append(payload)
            if sum(len(c) for c in partial["chunks"]) >= partial["size"]:
                self._content_done(channel)

    def _content_done(self, channel: int) -> None:
        partial = self._partial.pop(channel)
        meth = partial["method"]
        meth["body"] = b"".join(partial["chunks"])
        meth["properties"] = partial["properties"]
        if meth.name == "basic.publish" and channel in self._confirming:
            self._pub_tags[channel] += 1
            meth["tag"] = self._pub_tags[channel]
        with self._cond:
            self.published.append(dict(meth, channel=channel))
        self._dispatch(channel, meth)

    def _dispatch(self, channel: int, meth) -> None:
        name = meth.name
        self._record(channel, name, meth)
        hooks = self.hooks.get(name, ())
        out: list[bytes] = []
        if not any(replace for _fn, replace in hooks):
            out.extend(self._default(channel, meth))
        for fn, _replace in hooks:
            extra = fn(self, channel, meth)
            if extra:
                out.extend([extra] if isinstance(extra, (bytes, bytearray)) else extra)
        if out:
            try:
                self.send(*out)
            except OSError:
                pass  # the client is gone; what it saw is what the test checks

    def _default(self, channel: int, meth) -> list[bytes]:
        name = meth.name
        if name == "connection.start-ok":
            return [
                method(
                    0,
                    "connection.tune",
                    channel_max=self.channel_max,
                    frame_max=self.frame_max,
                    heartbeat=self.heartbeat,
                )
            ]
        if name == "connection.open":
            return [method(0, "connection.open-ok")]
        if name == "connection.close":
            return [method(0, "connection.close-ok")]
        if name == "channel.open":
            return [method(channel, "channel.open-ok")]
        if name == "channel.close":
            self._confirming.discard(channel)
            self._pub_tags.pop(channel, None)
            return [method(channel, "channel.close-ok")]
        if name == "confirm.select":
            self._confirming.add(channel)
            return [] if meth["nowait"] else [method(channel, "confirm.select-ok")]
        if name == "basic.qos":
            return [method(channel, "basic.qos-ok")]
        if name == "basic.consume":
            return [] if meth["no_wait"] else [method(channel, "basic.consume-ok", consumer_tag=meth["consumer_tag"])]
        if name == "basic.cancel":
            return [] if meth["no_wait"] else [method(channel, "basic.cancel-ok", consumer_tag=meth["consumer_tag"])]
        if name == "basic.get":
            return [method(channel, "basic.get-empty")]
        if name == "queue.declare":
            return [method(channel, "queue.declare-ok", queue=meth["queue"] or "amq.gen-fake")]
        for request, reply in (
            ("queue.delete", "queue.delete-ok"),
            ("queue.purge", "queue.purge-ok"),
            ("queue.bind", "queue.bind-ok"),
            ("queue.unbind", "queue.unbind-ok"),
            ("exchange.declare", "exchange.declare-ok"),
            ("exchange.delete", "exchange.delete-ok"),
        ):
            if name == request:
                return [method(channel, reply)]
        if name == "basic.publish" and self.auto_ack and "tag" in meth:
            return [method(channel, "basic.ack", delivery_tag=meth["tag"], multiple=False)]
        return []


def fd_count() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def sockets_to(port: int) -> int:
    """How many TCP sockets this process holds whose remote end is 127.0.0.1:``port`` (any state).

    Unlike ``fd_count()``, other threads opening or closing their own sockets
    (a server thread dropping earlier connections) do not change it: it counts a
    client's sockets to one server and nothing else.
    """
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in inodes:
                count += 1
    return count


def pump(client, until, timeout: float = 5.0) -> bool:
    """Run a client's event loop (without taking any promise's results) until ``until()`` is true.

    Returns True once ``until()`` holds, False when ``timeout`` (real seconds) passes first.
    Only the client's public event-loop interface is used: ``on_timer()`` (heartbeats and
    deadlines, on whatever clock the client reads), then a wait on ``fileno()`` for reading
    (and writing when ``needs_write()``), then ``on_read()`` / ``on_write()``.  No promise's
    result is taken and no callback is run.

    A client whose connection is over (never opened, closed, broken: ``fileno()`` raises
    ConnectionBroken) has nothing left to run; ``until()`` is still checked until ``timeout``,
    since what it waits for may be another party's doing (a fake server, a proxy).
    """
    deadline = time.monotonic() + timeout
    while not until():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        step = min(remaining, 0.01)
        try:
            due = client.on_timer()  # may end the connection (a deadline, a silent peer)
            fd = client.fileno()
        except ConnectionBroken:
            time.sleep(step)
            continue
        if due is not None:
            step = min(step, due)
        pending = getattr(client.socket(), "pending", None)  # TLS: decrypted bytes select() cannot see
        buffered = pending is not None and pending() > 0
        readable, writable = _wait_fd(fd, client.needs_write(), 0 if buffered else step)
        if readable or buffered:
            client.on_read()
        if writable and _is_open(client):
            client.on_write()
    return True


def _is_open(client) -> bool:
    try:
        client.fileno()
    except ConnectionBroken:
        return False
    return True


def _wait_fd(fd: int, want_write: bool, timeout: float) -> tuple[bool, bool]:
    """(readable, writable) of ``fd`` within ``timeout`` seconds; errors and hang-ups read as readable."""
    poll = getattr(select, "poll", None)
    if poll is None:  # no poll() (Windows): select
        readable, writable, _ = select.select([fd], [fd] if want_write else [], [], timeout)
        return bool(readable), bool(writable)
    poller = poll()
    poller.register(fd, (select.POLLIN | select.POLLOUT) if want_write else select.POLLIN)
    events = poller.poll(timeout * 1000.0)
    happened = events[0][1] if events else 0
    return bool(happened & ~select.POLLOUT), bool(happened & select.POLLOUT)
