"""The transport: socket, TLS, buffers, heartbeats and the poll step.

Theory of operation: a :class:`Transport` moves bytes between a non-blocking
socket and the layers above, and knows AMQP only as far as framing.

* Opening walks (:class:`TransportState`) ``IDLE`` -> ``CONNECTING`` (non-blocking TCP connect) -> ``TLS``
  (non-blocking handshake, for ``amqps``) -> ``OPEN``.  Bytes sent before
  ``OPEN`` wait in the send buffer.
* Inbound bytes go through a :class:`~puka.framing.FrameReader`; complete frames
  are handed to ``frame_handler(frames)`` (the dispatcher above).  Heartbeat
  frames are consumed here.
* Outbound data is a deque of buffers.  Writing happens when the event loop
  says the socket is writable (:meth:`on_write`), and eagerly once the buffer
  passes :data:`WRITE_EAGERLY`, so bulk publishing streams instead of piling up
  (after the socket took less than offered, eagerly again only once another
  :data:`WRITE_EAGERLY` bytes are queued: a full socket is not retried per message).
  Small buffers (under :data:`COALESCE_LIMIT`: frames, small messages) are
  copied into one reused ``bytearray`` at the end of the deque, so many of them
  go out in one ``send``; large ones (message bodies) are queued as they are
  and sent from their own memory, never copied: on a plain socket one
  ``sendmsg`` writes up to :data:`SEND_CHUNK` bytes of several buffers at once.
* Heartbeats: once an interval is set, :meth:`check_timers` sends a heartbeat
  when nothing was sent for half of it and declares the peer dead when nothing
  arrived for two intervals.  A deadline (connection timeout) can be armed too.
  :meth:`io_step` -- one ``select`` bounded by those timers -- is what
  ``wait``/``loop`` run, so timers fire there as well.
* Any failure (reset, EOF, protocol violation, missed heartbeats, deadline)
  closes the socket and calls ``on_broken(exc)`` exactly once, with a
  :class:`~puka.exceptions.ConnectionBroken`.  Afterwards every send is
  refused with that same error.
"""

from __future__ import annotations

import enum
import errno
import os
import select
import time
from collections import deque

from .alarms import Alarms
from .exceptions import ConnectionBroken, FrameTooLarge
from .framing import HEARTBEAT, FrameReader
from .spec import FRAME_HEARTBEAT, DecodeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from typing import Any

    from .framing import Buffer, Frame


class TransportState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    TLS = "tls handshake"
    OPEN = "open"
    CLOSED = "closed"


IDLE = TransportState.IDLE
CONNECTING = TransportState.CONNECTING
TLS = TransportState.TLS
OPEN = TransportState.OPEN
CLOSED = TransportState.CLOSED

#: Try writing at once when this many bytes are waiting, instead of waiting for the loop.
WRITE_EAGERLY = 128 * 1024
#: Buffers under this size are copied into the send buffer; larger ones go from their own memory.
COALESCE_LIMIT = 4096
#: Most bytes handed to one sendmsg() call.
SEND_CHUNK = 256 * 1024
#: Most buffers handed to one sendmsg() call (POSIX guarantees 16; Linux and the BSDs take 1024).
SEND_BUFFERS = 512
RECV_SIZE = 256 * 1024
_poll = getattr(select, "poll", None)
_POLLIN = getattr(select, "POLLIN", 1)
_POLLOUT = getattr(select, "POLLOUT", 4)
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS, errno.EINTR)


