"""Middleware: see every publish, delivery and frame of a client.

Theory of operation: ``puka.Client(..., middleware=[...])`` builds a
:class:`Chain` of :class:`Middleware` objects.  The client calls the chain at
fixed points -- a publish is about to be encoded, the broker settled it, a
message is handed to the application, the application settles it, a
basic.get starts and ends, a frame goes in or out -- and the chain calls each
middleware's hook in list order.  A hook that raises is logged (logger
``puka.tracing``) and never disturbs messaging.

With no middleware there is no chain at all: the publish and delivery paths
test one attribute and do nothing else for it.  Frames are only decoded for
inspection when a middleware overrides :meth:`Middleware.on_frame`.

The objects handed to hooks carry a ``context`` dict each middleware may use
for its own state (key it by something unique, e.g. ``id(self)``).

Provided here: :class:`FrameRecorder` and :class:`FrameLogger`.  The
OpenTelemetry middleware, :class:`OpenTelemetryMiddleware`, lives in
:mod:`puka.tracing.otel` and is imported only when asked for, so neither
``import puka`` nor ``import puka.tracing`` imports OpenTelemetry.
"""

from __future__ import annotations

import logging

from .. import spec
from ..framing import FrameReader

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("puka.tracing")

_FRAME_NAMES = {1: "method", 2: "header", 3: "body", 8: "heartbeat"}


class OutgoingPublish:
    """A message being published.

    ``headers`` is a copy the middleware may change (add trace context...): the
    caller's dict is never modified.  ``promise`` is the publish promise's
    number; ``context`` is for middleware state.
    """

    __slots__ = ("client", "exchange", "routing_key", "headers", "body_size", "mandatory", "promise", "context")

    def __init__(
        self, client: Any, exchange: str, routing_key: str, headers: dict[str, Any], body_size: int, mandatory: bool
    ) -> None:
        self.client = client
        self.exchange = exchange
        self.routing_key = routing_key
        self.headers = headers
        self.body_size = body_size
        self.mandatory = mandatory
        self.promise = 0
        self.context: dict[Any, Any] = {}


class Delivery:
    """A message handed to the application, by a callback (``style='callback'``) or ``wait``.

    ``kind`` is ``'deliver'`` for a consumed message and ``'get'`` for a
    basic.get result; ``error`` is the exception the callback raised, once
    on_deliver_done is called (None when it returned normally).
    """

    __slots__ = ("client", "message", "promise", "queue", "no_ack", "style", "kind", "error", "context")

    def __init__(
        self,
        client: Any,
        message: dict[str, Any],
        promise: int,
        queue: str | None,
        no_ack: bool,
        style: str,
        kind: str = "deliver",
    ) -> None:
        self.client = client
        self.message = message
        self.promise = promise
        self.queue = queue
        self.no_ack = no_ack
        self.style = style
        self.kind = kind
        self.error: BaseException | None = None
        self.context: dict[Any, Any] = {}


class GetOperation:
    """A basic.get in progress."""

    __slots__ = ("client", "queue", "no_ack", "promise", "context")

    def __init__(self, client: Any, queue: str, no_ack: bool) -> None:
        self.client = client
        self.queue = queue
        self.no_ack = no_ack
        self.promise = 0
        self.context: dict[Any, Any] = {}


class FrameInfo:
    """One frame as seen on the wire, decoded.

    ``direction`` is ``'in'`` or ``'out'``; ``frame_type`` 1 method, 2 content
    header, 3 body, 8 heartbeat; ``method`` the decoded method (a dict with
    ``.name``) for method frames; ``properties`` and ``body_size`` for content
    headers; ``size`` the payload size.  ``str()`` names the method, e.g.
    ``in  ch 3 queue.declare-ok {'queue': 'q', ...}``.
    """

    __slots__ = ("direction", "channel", "frame_type", "method", "properties", "body_size", "size")

    def __init__(
        self,
        direction: str,
        channel: int,
        frame_type: int,
        method: Any = None,
        properties: dict[str, Any] | None = None,
        body_size: int | None = None,
        size: int = 0,
    ) -> None:
        self.direction = direction
        self.channel = channel
        self.frame_type = frame_type
        self.method = method
        self.properties = properties
        self.body_size = body_size
        self.size = size

    @property
    def name(self) -> str:
        """The method name for method frames (``basic.deliver``), else the frame kind."""
        if self.method is not None:
            return str(self.method.name)
        if self.frame_type == 0:
            return "protocol-header"
        return _FRAME_NAMES.get(self.frame_type, "frame-%d" % self.frame_type)

    def __str__(self) -> str:
        head = "%-3s ch %d %s" % (self.direction, self.channel, self.name)
        if self.method is not None:
            fields = {k: v for k, v in self.method.items() if k not in ("body", "headers")}
            return "%s %r" % (head, fields)
        if self.frame_type == 2:
            return "%s body_size=%s %r" % (head, self.body_size, self.properties)
        if self.frame_type in (1, 3):
            return "%s %d bytes" % (head, self.size)
        return head

    __repr__ = __str__


