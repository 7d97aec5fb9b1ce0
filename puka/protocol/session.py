"""The sans-IO protocol core of one connection.

Theory of operation: a :class:`Session` speaks AMQP 0-9-1 for one connection
and never touches a socket.  It is fed frames (:meth:`Session.on_frames`),
writes through a :class:`~puka.protocol.ports.Port`, and is told when the
transport dies (:meth:`Session.on_broken`).  It runs the promises of a
:class:`~puka.promise.PromiseTable` it is handed; the table may outlive it.

It is made of small units, each with one job, that share the session as
their context:

* :mod:`~puka.protocol.assembler` -- frames to methods and whole messages,
  routed to their channel; inbound protocol violations;
* :mod:`~puka.protocol.channels` -- channel numbers and the pool;
* :mod:`~puka.protocol.handshake` -- channel 0 (handshake, close, blocked) as a
  transition table; its :class:`~puka.protocol.handshake.Status` is the
  session's;
* :mod:`~puka.protocol.publishing` -- confirm channels, acks, nacks, returns;
* :mod:`~puka.protocol.consuming` -- consumers, gets, settling.

The session itself runs short operations on pooled channels (:meth:`call`),
starts and closes, and ends everything when the connection goes: every
promise that has not finished gets an error result (the broker's hard error
when it said one, ConnectionBroken otherwise).  Nothing is left pending.
"""

from __future__ import annotations

from .. import spec
from ..exceptions import ConnectionBroken
from ..framing import method_frame
from ..promise import Kind, Promise, PromiseTable, Result
from .assembler import MAX_MESSAGE_SIZE, Assembler
from .channels import Channels
from .consuming import Consuming
from .handshake import CHANNEL_MAX, FRAME_MAX, Handshake, Status, error_from_close
from .publishing import Publishing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..framing import Frame
    from ..promise import Callback
    from .channels import Channel
    from .ports import Port


class _LazyLogger:
    """The 'puka' logger, imported on first use: logging is not needed to start.

    Like any library, puka adds a NullHandler: without logging configured by
    the application, nothing is printed (every failure also reaches a promise).
    """

    def __getattr__(self, name: str) -> Any:
        import logging

        logger = logging.getLogger("puka")
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        return getattr(logger, name)


log: Any = _LazyLogger()

#: Synchronous methods that may safely run twice (a second run changes nothing).
IDEMPOTENT = frozenset(
    ("exchange.declare", "exchange.bind", "exchange.unbind", "queue.declare", "queue.bind", "queue.unbind")
)


class Call:
    """What a short operation asks: the method, its encoded arguments, the replies that answer it."""

    __slots__ = ("method", "args", "payload", "reply_ids", "sent")

    def __init__(self, method: type[spec.Method], args: tuple[Any, ...], reply_ids: tuple[int, ...]) -> None:
        self.method = method
        self.args = args
        self.payload = method.encode_args(*args)  # bad arguments raise here, before anything is sent
        self.reply_ids = reply_ids
        #: written to a connection (it may have run on the broker)
        self.sent = False

    @property
    def safe_to_repeat(self) -> bool:
        """Running it again after a lost connection cannot do harm (never sent, or idempotent)."""
        return not self.sent or self.method.name in IDEMPOTENT