class Transport:
    """A framed AMQP transport over one socket.  See the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        frame_handler: Callable[[list[Frame]], None],
        on_broken: Callable[[ConnectionBroken], None],
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.frame_handler = frame_handler
        self.on_broken = on_broken
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.state: TransportState = IDLE
        self.sock: Any = None
        self.reader = FrameReader()
        #: what waits to be written, in order: bytearrays of coalesced small buffers, and large buffers
        self._out: deque[Buffer] = deque()
        #: the bytearray small buffers are copied into (reused once written); it is ``_out[-1]`` while open
        self._small = bytearray()
        #: write with sendmsg (several buffers per call): a plain socket that has it (set when open)
        self._gather = False
        #: backlog at which send() writes at once; raised while the socket takes no more, so a
        #: publishing loop does not retry a full socket on every message
        self._eager = WRITE_EAGERLY
        #: bytes queued and not yet written to the socket
        self.backlog = 0
        self._want_write = False  # TLS handshake asked for writability
        #: a send() failed: the connection ends once the read side has said why (see _write_failed)
        self.write_error: OSError | None = None
        self.error: ConnectionBroken | None = None
        self.heartbeat = 0.0
        self.deadline: float | None = None
        self.deadline_error = "connection timed out"
        now = time.monotonic()
        self.last_recv = now
        self.last_send = now
        #: middleware chain that watches frames (None: nobody does)
        self.frame_tap: Any = None
        #: called when data is queued into an empty send buffer (event-loop adapters)
        self.wakeup: Callable[[], None] | None = None
        #: called before the loop decides what to write (the layer above queues deferred frames)
        self.prepare_write: Callable[[], None] | None = None
        #: called just before the socket is closed (event-loop adapters unwatch its fd)
        self.before_close: Callable[[], None] | None = None
        #: deadlines of the layers above (RPC time-outs), shared by every transport of a client
        self.alarms: Alarms = Alarms()
        self._poller: Any = None
        self._poll_fd = -1
        self._poll_mask = 0

    # --- opening ----------------------------------------------------------------------------

    def open(self) -> None:
        """Start connecting (non-blocking); progress happens in on_read/on_write."""
        import socket

        try:
            infos = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            self._fail("cannot resolve %s: %s" % (self._where(), exc.strerror or exc))
            return
        family, socktype, proto, _name, address = infos[0]
        sock = socket.socket(family, socktype, proto)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            pass
        self.sock = sock
        self.state = CONNECTING
        code = sock.connect_ex(address)
        if code not in (0,) + _WOULD_BLOCK:
            self._fail("cannot connect to %s: %s" % (self._where(), os.strerror(code)))

    def _where(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)

    def _connected(self) -> None:
        """The TCP connect finished (socket writable)."""
        import socket

        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail("cannot connect to %s: %s" % (self._where(), os.strerror(code)))
            return
        if self.ssl_context is None:
            self.state = OPEN
            self._gather = hasattr(self.sock, "sendmsg")
            self.on_write()
            return
        try:
            self.sock = self.ssl_context.wrap_socket(
                self.sock, server_hostname=self.server_hostname, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            self._fail("TLS setup for %s failed: %s" % (self._where(), exc))
            return
        self.state = TLS
        self._handshake()

    def _handshake(self) -> None:
        import ssl

        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want_write = False
            return
        except ssl.SSLWantWriteError:
            self._want_write = True
            return
        except ssl.SSLCertVerificationError as exc:
            self._fail("TLS certificate verification failed for %s: %s" % (self._where(), exc.verify_message or exc))
            return
        except (OSError, ValueError) as exc:
            self._fail("TLS handshake with %s failed: %s" % (self._where(), exc))
            return
        self._want_write = False
        self.state = OPEN
        self.on_write()

    # --- the event-loop interface ---------------------------------------------------------------

    def fileno(self) -> int:
        if self.sock is None:
            raise self.error or ConnectionBroken("not connected")
        return int(self.sock.fileno())

    def needs_write(self) -> bool:
        if self.prepare_write is not None:
            self.prepare_write()
        state = self.state
        if state is OPEN:
            return self.backlog > 0
        if state is CONNECTING:
            return True
        if state is TLS:
            return self._want_write
        return False

    def on_read(self) -> None:
        """The socket is readable: receive, frame, dispatch."""
        state = self.state
        if state is not OPEN:
            if state is TLS:
                self._handshake()
            elif state is CONNECTING:
                self._connected()
            if self.state is not OPEN:
                return
        sock = self.sock
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._io_error(exc)
                return
            if not data:
                self._fail("connection to %s closed by the peer" % self._where())
                return
            self.last_recv = time.monotonic()
            try:
                frames = self.reader.feed(data)
            except DecodeError as exc:
                self._fail(
                    "protocol violation by %s: %s" % (self._where(), exc),
                    FrameTooLarge if "frame_max" in str(exc) else ConnectionBroken,
                )
                return
            if frames:
                if self.frame_tap is not None:
                    self.frame_tap.frames_in(frames)
                try:
                    self._dispatch(frames)
                except DecodeError as exc:
                    self._fail("protocol violation by %s: %s" % (self._where(), exc))
                    return
                if self.state is not OPEN:
                    return
            # TLS may hold decrypted bytes that select() will not report.
            if self.ssl_context is None or self.state is not OPEN or not sock.pending():
                return

    def _dispatch(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame[0] == FRAME_HEARTBEAT:
                break
        else:
            self.frame_handler(frames)
            return
        # Rare: take heartbeats out (they only refresh last_recv, done above).
        payload_frames = []
        for frame in frames:
            if frame[0] == FRAME_HEARTBEAT:
                if frame[1] != 0:
                    self._fail("protocol violation by %s: heartbeat on channel %d" % (self._where(), frame[1]))
                    return
            else:
                payload_frames.append(frame)
        if payload_frames:
            self.frame_handler(payload_frames)

    def on_write(self) -> None:
        """The socket is writable: send what is buffered (as much as it takes)."""
        if self.prepare_write is not None:
            self.prepare_write()
        state = self.state
        if state is not OPEN:
            if state is CONNECTING:
                self._connected()
            elif state is TLS:
                self._handshake()
            return
        out = self._out
        sock = self.sock
        while out:
            try:
                if self._gather and len(out) > 1:
                    buffers: list[Buffer] = []
                    total = 0
                    for data in out:
                        buffers.append(data)
                        total += len(data)
                        if total >= SEND_CHUNK or len(buffers) == SEND_BUFFERS:
                            break
                    sent = sock.sendmsg(buffers)
                else:
                    sent = sock.send(out[0])
            except (BlockingIOError, InterruptedError):
                self._eager = self.backlog + WRITE_EAGERLY
                return
            except OSError as exc:
                self._write_failed(exc)
                return
            self.last_send = time.monotonic()
            self.backlog -= sent
            small = self._small
            while sent:
                data = out[0]
                size = len(data)
                if sent < size:
                    if isinstance(data, bytearray):
                        del data[:sent]  # cheap: a bytearray drops its head by moving its start
                    else:
                        out[0] = memoryview(data)[sent:]
                    self._eager = self.backlog + WRITE_EAGERLY
                    return  # the socket took what it could
                sent -= size
                out.popleft()
                if data is small:
                    del small[:]  # written: reused for the next small buffers
        self._eager = WRITE_EAGERLY

    def _write_failed(self, exc: OSError) -> None:
        """send() failed.  The peer may have said why before it went -- a connection.close
        waiting in the receive buffer -- so the connection ends on the read side, which
        reads that first (poll reports the socket readable); nothing more is written.
        Should the read side stay silent, a deadline a second away ends it with this error."""
        if _is_ssl_want(exc):
            return
        self.write_error = exc
        self._out.clear()
        self._small = bytearray()
        self.backlog = 0
        deadline = time.monotonic() + 1.0
        if self.deadline is None or self.deadline > deadline:
            self.deadline = deadline
            self.deadline_error = "connection to %s lost: %s" % (self._where(), exc.strerror or exc)

    def _io_error(self, exc: OSError) -> None:
        """send/recv failed: TLS asking to wait is not an error; anything else ends the connection."""
        if not _is_ssl_want(exc):
            self._fail("connection to %s lost: %s" % (self._where(), exc.strerror or exc))

    # --- sending ----------------------------------------------------------------------------------

    def send(self, data: Buffer) -> None:
        """Queue bytes for the peer (written when possible)."""
        if self.state is CLOSED:
            raise self.error or ConnectionBroken("connection closed")
        if self.write_error is not None:
            return  # the connection is ending (see _write_failed): what is sent now is lost with it
        if self.frame_tap is not None:
            self.frame_tap.bytes_out(data)
        size = len(data)
        if not size:
            return
        backlog = self.backlog
        if not backlog and self.wakeup is not None:
            self.wakeup()
        out = self._out
        if size < COALESCE_LIMIT:
            small = self._small
            if not out or out[-1] is not small:
                if small:  # still queued behind a large buffer: a new one
                    self._small = small = bytearray()
                out.append(small)
            small += data
        else:
            out.append(data)
        self.backlog = backlog = backlog + size
        if backlog >= self._eager and self.state is OPEN:
            self.on_write()

    def send_many(self, buffers: list[Buffer]) -> None:
        """Queue several buffers (e.g. the frames of a large message)."""
        if self.state is CLOSED:
            raise self.error or ConnectionBroken("connection closed")
        if self.write_error is not None:
            return
        out = self._out
        if self.frame_tap is not None:
            for data in buffers:
                self.frame_tap.bytes_out(data)
        backlog = self.backlog
        if not backlog and self.wakeup is not None:
            self.wakeup()
        small = self._small
        for data in buffers:
            size = len(data)
            if not size:
                continue
            if size < COALESCE_LIMIT:
                if not out or out[-1] is not small:
                    if small:
                        self._small = small = bytearray()
                    out.append(small)
                small += data
            else:
                out.append(data)
            backlog += size
        self.backlog = backlog
        if backlog >= self._eager and self.state is OPEN:
            self.on_write()

    def set_frame_max(self, frame_max: int) -> None:
        """Refuse inbound frames larger than this (the size agreed in the handshake)."""
        self.reader.frame_max = frame_max

    def set_deadline(self, when: float | None, why: str) -> None:
        """Fail the connection with ``why`` at monotonic time ``when`` (None: disarm)."""
        self.deadline = when
        self.deadline_error = why

    # --- timers -----------------------------------------------------------------------------------

    def set_heartbeat(self, interval: float) -> None:
        """Start heartbeats: send every interval/2 when idle; peer dead after 2 silent intervals."""
        self.heartbeat = float(interval)
        self.last_recv = self.last_send = time.monotonic()

    def next_timer(self, now: float) -> float | None:
        """Seconds until check_timers has something to do (None: no timer armed)."""
        delays = []
        if self.heartbeat and self.state is OPEN:
            delays.append(self.last_send + self.heartbeat / 2 - now)
            delays.append(self.last_recv + self.heartbeat * 2 - now)
        if self.deadline is not None:
            delays.append(self.deadline - now)
        if self.alarms:
            due = self.alarms.next_due()
            if due is not None:
                delays.append(due - now)
        if not delays:
            return None
        return max(0.0, min(delays))

    def check_timers(self, now: float) -> None:
        if self.alarms:
            self.alarms.fire(now)
        if self.state is CLOSED:
            return
        if self.deadline is not None and now >= self.deadline:
            self._fail(self.deadline_error)
            return
        if self.heartbeat and self.state is OPEN:
            if now - self.last_recv > self.heartbeat * 2:
                self._fail(
                    "no data or heartbeat from %s for %.1fs (heartbeat %gs): peer presumed dead"
                    % (self._where(), now - self.last_recv, self.heartbeat)
                )
                return
            if now - self.last_send >= self.heartbeat / 2:
                self.send(HEARTBEAT)
                self.on_write()
                if self.backlog:
                    # Could not write (peer not reading): a heartbeat is queued; do not
                    # queue another every loop iteration.
                    self.last_send = now

    def io_step(self, timeout: float | None) -> None:
        """One round of the event loop: select (bounded by timers), read, write, timers."""
        sock = self.sock
        if self.state is CLOSED or sock is None:
            raise self.error or ConnectionBroken("connection closed")
        timed = self.heartbeat or self.deadline is not None or self.alarms
        if timed:
            timer = self.next_timer(time.monotonic())
            if timer is not None and (timeout is None or timer < timeout):
                timeout = timer
        if self.ssl_context is not None and self.state is OPEN and sock.pending():
            timeout = 0
        try:
            readable, writable = self._wait(sock, self.needs_write(), timeout)
        except (OSError, ValueError) as exc:
            self._fail("waiting on %s failed: %s" % (self._where(), exc))
            return
        if readable or (self.ssl_context is not None and self.state is OPEN and sock.pending()):
            self.on_read()
        if writable and self.state is not CLOSED:
            self.on_write()
        if timed and self.state is not CLOSED:
            self.check_timers(time.monotonic())

    def _wait(self, sock: Any, want_write: bool, timeout: float | None) -> tuple[bool, bool]:
        """Block until the socket is readable (or writable, when wanted), or ``timeout`` passes."""
        poller = self._poller
        if poller is None:
            if _poll is None:  # no poll() (Windows): select
                try:
                    r, w, _x = select.select((sock,), (sock,) if want_write else (), (), timeout)
                except InterruptedError:
                    return False, False
                return bool(r), bool(w)
            poller = self._poller = _poll()
            self._poll_fd = sock.fileno()
            poller.register(self._poll_fd, _POLLIN)
            self._poll_mask = _POLLIN
        mask = _POLLIN | _POLLOUT if want_write else _POLLIN
        if mask != self._poll_mask:
            poller.modify(self._poll_fd, mask)
            self._poll_mask = mask
        try:
            events = poller.poll(None if timeout is None else timeout * 1000.0)
        except InterruptedError:
            return False, False
        if not events:
            return False, False
        happened = events[0][1]
        # Errors and hang-ups read as readable: recv() then reports them.
        return bool(happened & ~_POLLOUT), bool(happened & _POLLOUT)

    # --- closing ----------------------------------------------------------------------------------

    def _fail(self, message: str, kind: type[ConnectionBroken] = ConnectionBroken) -> None:
        if self.state is CLOSED:
            return
        self.error = kind(message)
        self._close_socket()
        self.on_broken(self.error)

    def fail(self, exc: ConnectionBroken) -> None:
        """Break the connection with this error (the layers above found a violation)."""
        if self.state is CLOSED:
            return
        self.error = exc
        self._close_socket()
        self.on_broken(exc)

    def close(self, error: ConnectionBroken | None = None) -> None:
        """Close the socket now; later sends raise ``error`` (or a 'connection closed' error)."""
        if self.state is CLOSED:
            return
        self.error = error or ConnectionBroken("connection closed")
        self._close_socket()

    def flush(self, timeout: float) -> None:
        """Best effort: write what is buffered, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.state is OPEN and self.backlog:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                _r, w, _x = select.select((), (self.sock,), (), remaining)
            except (OSError, ValueError):
                return
            if w:
                self.on_write()

    def _close_socket(self) -> None:
        if self.before_close is not None:
            self.before_close()  # an event loop stops watching the socket while its fd is valid
        self.state = CLOSED
        self._poller = None
        self._out.clear()
        self._small = bytearray()
        self.backlog = 0
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def _is_ssl_want(exc: OSError) -> bool:
    name = type(exc).__name__
    return name in ("SSLWantReadError", "SSLWantWriteError")