class Middleware:
    """Base class of the middleware chain: override the hooks you need.

    Every hook returns None; exceptions are logged and ignored.  Hooks run in
    the client's thread, inside the client's calls (publish, wait, loop...).
    """

    def bind(self, client: Any) -> None:
        """Called once, when a Client is created with this middleware."""

    def observes_publish(self) -> bool:
        """Whether on_publish/on_publish_done/on_publish_settled have work to do right now.

        Asked at every publish: when no middleware wants it, the publish takes
        the plain path (no OutgoingPublish, no hooks).  Default: True when
        one of those hooks is overridden.
        """
        return _overrides(self, "on_publish") or _overrides_publish_end(self)

    def on_publish(self, publish: OutgoingPublish) -> Any:
        """A message is about to be published; ``publish.headers`` may be changed.

        What it returns is kept until the broker settles the message and then
        given to :meth:`on_publish_settled`; None (what the base class and most
        middleware return) keeps nothing."""
        return None

    def on_publish_done(self, publish: OutgoingPublish, result: Any) -> None:
        """The broker settled the publish: ``result.is_error`` False when confirmed;
        else ``result.exception`` says why (NoRoute, PublishNacked, a channel
        error, ConnectionBroken).

        Overriding this keeps each observed publish's OutgoingPublish (its headers,
        its context) until the broker settles it: with many publishes in flight,
        :meth:`on_publish_settled` is leaner."""

    def on_publish_settled(self, token: Any, result: Any) -> None:
        """The broker settled a publish whose :meth:`on_publish` returned ``token``
        (not None); ``result`` as for :meth:`on_publish_done`.

        The lean alternative to on_publish_done: until the confirm the client
        keeps only the token (what the middleware needs then), not the
        OutgoingPublish.  Not called for publishes whose on_publish returned None."""

    def on_deliver(self, delivery: Delivery) -> None:
        """A message is handed to the application (before its callback runs, or as ``wait`` returns it)."""

    def on_deliver_done(self, delivery: Delivery) -> None:
        """The callback that received the message returned or raised (callback style only;
        ``delivery.error`` holds what it raised)."""

    def on_settle(self, delivery: Delivery | None, message: dict[str, Any], verb: str) -> None:
        """The application acks, nacks or rejects a message (``verb``: ack/nack/reject).

        Called once the settlement is known valid, just before it is sent.
        ``delivery`` is None when the message was not seen by on_deliver."""

    def on_get(self, get: GetOperation) -> None:
        """basic_get was called."""

    def on_get_done(self, get: GetOperation, result: Any) -> None:
        """The basic.get answered: a message, ``{'empty': True}``, or an error result."""

    def on_frame(self, frame: FrameInfo) -> None:
        """A frame went out or came in (only called for middleware that overrides this)."""

    def on_close(self, client: Any) -> None:
        """The client is closing (or its connection is gone for good)."""

    def on_connection_lost(self, client: Any, exc: BaseException) -> None:
        """The connection was lost and recovery begins (promises stay pending)."""

    def on_recovered(self, client: Any, info: dict[str, Any]) -> None:
        """Recovery is complete.  ``info``: ``host`` (redacted URL), ``outage_seconds``,
        ``attempts``, ``republished`` (publishes sent again), ``renamed`` (server-named
        queues, old name -> new)."""


def _overrides(middleware: Middleware, name: str) -> bool:
    return getattr(type(middleware), name) is not getattr(Middleware, name)


def _overrides_publish_end(middleware: Middleware) -> bool:
    return _overrides(middleware, "on_publish_done") or _overrides(middleware, "on_publish_settled")


