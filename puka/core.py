"""One connection: a transport, a protocol session and the promise table they serve.

Theory of operation: a :class:`Core` joins a :class:`~puka.transport.Transport`
(socket, TLS, framing, heartbeats) to a :class:`~puka.protocol.session.Session`
(the sans-IO protocol) by implementing the session's
:class:`~puka.protocol.ports.Port` over the transport.  Frames read by the
transport go to the session; bytes the session writes go to the transport;
when the transport fails, the session fails every unfinished promise of the
:class:`~puka.promise.PromiseTable`.  A Core lives as long as its connection;
the table is handed in, so a layer above can give it to the next Core.

The client (:mod:`puka.client`) talks only to a Core: operations, the
``ready`` results, the event-loop step, the push-back measure.
"""

from __future__ import annotations

import time

from .exceptions import ConnectionBroken
from .protocol.handshake import Status
from .protocol.session import Session
from .transport import CLOSED, IDLE, OPEN, Transport

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from typing import Any

    from .framing import Buffer
    from .promise import Callback, Promise, PromiseTable
    from .urls import ConnectionParameters


class Core:
    """One connection to a broker.  See the module docstring."""

    def __init__(
        self,
        params: ConnectionParameters,
        table: PromiseTable,
        *,
        pubacks: bool | None,
        client_properties: dict[str, Any] | None,
        heartbeat: float | None,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        max_message_size: int,
        gated: bool = False,
    ) -> None:
        options = params.options
        self.params = params
        self.transport = transport = Transport(
            params.host,
            params.port,
            frame_handler=self._on_frames,
            on_broken=self._on_transport_broken,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
        )
        # The Port: sends go straight to the transport (the publish hot path).
        self.send = transport.send
        self.send_many = transport.send_many
        self.set_heartbeat = transport.set_heartbeat
        self.set_frame_max = transport.set_frame_max
        self.set_deadline = transport.set_deadline
        self.table = table
        self.session = session = Session(
            self,
            table,
            username=params.username,
            password=params.password,
            vhost=params.vhost,
            pubacks=pubacks,
            client_properties=client_properties,
            heartbeat=heartbeat,
            channel_max=options.get("channel_max", 2047),
            frame_max=options.get("frame_max", 131072),
            auth_mechanism=options.get("auth_mechanism", "PLAIN"),
            max_message_size=max_message_size,
            gated=gated,
        )
        self.on_frames = session.on_frames
        #: one round of the event loop (poll bounded by the timers, read, write, timers)
        self.io_step = transport.io_step
        self.publishing = session.publishing
        self.consuming = session.consuming
        self.handshake = session.handshake
        transport.prepare_write = self.flush_acks
        self.consuming.on_ack_deferred = self._on_ack_deferred

    # --- the Port ------------------------------------------------------------------------------------

    def close_transport(self, exc: ConnectionBroken, flush: bool) -> None:
        if flush:
            self.transport.flush(0.5)
        self.transport.close(exc)

    def request_flush(self) -> None:
        """A settlement was queued: write it now (with any deferred ack)."""
        self.flush()

    # --- between the layers --------------------------------------------------------------------------

    def _on_ack_deferred(self) -> None:
        """An ack is deferred: the next call into the client must write it.

        Every call does (``check()``, the client's ``wait``, ``loop``...), except
        ``basic_publish``, which goes straight to the publishing core: its next send
        goes through :meth:`_send_after_acks`, which writes them first (or finds them
        written already).  An event-loop adapter (``transport.wakeup``) writes them on
        its next turn.
        """
        publishing = self.publishing
        if publishing.send is self.send:
            publishing.send = self._send_after_acks
            publishing.send_many = self._send_many_after_acks
        wakeup = self.transport.wakeup
        if wakeup is not None:
            wakeup()

    def _publishing_sends_directly(self) -> None:
        publishing = self.publishing
        publishing.send = self.send
        publishing.send_many = self.send_many

    def _send_after_acks(self, data: Buffer) -> None:
        self._publishing_sends_directly()  # until the next deferred ack
        self.flush()
        self.send(data)

    def _send_many_after_acks(self, buffers: list[Buffer]) -> None:
        self._publishing_sends_directly()
        self.flush()
        self.send_many(buffers)

    def _on_frames(self, frames: list[Any]) -> None:
        self.on_frames(frames)

    def _on_transport_broken(self, exc: ConnectionBroken) -> None:
        self.session.on_broken(exc)

    # --- for the client ------------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        return self.session.handshake.status

    @property
    def error(self) -> BaseException | None:
        return self.session.error

    @property
    def current(self) -> Core:
        """This connection (a recovering core's ``current`` changes; this one's never does)."""
        return self

    @property
    def active(self) -> bool:
        """A close() has something to close (open, or in the handshake)."""
        status = self.session.handshake.status
        return status is Status.OPEN or status.in_handshake

    def describe(self) -> str:
        return self.session.handshake.status.value

    def check(self) -> Session:
        """The session, or the ConnectionBroken an operation must raise now.

        Every operation calls in here first: acks deferred since the last call are written.
        """
        session = self.session
        if session.error is not None:
            raise session.broken_error()
        if self.consuming.pending_acks:
            self.flush()
        return session

    def connect(
        self,
        callback: Callback | None,
        timeout: float,
        where: str,
        observer: Callable[[Promise, Any], None] | None = None,
        promise: Promise | None = None,
    ) -> Promise:
        """Open the connection (see Session.start for ``observer`` and ``promise``)."""
        promise = self.session.start(callback, observer, promise)
        self.transport.set_deadline(
            time.monotonic() + timeout, "connecting to %s timed out after %gs" % (where, timeout)
        )
        self.transport.open()
        return promise

    def close(self, callback: Callback | None, timeout: float) -> Promise:
        session = self.session
        already = session.status is Status.CLOSING
        promise = session.close(callback)
        if not already and session.status is Status.CLOSING:
            self.transport.set_deadline(time.monotonic() + timeout, "the broker did not answer connection.close")
        return promise

    def drop(self) -> None:
        """Close the socket at once (after the promises were dealt with)."""
        self.transport.close()

    def flush_acks(self) -> None:
        """Queue the deferred acks (the transport is about to write)."""
        consuming = self.consuming
        if consuming.pending_acks:
            consuming.flush_acks()

    def flush(self) -> None:
        """Write deferred acks and what the socket takes now (every call into the client, and before blocking)."""
        consuming = self.consuming
        if consuming.pending_acks:
            consuming.flush_acks()
        transport = self.transport
        if transport.state is OPEN and transport.backlog:
            transport.on_write()

    @property
    def backlog(self) -> int:
        """Bytes waiting to go out: in the send buffer, and publishes waiting for their channel."""
        return self.transport.backlog + self.publishing.backlog_bytes

    def can_drain(self) -> bool:
        return self.transport.state is not IDLE

    def drain(self, limit: int) -> None:
        """Push back: run the event loop until what waits to be sent is under ``limit`` bytes."""
        transport = self.transport
        publishing = self.publishing
        while transport.state is not CLOSED and transport.backlog + publishing.backlog_bytes > limit:
            transport.io_step(1.0)

    def on_timer(self) -> float | None:
        transport = self.transport
        transport.check_timers(time.monotonic())
        return transport.next_timer(time.monotonic())
