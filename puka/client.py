"""The public API: puka's Client.

Theory of operation: a :class:`Client` holds a :class:`~puka.promise.PromiseTable`
and a :class:`~puka.core.Core` (one connection: transport and protocol
session).  Every operation returns a promise number at once; nothing blocks
until the application asks:

* ``wait(promise)`` runs the event loop until that promise has a result, runs
  its callback if it has one, and returns the result (raising the error when
  the result is an error and ``raise_errors`` is true);
* ``loop()`` runs the event loop and every callback until ``loop_break()``;
* ``fileno()``/``needs_write()``/``on_read()``/``on_write()``/
  ``run_any_callbacks()`` let another event loop drive the client instead.

The synchronous AMQP operations are declared once, in :data:`OPERATIONS`
(``queue_declare`` -> ``queue.declare`` answered by ``queue.declare-ok``); each
public method only orders its arguments for that method.
"""

from __future__ import annotations

import time

from . import instrumentation, spec
from .core import Core
from .exceptions import ConnectionBroken, PromiseFinished
from .promise import ErrorResult, Kind, PromiseTable
from .protocol.assembler import MAX_MESSAGE_SIZE
from .protocol.handshake import Status
from .recovery import Recovery
from .recovery.listener import RecoveryListener
from .urls import ConnectionParameters, check_option, parse_amqp_urls

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable
    from typing import Any

    from .promise import Callback, Promise
    from .protocol.session import Session
    from .recovery.recovering import RecoveringCore
    from .rpc import Rpc

#: Seconds to establish a connection (TCP, TLS, AMQP handshake) unless the URL says otherwise.
DEFAULT_CONNECTION_TIMEOUT = 10.0
#: Seconds ``close()`` waits for the broker's close-ok before dropping the socket.
CLOSE_TIMEOUT = 5.0
#: Bytes waiting to be written above which basic_publish runs the event loop until they drain.
PUBLISH_HIGH_WATER = 64 * 1024 * 1024


#: puka.tracing, imported when the first Client with middleware is made.
_tracing: Any = None

_MESSAGE_METHODS = frozenset(
    (spec.METHODS_BY_NAME["basic.deliver"].method_id, spec.METHODS_BY_NAME["basic.get-ok"].method_id)
)


def _is_message(result: Any) -> bool:
    return getattr(result, "method_id", None) in _MESSAGE_METHODS


class Operation:
    """A synchronous AMQP operation: the method sent and the reply that answers it."""

    __slots__ = ("request", "reply_ids")

    def __init__(self, request: str, reply: str) -> None:
        self.request = spec.METHODS_BY_NAME[request]
        self.reply_ids = (spec.METHODS_BY_NAME[reply].method_id,)


#: The simple operations: each is one method on a pooled channel and its reply.
OPERATIONS = {
    "exchange_declare": Operation("exchange.declare", "exchange.declare-ok"),
    "exchange_delete": Operation("exchange.delete", "exchange.delete-ok"),
    "exchange_bind": Operation("exchange.bind", "exchange.bind-ok"),
    "exchange_unbind": Operation("exchange.unbind", "exchange.unbind-ok"),
    "queue_declare": Operation("queue.declare", "queue.declare-ok"),
    "queue_delete": Operation("queue.delete", "queue.delete-ok"),
    "queue_purge": Operation("queue.purge", "queue.purge-ok"),
    "queue_bind": Operation("queue.bind", "queue.bind-ok"),
    "queue_unbind": Operation("queue.unbind", "queue.unbind-ok"),
}