class Session:
    """The protocol core of one connection.  See the module docstring."""

    log = log

    def __init__(
        self,
        port: Port,
        table: PromiseTable | None = None,
        *,
        username: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        pubacks: bool | None = None,
        client_properties: dict[str, Any] | None = None,
        heartbeat: float | None = 0,
        channel_max: int = CHANNEL_MAX,
        frame_max: int = FRAME_MAX,
        auth_mechanism: str = "PLAIN",
        max_message_size: int = MAX_MESSAGE_SIZE,
        gated: bool = False,
    ) -> None:
        self.port = port
        self.send = port.send
        self.send_many = port.send_many
        self.table = table = table if table is not None else PromiseTable()
        table.on_forget = self._forget
        self.error: BaseException | None = None
        self.connect_promise: Promise | None = None
        self.close_promise: Promise | None = None
        self.pending_until_open: list[tuple[Promise, Callable[[Promise], None]]] = []
        #: operations of the layer above that pass the gate (see ``gated``), waiting for the connection
        self.privileged_until_open: list[tuple[Promise, Callable[[Promise], None]]] = []
        #: True: once open, only privileged operations run (a recovery replays its topology
        #: first); the rest waits for release_gate()
        self.gated = gated
        #: called once, after every promise failed, when the connection is gone
        self.on_closed: Callable[[], None] | None = None
        #: the layer above may take the unfinished promises over when the connection goes
        #: (returns True when it did: they are then not failed here)
        self.takeover: Callable[[BaseException], bool] | None = None
        #: called with (promise, result) when a short operation finishes (topology recording)
        self.call_observer: Callable[[Promise, Any], None] | None = None

        self.channels = Channels(self, channel_max)
        self.handshake = Handshake(
            self,
            username=username,
            password=password,
            vhost=vhost,
            client_properties=client_properties,
            heartbeat=heartbeat,
            channel_max=channel_max,
            frame_max=frame_max,
            auth_mechanism=auth_mechanism,
            pubacks=pubacks,
        )
        self.publishing = Publishing(self)
        self.consuming = Consuming(self)
        self.assembler = Assembler(self.channels.by_number, self.violation, max_message_size)
        self.on_frames: Callable[[list[Frame]], None] = self.assembler.on_frames

    # --- state ----------------------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        return self.handshake.status

    @property
    def is_open(self) -> bool:
        return self.handshake.status is Status.OPEN

    def broken_error(self) -> ConnectionBroken:
        """What an operation on this session raises once the connection is gone."""
        err = self.error
        if isinstance(err, ConnectionBroken):
            return err
        broken = ConnectionBroken("connection is gone: %s" % err)
        broken.__cause__ = err
        return broken

    def new_promise(self, callback: Callback | None = None, kind: Kind = Kind.CALL) -> Promise:
        if self.error is not None:
            raise self.broken_error()
        return self.table.new(callback, kind)

    def _forget(self, promise: Promise) -> None:
        if promise.channel is not None:
            self.channels.release(promise)

    error_from_close = staticmethod(error_from_close)

    # --- starting and closing -------------------------------------------------------------------------

    def start(
        self,
        callback: Callback | None = None,
        observer: Callable[[Promise, Any], None] | None = None,
        promise: Promise | None = None,
    ) -> Promise:
        """Begin the handshake: sends the protocol header.

        With ``observer``, the connect promise is internal (a recovery's): it is
        resolved through the observer and never seen by the application.  With
        ``promise``, an existing connect promise (the first connect moving on to
        the next host) is resolved instead of a new one.
        """
        if promise is not None:
            pass
        elif observer is None:
            promise = self.new_promise(callback, Kind.CONNECT)
        else:
            promise = self.new_promise(None, Kind.INTERNAL)
            promise.observer = observer
        self.connect_promise = promise
        self.handshake.begin(self.channels.by_number[0])
        return promise

    def on_open(self) -> None:
        """The handshake is done: open the publish channels, start what waited."""
        self.publishing.open_all()
        privileged, self.privileged_until_open = self.privileged_until_open, []
        for promise, start in privileged:
            if not promise.final:
                self.channels.acquire(promise, start, privileged=True)
        if not self.gated:
            self._start_pending()

    def release_gate(self) -> None:
        """Let the application's operations run (after a recovery's replay)."""
        self.gated = False
        if self.is_open:
            self.publishing.release()
            self._start_pending()

    def _start_pending(self) -> None:
        pending, self.pending_until_open = self.pending_until_open, []
        for promise, start in pending:
            if not promise.final:
                self.channels.acquire(promise, start)

    def close(self, callback: Callback | None = None) -> Promise:
        """Start closing: connection.close, then close-ok ends it."""
        status = self.handshake.status
        table = self.table
        if status is Status.CLOSING and self.close_promise is not None:
            return self.close_promise
        if self.error is not None or status is Status.CLOSED or status is Status.NEW:
            promise = table.new(callback, Kind.CLOSE)
            table.resolve(promise, Result())
            if status is Status.NEW:
                self.on_broken(ConnectionBroken("client closed"))
            return promise
        promise = self.new_promise(callback, Kind.CLOSE)
        self.close_promise = promise
        if status is not Status.OPEN:
            # Still in the handshake: nothing to say to the broker yet.
            exc = ConnectionBroken("connection closed by the client")
            self.port.close_transport(exc, False)
            table.resolve(promise, Result())
            self.on_broken(exc)
            return promise
        self.consuming.flush_acks()
        zero = self.channels.by_number[0]
        zero.replies.clear()
        self.handshake.close()
        return promise

    def handshake_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionBroken):
            self.port.close_transport(exc, False)
        else:
            self.port.close_transport(ConnectionBroken(str(exc)), False)
        self.on_broken(exc)

    def violation(self, message: str, kind: type[ConnectionBroken] = ConnectionBroken) -> None:
        """The peer broke the protocol: end the connection."""
        exc = kind("protocol violation by the broker: %s" % message)
        log.error("%s", exc)
        self.port.close_transport(exc, False)
        self.on_broken(exc)

    def abandon(self, exc: ConnectionBroken) -> None:
        """End a healthy connection on purpose (a recovery moves to a new one)."""
        log.warning("%s", exc)
        self.port.close_transport(exc, False)
        self.on_broken(exc)

    def on_broken(self, exc: BaseException) -> None:
        """The connection is gone: every unfinished promise fails with ``exc``."""
        handshake = self.handshake
        if handshake.status is Status.CLOSED:
            return
        was_closing = handshake.status is Status.CLOSING
        handshake.status = Status.CLOSED
        self.assembler.stopped = True
        self.error = exc
        table = self.table
        if was_closing and self.close_promise is not None and not self.close_promise.final:
            # A close that could not complete (peer gone, or blocked): closed all the same.
            table.resolve(self.close_promise, Result())
        if self.connect_promise is not None and not self.connect_promise.final:
            exc = self._explain_handshake_failure(exc)
            self.error = exc
        taken = not was_closing and self.takeover is not None and self.takeover(exc)
        if not taken:
            for promise in table.unfinished():
                table.fail(promise, exc)
        self.publishing.connection_lost()
        self.consuming.pending_acks = []
        self.pending_until_open.clear()
        self.privileged_until_open.clear()
        self.channels.clear()
        if not taken and self.on_closed is not None:
            self.on_closed()

    def _explain_handshake_failure(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ConnectionBroken) and "closed by the peer" in str(exc) and self.handshake.server_properties:
            return ConnectionBroken(
                "%s during the handshake: wrong credentials, or a vhost the user may not use?" % exc
            )
        return exc

    # --- short operations on pooled channels ----------------------------------------------------------

    def call(
        self, request: type[spec.Method], reply_ids: tuple[int, ...], args: tuple[Any, ...], callback: Callback | None
    ) -> int:
        """A synchronous method on a pooled channel; the reply is the result."""
        call = Call(request, args, reply_ids)
        if len(call.payload) + 8 > self.handshake.frame_max:
            # The broker would close the whole connection (501 FRAME_ERROR): refuse it here.
            raise ValueError(
                "%s is %d bytes encoded (a big arguments table?): more than a frame of %d bytes can carry"
                % (request.name, len(call.payload), self.handshake.frame_max - 8)
            )
        promise = self.new_promise(callback, Kind.CALL)
        promise.request = call
        if self.call_observer is not None:
            promise.observer = self.call_observer
        self.start_call(promise)
        return promise.number

    def start_call(self, promise: Promise, privileged: bool = False) -> None:
        """Run a short operation's promise (new, or carried over from a lost connection)."""
        call: Call = promise.request
        resolve = self.table.resolve
        channels = self.channels

        def answered(channel: Channel, reply: Any) -> None:
            channels.finished(promise)  # the result waits in the promise: the channel serves the next one
            resolve(promise, reply)

        def start(promise: Promise) -> None:
            channel = promise.channel
            call.sent = True
            self.send(method_frame(channel.number, call.payload))
            channel.expect(call.reply_ids, answered)

        channels.acquire(promise, start, privileged)

    def submit(self, promise: Promise, privileged: bool = False) -> None:
        """Run an existing promise's operation on this connection (after a recovery)."""
        kind = promise.kind
        if kind is Kind.CALL or kind is Kind.INTERNAL:
            self.start_call(promise, privileged)
        elif kind is Kind.PUBLISH:
            self.publishing.resend(promise)
        elif kind is Kind.CONSUME:
            self.consuming.start_consume(promise, privileged)
        elif kind is Kind.GET:
            self.consuming.start_get(promise)
        elif kind is Kind.CONSUME_CONTROL:
            self.consuming.start_control(promise)
        else:
            raise ValueError("%r cannot run again" % (promise,))