class Chain:
    """The middleware of one client, called in order; errors logged, never raised.

    Each hook is called only on the middleware that override it (lists made once).

    Publishes: :meth:`publish` returns what the client keeps on the publish's
    promise until the broker settles it (``promise.traced``, with
    :attr:`publish_observer` as the promise's observer), or None when nothing
    is to be done then.  With one middleware that does not override
    ``on_publish_done``, that is the token its ``on_publish`` returned, and
    nothing else is kept; when no middleware overrides ``on_publish_settled``,
    the OutgoingPublish; otherwise a tuple of the OutgoingPublish (only when
    some middleware overrides ``on_publish_done``) and the tokens.
    """

    def __init__(self, client: Any, middleware: list[Middleware]) -> None:
        self.client = client
        self.middleware = list(middleware)
        for mw in self.middleware:
            if not isinstance(mw, Middleware):
                raise TypeError("middleware must be puka.tracing.Middleware instances, not %r" % (mw,))

        def overriding(*names: str) -> list[Middleware]:
            return [mw for mw in self.middleware if any(_overrides(mw, name) for name in names)]

        self.publishers = overriding("on_publish", "on_publish_done", "on_publish_settled", "observes_publish")
        #: whether some publisher needs the OutgoingPublish at the confirm (on_publish_done)
        self._keep_publish = any(_overrides(mw, "on_publish_done") for mw in self.publishers)
        #: whether some publisher takes tokens (on_publish_settled)
        self._tokens = any(_overrides(mw, "on_publish_settled") for mw in self.publishers)
        self._single: Middleware | None = None
        #: the observer of observed publishes' promises (bound once, shared by them all)
        self.publish_observer: Any = self._publish_observer
        if len(self.publishers) == 1 and not self._keep_publish:
            self._single = self.publishers[0]
            self.publish_observer = self._single_observer
        self.deliverers = overriding("on_deliver", "on_deliver_done")
        self.settlers = overriding("on_settle")
        self.getters = overriding("on_get", "on_get_done")
        self.frame_watchers = overriding("on_frame")
        self.recovery_watchers = overriding("on_connection_lost", "on_recovered")
        self.closed = False
        self._out_reader = FrameReader(frame_max=0)
        for mw in self.middleware:
            self._call(mw.bind, client)

    @staticmethod
    def _call(hook: Any, *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("middleware hook %s failed (ignored)", getattr(hook, "__qualname__", hook))

    def observes_publish(self) -> bool:
        for mw in self.publishers:
            try:
                if mw.observes_publish():
                    return True
            except Exception:
                log.exception("middleware hook %s.observes_publish failed (ignored)", type(mw).__name__)
                return True
        return False

    def publish(self, publish: OutgoingPublish) -> Any:
        """Run on_publish; return what to keep until the confirm (None: nothing to keep)."""
        single = self._single
        if single is not None:
            try:
                return single.on_publish(publish)
            except Exception:
                log.exception("middleware hook %s.on_publish failed (ignored)", type(single).__name__)
                return None
        if not self._tokens:  # on_publish_done only: the OutgoingPublish is all there is to keep
            for mw in self.publishers:
                try:
                    mw.on_publish(publish)
                except Exception:
                    log.exception("middleware hook %s.on_publish failed (ignored)", type(mw).__name__)
            return publish if self._keep_publish else None
        tokens = []
        kept = False
        for mw in self.publishers:
            token = None
            try:
                token = mw.on_publish(publish)
            except Exception:
                log.exception("middleware hook %s.on_publish failed (ignored)", type(mw).__name__)
            tokens.append(token)
            kept = kept or token is not None
        if self._keep_publish:
            return (publish, tokens)
        return (None, tokens) if kept else None

    def publish_done(self, kept: Any, result: Any) -> None:
        """The publish is settled: ``kept`` is what :meth:`publish` returned (not None)."""
        single = self._single
        if single is not None:
            try:
                single.on_publish_settled(kept, result)
            except Exception:
                log.exception("middleware hook %s.on_publish_settled failed (ignored)", type(single).__name__)
            return
        if not self._tokens:
            for mw in self.publishers:
                try:
                    mw.on_publish_done(kept, result)
                except Exception:
                    log.exception("middleware hook %s.on_publish_done failed (ignored)", type(mw).__name__)
            return
        publish, tokens = kept
        for mw, token in zip(self.publishers, tokens):
            if token is not None:
                try:
                    mw.on_publish_settled(token, result)
                except Exception:
                    log.exception("middleware hook %s.on_publish_settled failed (ignored)", type(mw).__name__)
            if publish is not None:
                try:
                    mw.on_publish_done(publish, result)
                except Exception:
                    log.exception("middleware hook %s.on_publish_done failed (ignored)", type(mw).__name__)

    # The observers let go of what was kept as soon as the hooks have it: a settled promise may
    # stay referenced a while longer (its result not yet taken, ``ready`` not yet compacted).

    def _publish_observer(self, promise: Any, result: Any) -> None:
        kept, promise.traced = promise.traced, None
        self.publish_done(kept, result)

    def _single_observer(self, promise: Any, result: Any) -> None:
        single = self._single
        token, promise.traced = promise.traced, None
        try:
            single.on_publish_settled(token, result)  # type: ignore[union-attr]
        except Exception:
            log.exception("middleware hook %s.on_publish_settled failed (ignored)", type(single).__name__)

    def deliver(self, delivery: Delivery) -> None:
        for mw in self.deliverers:
            self._call(mw.on_deliver, delivery)

    def deliver_done(self, delivery: Delivery) -> None:
        for mw in self.deliverers:
            self._call(mw.on_deliver_done, delivery)

    def settle(self, delivery: Delivery | None, message: dict[str, Any], verb: str) -> None:
        for mw in self.settlers:
            self._call(mw.on_settle, delivery, message, verb)

    def get(self, get: GetOperation) -> None:
        for mw in self.getters:
            self._call(mw.on_get, get)

    def connection_lost(self, exc: BaseException) -> None:
        for mw in self.recovery_watchers:
            self._call(mw.on_connection_lost, self.client, exc)

    def recovered(self, info: dict[str, Any]) -> None:
        for mw in self.recovery_watchers:
            self._call(mw.on_recovered, self.client, info)

    def get_done(self, get: GetOperation, result: Any) -> None:
        for mw in self.getters:
            self._call(mw.on_get_done, get, result)

    def close(self) -> None:
        """The client closes or lost its connection (called once)."""
        if self.closed:
            return
        self.closed = True
        for mw in self.middleware:
            self._call(mw.on_close, self.client)

    # --- frames ---------------------------------------------------------------------------------

    def frames_in(self, frames: list[tuple[int, int, bytes]]) -> None:
        for frame in frames:
            self._emit(_frame_info("in", frame))

    def bytes_out(self, data: Any) -> None:
        if bytes(data[:8]) == spec.PROTOCOL_HEADER and not self._out_reader:
            self._emit(FrameInfo("out", 0, 0, size=8))
            data = data[8:]
        try:
            frames = self._out_reader.feed(data)
        except spec.DecodeError:
            log.exception("could not decode an outgoing frame")
            self._out_reader = FrameReader(frame_max=0)
            return
        for frame in frames:
            self._emit(_frame_info("out", frame))

    def _emit(self, info: FrameInfo) -> None:
        for mw in self.frame_watchers:
            self._call(mw.on_frame, info)


#: Fields that carry credentials: shown as '***' in frames.
_SECRET_FIELDS = {
    "connection.start-ok": "response",
    "connection.secure-ok": "response",
    "connection.update-secret": "new_secret",
}


def _frame_info(direction: str, frame: tuple[int, int, bytes]) -> FrameInfo:
    frame_type, channel, payload = frame
    try:
        if frame_type == 1:
            method, _ = spec.decode_method(payload, 0)
            secret = _SECRET_FIELDS.get(method.name)
            if secret is not None and method.get(secret):
                method[secret] = "***"
            return FrameInfo(direction, channel, 1, method=method, size=len(payload))
        if frame_type == 2:
            from struct import unpack_from

            class_id, _weight, body_size = unpack_from(">HHQ", payload, 0)
            props, _ = spec.decode_properties(payload, 12, class_id)
            return FrameInfo(direction, channel, 2, properties=props, body_size=body_size, size=len(payload))
    except spec.DecodeError:
        pass
    return FrameInfo(direction, channel, frame_type, size=len(payload))


class FrameRecorder(Middleware):
    """Keeps every frame, both directions, in ``frames`` (a list of :class:`FrameInfo`)."""

    def __init__(self) -> None:
        self.frames: list[FrameInfo] = []

    def on_frame(self, frame: FrameInfo) -> None:
        self.frames.append(frame)

    def names(self, direction: str | None = None) -> list[str]:
        """The frames' names (method names for method frames), optionally of one direction."""
        return [f.name for f in self.frames if direction is None or f.direction == direction]


class FrameLogger(Middleware):
    """Logs every frame through :mod:`logging` (logger ``puka.frames``, DEBUG by default)."""

    def __init__(self, logger: logging.Logger | str = "puka.frames", level: int = logging.DEBUG) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def on_frame(self, frame: FrameInfo) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, "%s", frame)


def __getattr__(name: str) -> Any:
    if name in ("OpenTelemetryMiddleware", "PukaInstrumentor"):
        from . import otel

        return getattr(otel, name)
    raise AttributeError("module 'puka.tracing' has no attribute %r" % name)


__all__ = [
    "Middleware",
    "OutgoingPublish",
    "Delivery",
    "GetOperation",
    "FrameInfo",
    "FrameRecorder",
    "FrameLogger",
    "OpenTelemetryMiddleware",
    "PukaInstrumentor",
]