class SslConnectionParameters:
    """TLS settings for ``amqps://`` (the original puka's class, extended).

    Certificate and hostname verification are on by default; set
    ``verify=False`` to turn both off (explicitly insecure).  ``ca_certs`` is a
    CA bundle file, ``certfile``/``keyfile`` a client certificate (for EXTERNAL
    authentication).  ``context`` takes a ready ``ssl.SSLContext`` instead.
    """

    def __init__(
        self,
        ca_certs: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        verify: bool = True,
        check_hostname: bool = True,
        server_hostname: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.ca_certs = ca_certs
        self.certfile = certfile
        self.keyfile = keyfile
        self.verify = verify
        self.check_hostname = check_hostname
        self.server_hostname = server_hostname
        self.context = context

    @property
    def require_certificate(self) -> bool:
        """The original puka's name for ``verify``."""
        return self.verify

    @require_certificate.setter
    def require_certificate(self, value: bool) -> None:
        self.verify = value

    def make_context(self) -> ssl.SSLContext:
        """The ``ssl.SSLContext`` these settings describe."""
        import ssl

        if self.context is not None:
            return self.context
        context = ssl.create_default_context(cafile=self.ca_certs)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif not self.check_hostname:
            context.check_hostname = False
        return context


def _ssl_context(ssl_parameters: Any, options: dict[str, Any]) -> tuple[ssl.SSLContext, str | None]:
    """The SSLContext to use and the server name to verify (None: the URL's host)."""
    import ssl

    if isinstance(ssl_parameters, ssl.SSLContext):
        return ssl_parameters, None
    if ssl_parameters is None:
        ssl_parameters = SslConnectionParameters(
            ca_certs=options.get("cacertfile"),
            certfile=options.get("certfile"),
            keyfile=options.get("keyfile"),
            verify=options.get("verify", "verify_peer") != "verify_none",
        )
    elif isinstance(ssl_parameters, dict):
        ssl_parameters = SslConnectionParameters(**ssl_parameters)
    return ssl_parameters.make_context(), ssl_parameters.server_hostname


class Client:
    """A connection to a RabbitMQ broker with puka's promise API.

    ``amqp_url``
        ``amqp[s]://user:password@host:port/vhost?heartbeat=10&connection_timeout=5``
        (see :func:`puka.urls.parse_amqp_url`); a malformed URL raises ValueError here.
    ``pubacks``
        publisher confirms: None uses them when the broker offers them, True
        always, False emulates confirmation as the original puka did.
    ``client_properties``
        merged into what the client announces (e.g. ``{'connection_name': 'billing'}``).
    ``heartbeat``
        seconds; 0 (the default): the URL's, else, with recovery, the broker's
        proposal (60 s on RabbitMQ) and, with ``recovery=False``, none.
    ``ssl_parameters``
        for ``amqps``: an ``ssl.SSLContext``, a :class:`SslConnectionParameters`
        or a dict of its arguments.  Verification is on by default.
    ``middleware``
        a list of :class:`puka.tracing.Middleware`.
    ``connection_timeout``
        seconds for TCP, TLS and the AMQP handshake together.
    ``max_message_size``
        largest message body accepted from the broker (bytes).
    ``recovery``
        True (the default): a lost connection is recovered (see
        :doc:`/reliability`) with the default :class:`puka.Recovery`; a
        ``Recovery(...)`` tunes it; False: a lost connection fails every
        pending promise, as puka 0.0.8 did.

    ``amqp_url`` may name several hosts (``amqp://u:p@h1:5672,h2:5673/vhost``)
    or be a list of URLs: the client starts at a random one, and the first
    ``connect()`` tries each once.
    """

    def __init__(
        self,
        amqp_url: str = "amqp:///",
        pubacks: bool | None = None,
        client_properties: dict[str, Any] | None = None,
        heartbeat: float = 0,
        ssl_parameters: Any = None,
        middleware: Iterable[Any] = (),
        *,
        connection_timeout: float | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
        recovery: bool | Recovery = True,
    ) -> None:
        hosts = parse_amqp_urls(amqp_url)
        params = hosts[0]
        options = params.options
        policy: Recovery | None
        if recovery is True:
            policy = Recovery()
        elif recovery is False or recovery is None:
            policy = None
        elif isinstance(recovery, Recovery):
            policy = recovery
        else:
            raise TypeError("recovery must be True, False or a puka.Recovery, not %r" % (recovery,))
        self.recovery = policy
        if not heartbeat:
            heartbeat = options.get("heartbeat", 0)
        check_option("heartbeat", heartbeat)
        self.heartbeat = heartbeat
        #: with recovery, heartbeats are always on: the broker's proposal unless set
        wanted_heartbeat: float | None = heartbeat if heartbeat or policy is None else None
        if connection_timeout is None:
            connection_timeout = options.get("connection_timeout", DEFAULT_CONNECTION_TIMEOUT)
        check_option("connection_timeout", connection_timeout)
        self.connection_timeout = float(connection_timeout)
        tls: dict[int, tuple[ssl.SSLContext, str | None]] = {}
        for host in hosts:
            if host.tls:
                context, configured_name = _ssl_context(ssl_parameters, host.options)
                server_hostname = host.options.get("server_name_indication") or configured_name or host.host
                tls[id(host)] = (context, server_hostname)
        self._table = table = PromiseTable()

        def make_core(host: ConnectionParameters, gated: bool) -> Core:
            context, server_hostname = tls.get(id(host), (None, None))
            return Core(
                host,
                table,
                pubacks=pubacks,
                client_properties=client_properties,
                heartbeat=wanted_heartbeat,
                ssl_context=context,
                server_hostname=server_hostname,
                max_message_size=max_message_size,
                gated=gated,
            )

        self._core: Core | RecoveringCore
        if policy is None and len(hosts) == 1:
            self._core = make_core(params, False)
        else:
            from .protocol.session import log
            from .recovery.recovering import RecoveringCore

            self._core = recovering = RecoveringCore(hosts, table, policy, make_core, self.connection_timeout, log)
            recovering.listeners.append(_Listener(self))
        # The hot paths' shortcuts (publish, deliver, settle), renewed when the connection is.
        self._transport = self._core.transport
        self._publishing = self._core.publishing
        self._consuming = self._core.consuming
        self.middleware = list(middleware)
        if instrumentation.CLIENT_MIDDLEWARE_HOOKS:
            self.middleware = instrumentation.middleware_for_new_client(self.middleware)
        self._chain: Any = None
        if self.middleware:
            global _tracing
            from . import tracing as _tracing

            self._chain = _tracing.Chain(self, self.middleware)
        self._wire_core()
        #: (promise number, delivery tag) -> Delivery, for deliveries awaiting settlement (middleware only)
        self._deliveries: dict[tuple[int, int], Any] = {}
        self._loop_break = False
        #: request/reply state, made by the first rpc_call
        self._rpc: Rpc | None = None
        self.pubacks = pubacks
        self.client_properties = client_properties

    def __repr__(self) -> str:
        return "<puka.Client %s %s>" % (self.params.redacted_url(), self._core.describe())

    def _wire_core(self) -> None:
        """Point the shortcuts and the middleware at the current connection."""
        core = self._core
        self.params = core.current.params
        self._transport = core.transport
        self._publishing = core.publishing
        self._consuming = core.consuming
        chain = self._chain
        if chain is not None:
            if chain.frame_watchers:
                core.transport.frame_tap = chain
            core.session.on_closed = chain.close

    def _check(self) -> Session:
        return self._core.check()

    # --- connection interface -----------------------------------------------------------------------

    def connect(self, callback: Callback | None = None) -> int:
        """Open the connection: TCP, TLS for amqps, then the AMQP handshake."""
        session = self._check()
        if session.connect_promise is not None:
            raise ValueError("connect() was already called on this client")
        promise = self._core.connect(callback, self.connection_timeout, self.params.redacted_url())
        return promise.number

    def close(self, callback: Callback | None = None) -> int:
        """Close the connection (connection.close / close-ok); every pending promise fails."""
        core = self._core
        if self._chain is not None and core.status is not Status.CLOSING:
            self._chain.close()
        return core.close(callback, CLOSE_TIMEOUT).number

    def shutdown(self, timeout: float = 30.0) -> dict[str, int]:
        """Stop without losing anything (a service's SIGTERM); returns what was left.

        1. Every consume is cancelled: no new deliveries (messages already
           delivered stay with the application).
        2. The client keeps running -- callbacks included -- until the
           application has settled every message it holds, the broker has
           confirmed every publish and every other operation has its answer,
           or ``timeout`` seconds have passed.
        3. Then it closes.  What is still pending at the deadline fails with
           :exc:`ConnectionBroken` ("... still pending when the client shut
           down"); messages never acknowledged are redelivered by the broker.

        Returns ``{'unsettled': n, 'pending': m}``: the messages still held
        and the operations (publishes...) still pending at the deadline, both
        0 after a clean stop.  Results waiting to be taken are not dropped.
        A client whose connection is gone just closes.
        """
        table = self._table
        deadline = time.monotonic() + timeout
        left = {"unsettled": 0, "pending": 0}
        if self._core.active:
            try:
                rpc_consume = self._rpc.consume if self._rpc is not None else None
                for promise in [p for p in table.promises.values() if p.kind is Kind.CONSUME and not p.final]:
                    if promise.number != rpc_consume:  # replies to calls in flight still come
                        self.basic_cancel(promise.number)

                def done() -> bool:
                    promises = table.promises.values()
                    held = sum(p.held for p in promises)
                    pending = sum(
                        1 for p in promises if not p.final and p.kind is not Kind.CONNECT and p.number != rpc_consume
                    )
                    left["unsettled"], left["pending"] = held, pending
                    return not held and not pending

                self._run_until(done, deadline)
                pending = [p for p in table.unfinished() if p.kind is not Kind.CONNECT and p.number != rpc_consume]
                if pending:
                    exc = ConnectionBroken(
                        "still pending when the client shut down (after %gs): %d operation(s)" % (timeout, len(pending))
                    )
                    for promise in pending:
                        table.fail(promise, exc)
            except ConnectionBroken:
                pass
        try:
            self.wait(self.close(), timeout=CLOSE_TIMEOUT + 1)
        except ConnectionBroken:
            pass
        return left

    def _run_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Run the event loop and the callbacks of promises that have one (other results are kept)
        until ``condition()`` or the deadline; True when the condition was met."""
        table = self._table
        core = self._core
        while not condition():
            ready = table.ready
            kept = []
            while ready:
                promise = ready.popleft()
                if not promise.results:
                    continue
                if promise.callback is None:
                    kept.append(promise)
                    continue
                self._deliver(promise, raise_errors=False)
            ready.extend(kept)
            if condition():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            core.flush()
            core.io_step(min(remaining, 1.0))
        return True

    def __enter__(self) -> Client:
        if self._core.session.connect_promise is None:
            self.wait(self.connect())
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._core.active:
            try:
                self.wait(self.close(), timeout=CLOSE_TIMEOUT + 1)
            except ConnectionBroken:
                pass
        self._core.drop()

    def fileno(self) -> int:
        """The socket's file descriptor (for select/poll/epoll)."""
        return self._transport.fileno()

    def socket(self) -> Any:
        """The underlying socket (for event loops)."""
        return self._transport.sock

    def needs_write(self) -> bool:
        """True when the event loop should wait for the socket to be writable."""
        return self._transport.needs_write()

    def on_read(self) -> None:
        """Call when the socket is readable: reads, decodes and dispatches what arrived."""
        self._transport.on_read()

    def on_write(self) -> None:
        """Call when the socket is writable: writes what is queued."""
        self._transport.on_write()

    def on_timer(self) -> float | None:
        """Run heartbeats and deadlines; returns seconds until they need this again.

        Event loops other than ``wait``/``loop`` call this when the returned
        delay has passed (``wait`` and ``loop`` do it themselves).
        """
        return self._core.on_timer()

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks this connection (low resources), else None."""
        return self._core.handshake.blocked

    @property
    def on_blocked(self) -> Callable[[str | None], None] | None:
        """Called with the reason when the broker blocks the connection, with None when it unblocks."""
        return self._core.handshake.blocked_callback

    @on_blocked.setter
    def on_blocked(self, callback: Callable[[str | None], None] | None) -> None:
        self._core.handshake.blocked_callback = callback

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker announced in connection.start (product, version, capabilities...)."""
        return self._core.handshake.server_properties

    @property
    def frame_max(self) -> int:
        """The largest frame, as negotiated with the broker."""
        return self._core.handshake.frame_max

    @property
    def channel_max(self) -> int:
        """The most channels, as negotiated with the broker."""
        return self._core.handshake.channel_max

    def run_any_callbacks(self) -> None:
        """Run the callbacks of every promise that has a result (never blocks, never raises them).

        Results of promises that have no callback are taken and dropped.  Acks
        given so far are written before each callback and before it returns.
        """
        self._run_callbacks(False)

    def _run_callbacks(self, stop_at_break: bool) -> None:
        """run_any_callbacks; ``stop_at_break``: return after the callback that called loop_break()."""
        table = self._table
        ready = table.ready
        take = table.take
        chain = self._chain
        try:
            while ready:
                promise = ready.popleft()
                if not promise.results:
                    continue
                result = take(promise)
                if self._consuming.pending_acks:
                    self._core.flush()  # the acks given so far go out before the application works again
                if chain is not None and promise.callback is not None and _is_message(result):
                    self._run_observed_callback(promise, result)
                elif promise.callback is not None:
                    promise.callback(promise.number, result)
                if stop_at_break and self._loop_break:
                    return
        finally:
            if self._consuming.pending_acks:
                self._core.flush()

    def _lookup(self, number: int) -> Promise:
        promise = self._table.promises.get(number)
        if promise is None:
            raise ValueError("promise %r is not pending on this client (finished or unknown)" % (number,))
        return promise

    def wait(
        self, promise_numbers: int | Iterable[int], timeout: float | None = None, raise_errors: bool = True
    ) -> Any:
        """Run the event loop until one of the promises has a result; return it.

        Runs that promise's callback, if any.  Returns None when ``timeout``
        (seconds) passes first; ``timeout=0`` polls the network once without
        blocking (reads what is there, writes what the socket takes).  An error
        result is raised unless ``raise_errors`` is False, in which case it is
        returned.  Acks given before are written before it returns.
        """
        table = self._table
        if promise_numbers.__class__ is int:
            promise = table.promises.get(promise_numbers)
            if promise is None:
                promise = self._lookup(promise_numbers)
            if promise.results:
                ready = table.ready
                if ready and ready[0] is promise:
                    ready.popleft()  # the result's entry in ``ready``: taken in order, nothing to compact
                return self._deliver(promise, raise_errors)
            promises: tuple[Promise, ...] = (promise,)
        else:
            promises = tuple([self._lookup(n) for n in promise_numbers])  # type: ignore[union-attr]
            if not promises:
                raise ValueError("wait() needs at least one promise")
            for promise in promises:
                if promise.results:  # a result is waiting: as cheap as waiting on that one promise
                    return self._deliver(promise, raise_errors)
        core = self._core
        core.flush()  # first: the caller cannot tell whether wait() ran poll
        deadline = None if timeout is None else time.monotonic() + timeout
        polled = False
        ready = table.ready
        while True:
            for promise in promises:
                if promise.results:
                    if ready and ready[0] is promise:
                        ready.popleft()
                    return self._deliver(promise, raise_errors)
                if promise.final and promise.number not in table.promises:
                    raise PromiseFinished(promise.number)
            if deadline is None:
                remaining = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if polled:
                        return None
                    remaining = 0.0  # timeout=0 (or passed already): still poll the network once
            core.io_step(remaining)
            polled = True

    def _deliver(self, promise: Promise, raise_errors: bool) -> Any:
        """Hand a promise's oldest result to the application (its callback, then the caller).

        Acks given before are written first (the application is about to work), and acks
        the callback gives before this returns.
        """
        table = self._table
        result = table.take(promise)
        if len(table.ready) > table.compact_at:
            table.compact_ready()
        if self._consuming.pending_acks:
            self._core.flush()
        if self._chain is not None and _is_message(result):
            if promise.callback is not None:
                try:
                    self._run_observed_callback(promise, result)
                finally:
                    if self._consuming.pending_acks:
                        self._core.flush()
            else:
                self._delivered(promise, result, "wait")
            return result
        if promise.callback is not None:
            try:
                promise.callback(promise.number, result)
            finally:
                if self._consuming.pending_acks:
                    self._core.flush()
        if raise_errors and result.is_error:
            raise result.exception.with_traceback(None)
        return result

    def _run_observed_callback(self, promise: Promise, message: Any) -> None:
        delivery = self._delivered(promise, message, "callback")
        try:
            promise.callback(promise.number, message)  # type: ignore[misc]
        except BaseException as exc:
            delivery.error = exc
            raise
        finally:
            self._chain.deliver_done(delivery)

    def _delivered(self, promise: Promise, message: Any, style: str) -> Any:
        """Tell the middleware a message reaches the application."""
        queue = None
        no_ack = True
        kind = "deliver"
        if promise.kind is Kind.CONSUME:
            state = promise.consume
            no_ack = state.no_ack
            queue = state.queue_of(message.get("consumer_tag"))
        elif promise.kind is Kind.GET and promise.traced is not None:
            queue = promise.traced.queue
            no_ack = promise.traced.no_ack
            kind = "get"
        delivery = _tracing.Delivery(self, message, promise.number, queue, no_ack, style, kind)
        if not no_ack:
            self._deliveries[(promise.number, message["delivery_tag"])] = delivery
        self._chain.deliver(delivery)
        if promise.kind is Kind.RPC and style == "wait":
            # An rpc reply is its promise's only result: handed out, it is processed.
            self._chain.deliver_done(delivery)
        return delivery

    def wait_for_all(self, promise_list: Iterable[int], raise_errors: bool = True) -> list[Any]:
        """Wait for each promise in turn; returns their results."""
        return [self.wait(p, raise_errors=raise_errors) for p in promise_list]

    def wait_for_any(self) -> None:
        """Same as ``loop()``."""
        self.loop()

    def loop(self, timeout: float | None = None) -> None:
        """Run the event loop and every callback until ``loop_break()`` or ``timeout`` seconds.

        ``timeout=0`` polls the network once without blocking and runs the
        callbacks that are ready.  A callback calling ``loop_break()`` is the
        last one run.  Like :meth:`run_any_callbacks`, drops the results of
        promises that have no callback.
        """
        self._loop_break = False
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        polled = False
        while True:
            self._run_callbacks(True)
            if self._loop_break:
                break
            if deadline is None:
                remaining = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if polled:
                        break
                    remaining = 0.0  # timeout=0 (or passed already): still poll the network once
            core.io_step(remaining)
            polled = True
        core.flush()

    def loop_break(self) -> None:
        """Make ``loop()`` return after the current callback (results still waiting stay for later)."""
        self._loop_break = True

    def set_callback(self, promise_number: int, callback: Callback | None) -> None:
        """Set (or clear) the callback of a pending promise."""
        self._lookup(promise_number).callback = callback

    # --- publishing and consuming ------------------------------------------------------------------

    def basic_publish(
        self,
        exchange: str,
        routing_key: str = "",
        body: bytes | bytearray | memoryview | str = b"",
        headers: dict[str, Any] | None = None,
        mandatory: bool = False,
        callback: Callback | None = None,
    ) -> int:
        """Publish a message; the promise resolves when the broker confirms it.

        ``headers`` holds the basic properties under puka's names
        (``content_type``, ``content_encoding``, ``delivery_mode``,
        ``priority``, ``correlation_id``, ``reply_to``, ``expiration``,
        ``message_id``, ``timestamp``, ``type_``, ``user_id``, ``app_id``,
        ``cluster_id``) and application headers, together; the dict is not
        modified.  Errors: ``NoRoute`` when ``mandatory`` and no queue took
        it, ``PublishNacked``, the channel error (e.g. ``NotFound`` for a
        missing exchange), ``ConnectionBroken``.
        """
        if self._chain is not None and self._chain.observes_publish():
            return self._publish_observed(exchange, routing_key, body, headers, mandatory, callback)
        publishing = self._publishing
        number = publishing.publish(exchange, routing_key, body, headers, mandatory, callback)
        if self._transport.backlog + publishing.backlog_bytes > PUBLISH_HIGH_WATER:
            self._drain()
        return number

    def _publish_observed(
        self, exchange: str, routing_key: str, body: Any, headers: Any, mandatory: bool, callback: Any
    ) -> int:
        self._check()
        if body.__class__ is bytes:
            size = len(body)
        elif isinstance(body, str):
            size = len(body.encode("utf-8"))
        else:
            try:
                size = memoryview(body).nbytes
            except TypeError:
                size = 0  # session.publish raises the TypeError for it
        publish = _tracing.OutgoingPublish(
            self, exchange, routing_key, dict(headers) if headers else {}, size, mandatory
        )
        publish.promise = self._table.next_number
        chain = self._chain
        kept = chain.publish(publish)
        publishing = self._publishing
        try:
            number = publishing.publish(exchange, routing_key, body, publish.headers, mandatory, callback)
        except Exception as exc:
            if kept is not None:
                chain.publish_done(kept, ErrorResult(exc))
            raise
        if kept is not None:  # only what the middleware need at the confirm, not the OutgoingPublish
            promise = self._table.promises[number]
            promise.traced = kept
            promise.observer = chain.publish_observer
        if self._transport.backlog + publishing.backlog_bytes > PUBLISH_HIGH_WATER:
            self._drain()
        return number

    def _drain(self) -> None:
        """Push back: run the event loop until what waits to be sent is under half the high water."""
        core = self._core
        if not core.can_drain():
            return  # not connecting yet: nothing can drain
        core.drain(PUBLISH_HIGH_WATER // 2)

    def basic_consume(
        self,
        queue: str,
        prefetch_count: int = 0,
        no_local: bool = False,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
        consumer_tag: str | None = None,
        callback: Callback | None = None,
    ) -> int:
        """Consume from a queue; every delivered message is a result of the promise."""
        item = {
            "queue": queue,
            "no_local": no_local,
            "exclusive": exclusive,
            "arguments": arguments,
            "consumer_tag": consumer_tag,
        }
        return self.basic_consume_multi([item], prefetch_count, no_ack, callback=callback)

    def basic_consume_multi(
        self,
        queues: Iterable[str | dict[str, Any]],
        prefetch_count: int = 0,
        no_ack: bool = False,
        callback: Callback | None = None,
    ) -> int:
        """Consume from several queues on one promise.

        Each item is a queue name or a dict with ``queue`` and optionally
        ``no_local``, ``exclusive``, ``arguments``, ``consumer_tag``.
        ``prefetch_count`` applies to each queue's consumer (RabbitMQ's
        per-consumer basic.qos): two queues with prefetch 5 may have ten
        unacknowledged messages.  Consumer tags must differ (ValueError at
        the call).  All the queues share one channel: the way to consume
        thousands of queues.
        """
        items = [{"queue": q} if isinstance(q, str) else dict(q) for q in queues]
        if not items:
            raise ValueError("basic_consume_multi needs at least one queue")
        self._check()
        return self._consuming.consume(items, prefetch_count, no_ack, callback)

    def basic_qos(self, consume_promise: int, prefetch_count: int = 0, callback: Callback | None = None) -> int:
        """Change the prefetch window of a consume promise.

        RabbitMQ applies basic.qos only to consumers started after it: puka
        starts a new consumer per queue under a fresh tag (``<tag>.q<n>``)
        with the new window, then cancels the old one, so the queue never
        lacks a consumer.  Messages delivered before stay valid to
        acknowledge and count against the new window (puka holds deliveries
        back while they fill it); the promise resolves once the held
        messages fit the window.  A consume with an exclusive consumer raises
        ValueError.  See :doc:`/reliability`.
        """
        self._check()
        return self._consuming.qos(consume_promise, prefetch_count, callback)

    def basic_cancel(self, consume_promise: int, callback: Callback | None = None) -> int:
        """Stop a consume promise (all its queues); it ends once the broker confirms."""
        self._check()
        return self._consuming.cancel(consume_promise, callback)

    def basic_get(self, queue: str, no_ack: bool = False, callback: Callback | None = None) -> int:
        """Fetch one message; the result has ``empty`` True when the queue had none."""
        self._check()
        consuming = self._consuming
        if self._chain is None:
            return consuming.get(queue, no_ack, callback)
        get = _tracing.GetOperation(self, queue, no_ack)
        get.promise = self._table.next_number
        self._chain.get(get)
        number = consuming.get(queue, no_ack, callback)
        promise = self._table.promises[number]
        promise.traced = get
        chain = self._chain
        promise.observer = lambda promise, result: chain.get_done(get, result)
        return number

    def basic_ack(self, msg_result: dict[str, Any], multiple: bool = False) -> None:
        """Acknowledge a delivered message (and, with ``multiple``, every earlier one of its consume)."""
        hook = None if self._chain is None else self._settle_hook("ack")
        self._consuming.settle(msg_result, "ack", True, multiple, hook)

    def basic_reject(self, msg_result: dict[str, Any], requeue: bool = True) -> None:
        """Reject a delivered message, requeueing it by default."""
        self._consuming.settle(msg_result, "reject", requeue=requeue, before_send=self._settle_hook("reject"))

    def basic_nack(self, msg_result: dict[str, Any], requeue: bool = True, multiple: bool = False) -> None:
        """Negatively acknowledge a delivered message (RabbitMQ's basic.nack)."""
        self._consuming.settle(
            msg_result, "nack", requeue=requeue, multiple=multiple, before_send=self._settle_hook("nack")
        )

    def _settle_hook(self, verb: str) -> Callable[[dict[str, Any], list[int]], None] | None:
        """For the middleware: called with the message and the settled delivery tags, before sending."""
        if self._chain is None:
            return None
        chain = self._chain
        deliveries = self._deliveries

        def settled(message: dict[str, Any], tags: list[int]) -> None:
            number = message["promise_number"]
            for tag in tags:
                delivery = deliveries.pop((number, tag), None)
                if delivery is not None:
                    chain.settle(delivery, delivery.message, verb)
                elif tag == message["delivery_tag"]:
                    chain.settle(None, message, verb)

        return settled

    # --- request/reply (direct reply-to) ---------------------------------------------------------------

    def rpc_call(
        self,
        exchange: str,
        routing_key: str,
        body: bytes | bytearray | memoryview | str,
        headers: dict[str, Any] | None = None,
        timeout: float | None = None,
        callback: Callback | None = None,
    ) -> int:
        """Send a request; the promise resolves to the reply message (same shape as a delivery).

        The request is a confirmed, ``mandatory`` publish with ``reply_to``
        RabbitMQ's direct reply-to and a fresh ``correlation_id`` (both set
        here, over ``headers``).  It fails with the publish's error
        (:exc:`NoRoute` when no queue took it...) or with
        :exc:`ReplyTimeout` after ``timeout`` seconds.  Many calls may be in
        flight at once; late or unknown replies are logged and dropped.  See
        :mod:`puka.rpc`.
        """
        rpc = self._rpc
        if rpc is None:
            from .protocol.session import log
            from .rpc import Rpc

            rpc = self._rpc = Rpc(self, log)
        return rpc.call(exchange, routing_key, body, headers, timeout, callback)

    def rpc_reply(
        self,
        request: dict[str, Any],
        body: bytes | bytearray | memoryview | str,
        headers: dict[str, Any] | None = None,
        callback: Callback | None = None,
    ) -> int:
        """Answer a delivered request: a confirmed publish to its ``reply_to``, with its ``correlation_id``."""
        try:
            request_headers = request["headers"]
        except (KeyError, TypeError):
            raise ValueError("rpc_reply takes a message delivered by basic_consume or basic_get") from None
        reply_to = request_headers.get("reply_to")
        if not reply_to:
            raise ValueError("the request has no reply_to: nobody to answer")
        properties = dict(headers) if headers else {}
        correlation_id = request_headers.get("correlation_id")
        if correlation_id is not None:
            properties["correlation_id"] = correlation_id
        return self.basic_publish("", reply_to, body, properties, callback=callback)

    # --- the simple operations (see OPERATIONS) --------------------------------------------------

    def _call(self, name: str, args: tuple[Any, ...], callback: Callback | None) -> int:
        op = OPERATIONS[name]
        return self._check().call(op.request, op.reply_ids, args, callback)

    def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        durable: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        passive: bool = False,
        internal: bool = False,
        callback: Callback | None = None,
    ) -> int:
        """Declare an exchange (``passive``: only check that it exists)."""
        args = (exchange, type, passive, durable, auto_delete, internal, False, arguments or {})
        return self._call("exchange_declare", args, callback)

    def exchange_delete(self, exchange: str, if_unused: bool = False, callback: Callback | None = None) -> int:
        """Delete an exchange."""
        return self._call("exchange_delete", (exchange, if_unused, False), callback)

    def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
        callback: Callback | None = None,
    ) -> int:
        """Bind an exchange to another (RabbitMQ extension)."""
        return self._call("exchange_bind", (destination, source, routing_key, False, arguments or {}), callback)

    def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
        callback: Callback | None = None,
    ) -> int:
        """Remove an exchange-to-exchange binding."""
        return self._call("exchange_unbind", (destination, source, routing_key, False, arguments or {}), callback)

    def queue_declare(
        self,
        queue: str = "",
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        passive: bool = False,
        callback: Callback | None = None,
    ) -> int:
        """Declare a queue; the result has ``queue``, ``message_count``, ``consumer_count``.

        ``queue=''`` lets the broker name it.  ``arguments`` carries e.g.
        ``{'x-queue-type': 'quorum'}``, ``{'x-message-ttl': 60000}``.
        """
        args = (queue, passive, durable, exclusive, auto_delete, False, arguments or {})
        return self._call("queue_declare", args, callback)

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, callback: Callback | None = None
    ) -> int:
        """Delete a queue; the result has ``message_count``."""
        return self._call("queue_delete", (queue, if_unused, if_empty, False), callback)

    def queue_purge(self, queue: str, callback: Callback | None = None) -> int:
        """Remove every ready message of a queue; the result has ``message_count``."""
        return self._call("queue_purge", (queue, False), callback)

    def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
        callback: Callback | None = None,
    ) -> int:
        """Bind a queue to an exchange."""
        return self._call("queue_bind", (queue, exchange, routing_key, False, arguments or {}), callback)

    def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
        callback: Callback | None = None,
    ) -> int:
        """Remove a queue binding."""
        return self._call("queue_unbind", (queue, exchange, routing_key, arguments or {}), callback)


class _Listener(RecoveryListener):
    """Hears the recovering core on behalf of a client: renews shortcuts, tells the middleware."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def switched(self) -> None:
        self.client._wire_core()

    def lost(self, exc: BaseException) -> None:
        if self.client._chain is not None:
            self.client._chain.connection_lost(exc)

    def recovered(self, info: dict[str, Any]) -> None:
        if self.client._chain is not None:
            self.client._chain.recovered(info)
