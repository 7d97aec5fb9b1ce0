"""OpenTelemetry for puka: spans, metrics and trace context, per the messaging semantic conventions 1.44.

Theory of operation: :class:`OpenTelemetryMiddleware` is a :class:`puka.tracing.Middleware`;
the client calls its hooks and it turns them into telemetry following the OpenTelemetry
messaging semantic conventions (schema https://opentelemetry.io/schemas/1.44.0) and their
RabbitMQ page:

``publish {destination}``, PRODUCER (CLIENT when the caller supplies the creation context)
    started when ``basic_publish`` is called, ended when the broker settles the message (the
    publisher confirm), so it covers the round trip.  A failure -- ``NoRoute`` (a mandatory
    message returned), ``PublishNacked``, a channel error such as ``NotFound`` (missing
    exchange), ``ConnectionBroken`` or an encoding error -- sets status ERROR and ``error.type``
    to the exception's class name.  Its context is the message's *creation context*: it is
    injected into the message headers (W3C ``traceparent``/``tracestate`` with the default
    propagator).  A creation context the caller already put in the headers is kept as it is and
    linked from the publish span instead, and the span is then CLIENT, not PRODUCER (the
    conventions: PRODUCER only when the send span's context is the creation context).
``process {destination}``, CONSUMER
    one per message handed to the application by a consume promise (prefetched messages get
    none until then).  It links to the creation context found in the message headers; its
    parent is that creation context when no span is active (``process_parent='creation'``, the
    default), else the active span.  ``process_parent='ambient'`` never uses the creation
    context as parent; ``'creation-always'`` always does and then also links the active span.
    With a callback the span is current inside the callback and ends when it returns (status
    ERROR if it raised).  With ``wait`` it starts when ``wait`` returns the message and ends
    when the message is settled -- or, with ``no_ack``, at the next delivery of the same
    consume promise -- or at the latest when the client closes.  Messages from ``basic_get``
    get no process span: their ``receive`` span covers them.
``ack|nack|reject {destination}``, CLIENT (``messaging.operation.type`` ``settle``)
    one per settled message, child of the message's process span (else of the active span,
    linking the creation context).  Carries the message's id, correlation id
    (``messaging.message.conversation_id``) and delivery tag.
``receive {queue}``, CLIENT
    one per ``basic_get``, from the call to the broker's answer; links the creation context of
    the message it got.

Destinations (``messaging.destination.name``) follow the RabbitMQ conventions: on the
producer side ``{exchange}:{routing key}``, or the one that is not empty, or ``amq.default``;
on the consumer side ``{exchange}:{routing key}:{queue}`` without the empty parts, and with only
one of routing key and queue when they are equal.  Server-named queues (``amq.gen-*``, direct
reply-to) make a destination anonymous: ``messaging.destination.anonymous`` is true and the
span name uses ``messaging.destination.template``, where each generated name is replaced by
``(anonymous)``.

``server.address``/``server.port`` are the host and port of the URL the client is connected to
(with several hosts, the current one); publish, receive and settle spans also carry
``network.peer.address``/``network.peer.port``, the address of the broker's end of the socket
(the URL's host and port while there is no connected socket).  A publish sent again after a
recovery ends with the peer that settled it.  ``messaging.message.body.size`` is opt-in
(``record_body_size=True``).

Metrics: ``messaging.client.operation.duration`` (publish, receive, settle) and
``messaging.process.duration`` (histograms in seconds, equal to the span durations),
``messaging.client.sent.messages`` (once per settled publish, with ``error.type`` when it failed)
and ``messaging.client.consumed.messages`` (once per message delivered or got).  Their
attributes are kept low-cardinality: the destination is ``messaging.destination.name`` only
when it names an exchange or a queue; otherwise ``messaging.destination.template`` replaces the
routing key of a named exchange by ``{routing_key}`` and generated queue names by
``(anonymous)``.  Routing keys, delivery tags and message ids are never metric attributes.

Errors reported in ``error.type``: the class name of puka's exception -- one of the AMQP reply
code classes (``NoRoute``, ``NotFound``, ``AccessRefused``...), ``PublishNacked``,
``ConnectionBroken`` (or a subclass) -- or of the exception a callback raised.

Exception events: each failed operation also emits the conventions' event through an
OpenTelemetry ``Logger`` (``logger_provider``, else the global one): a log record named
``messaging.send.exception`` (a failed publish) or ``messaging.receive.exception`` (a failed
``basic_get``), severity WARN, or ``messaging.process.exception`` (a callback raised), severity
ERROR, in the context of the operation's span, with ``exception.type`` (the fully-qualified
class name, ``puka.spec.NoRoute``), ``exception.message`` and, when the exception has a
traceback, ``exception.stacktrace``.  No settle events: RabbitMQ does not answer acks, and a
settlement the client refuses raises at the call before the middleware sees it; no create events:
puka has no create operation.
Exception events need opentelemetry-api 1.35 or later; with an older API none is emitted.

Under ``opentelemetry.instrumentation.utils.suppress_instrumentation()`` nothing is recorded,
but the active context is still injected into published messages.  With no SDK configured
(``tracer_provider=None`` and no global provider) no span is started at all.

A settle span covers the client's side of an ack (RabbitMQ does not answer acks): from the
moment the settlement is known valid to its frame being queued.  Wait-style process spans
still open when the connection closes or breaks are ended by ``on_close``.

:class:`PukaInstrumentor` (needs ``opentelemetry-instrumentation``) adds the middleware to every
``puka.Client`` created while it is on, for ``opentelemetry-instrument``.
"""

from __future__ import annotations

import inspect
import logging
import time
import traceback

try:
    from opentelemetry import _logs
    from opentelemetry import context as _context
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
    from opentelemetry.propagate import get_global_textmap
    from opentelemetry.propagators.textmap import Getter, Setter
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("puka.tracing.otel needs the OpenTelemetry API: pip install 'puka[otel]' (%s)" % exc) from exc

try:  # what the API's metrics proxies look at; optional, there is a slower public fallback
    from opentelemetry.metrics import _internal as _metrics_internal
except ImportError:  # pragma: no cover - another API version
    _metrics_internal = None  # type: ignore[assignment]
try:  # the same for the logger provider
    from opentelemetry._logs import _internal as _logs_internal
except ImportError:  # pragma: no cover - another API version
    _logs_internal = None  # type: ignore[assignment]

from .. import instrumentation
from ..version import __version__
from . import Middleware

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from . import Delivery, GetOperation, OutgoingPublish

log = logging.getLogger("puka.tracing")

#: The semantic conventions these spans and metrics follow.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
#: The instrumentation scope of the tracer and the meter.
SCOPE = "puka.tracing.otel"
#: Advisory bucket boundaries of the duration histograms (seconds), from the conventions.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
#: What replaces a generated queue name in templates and span names.
ANONYMOUS = "(anonymous)"
#: What replaces the routing key of a named exchange in metric destinations.
ROUTING_KEY_TEMPLATE = "{routing_key}"
#: ``process_parent`` values.
PROCESS_PARENTS = ("creation", "ambient", "creation-always")

# Attribute names (messaging semantic conventions 1.44).
MESSAGING_SYSTEM = "messaging.system"
OPERATION_NAME = "messaging.operation.name"
OPERATION_TYPE = "messaging.operation.type"
DESTINATION_NAME = "messaging.destination.name"
DESTINATION_TEMPLATE = "messaging.destination.template"
DESTINATION_ANONYMOUS = "messaging.destination.anonymous"
ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
DELIVERY_TAG = "messaging.rabbitmq.message.delivery_tag"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
BODY_SIZE = "messaging.message.body.size"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
NETWORK_PEER_ADDRESS = "network.peer.address"
NETWORK_PEER_PORT = "network.peer.port"
ERROR_TYPE = "error.type"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_STACKTRACE = "exception.stacktrace"
HEADER_PREFIX = "messaging.header."

_SUPPRESS_KEY = getattr(_context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation")
_SUPPRESS_KEY_PLAIN = "suppress_instrumentation"  # older opentelemetry-instrumentation
_get_current = _context.get_current
_time_ns = time.time_ns
_CACHE_MAX = 1024
_UNKNOWN = object()

#: The exception events (log records) of the conventions: (event name, severity number, text).
SEND_EXCEPTION = ("messaging.send.exception", _logs.SeverityNumber.WARN, "WARN")
RECEIVE_EXCEPTION = ("messaging.receive.exception", _logs.SeverityNumber.WARN, "WARN")
PROCESS_EXCEPTION = ("messaging.process.exception", _logs.SeverityNumber.ERROR, "ERROR")


def _log_record_parameters() -> frozenset[str]:
    try:
        return frozenset(inspect.signature(_logs.LogRecord.__init__).parameters)
    except (TypeError, ValueError):  # pragma: no cover - another API version
        return frozenset()


#: Exception events need an API whose LogRecord takes an event name and a context (1.35 and later).
EXCEPTION_EVENTS_SUPPORTED = {"event_name", "context"} <= _log_record_parameters()


def _suppressed(ctx: Any) -> bool:
    return bool(ctx) and bool(ctx.get(_SUPPRESS_KEY) or ctx.get(_SUPPRESS_KEY_PLAIN))


def _is_generated(name: str | None) -> bool:
    """A server-named queue (``amq.gen-...``) or a direct reply-to pseudo-queue."""
    return bool(name) and (name.startswith("amq.gen-") or name.startswith("amq.rabbitmq.reply-to"))  # type: ignore[union-attr]


class _HeadersGetter(Getter):  # type: ignore[type-arg]
    """Reads propagation fields from AMQP headers, whose values may be str or bytes."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                value = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                return None
        elif not isinstance(value, str):
            return None
        return [value]

    def keys(self, carrier: Any) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


class _HeadersSetter(Setter):  # type: ignore[type-arg]
    def set(self, carrier: Any, key: str, value: str) -> None:
        carrier[key] = value


_getter = _HeadersGetter()
_setter = _HeadersSetter()


def _text(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value


def _attribute_value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _error_type(exc: BaseException | None) -> str:
    return type(exc).__qualname__ if exc is not None else "_OTHER"


def _exception_type(exc: BaseException) -> str:
    """The exception's fully-qualified class name, as tracebacks print it (``puka.spec.NoRoute``,
    ``ValueError``)."""
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    if module in (None, "builtins", "__main__"):
        return cls.__qualname__
    return "%s.%s" % (module, cls.__qualname__)


def _peer_attributes(address: Any) -> dict[str, Any] | None:
    """``network.peer.*`` from what ``socket.getpeername()`` returned (IPv4, IPv6 or Unix)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return {NETWORK_PEER_ADDRESS: str(address[0]), NETWORK_PEER_PORT: int(address[1])}
    if isinstance(address, (str, bytes)) and address:
        return {NETWORK_PEER_ADDRESS: _text(address)}
    return None


class _Destination:
    """Everything about one destination of one operation that does not change per message:
    the span name and creation-time attributes, the metric attribute sets."""

    __slots__ = ("span_name", "span_attributes", "duration_attributes", "count_attributes", "_errors", "_peered")

    def __init__(
        self,
        operation: str,
        operation_type: str,
        parts: list[tuple[str, str]],
        routing_key: str,
        server: tuple[str, int],
    ) -> None:
        """``parts`` are the destination's (role, value) pairs, empty ones already left out."""
        if parts:
            name = ":".join(value for _, value in parts)
        else:
            name = "amq.default"
        anonymous = any(_is_generated(value) for role, value in parts if role != "exchange")
        template = ":".join(ANONYMOUS if _is_generated(v) and r != "exchange" else v for r, v in parts) or name
        attributes: dict[str, Any] = {
            MESSAGING_SYSTEM: "rabbitmq",
            OPERATION_NAME: operation,
            OPERATION_TYPE: operation_type,
            DESTINATION_NAME: name,
        }
        if anonymous:
            attributes[DESTINATION_ANONYMOUS] = True
            attributes[DESTINATION_TEMPLATE] = template
        if routing_key:
            attributes[ROUTING_KEY] = routing_key
        host, port = server
        if host:
            attributes[SERVER_ADDRESS] = host
        if port:
            attributes[SERVER_PORT] = port
        self.span_name = "%s %s" % (operation, template if anonymous else name)
        self.span_attributes = attributes

        # Metrics: low cardinality only.  A routing key routed by a named exchange is masked; with
        # the default exchange (no exchange part) it is a queue name and is kept.
        has_exchange = any(role == "exchange" for role, _ in parts)
        masked = False
        metric_parts = []
        for role, value in parts:
            if role != "exchange" and _is_generated(value):
                value, masked = ANONYMOUS, True
            elif role == "routing_key" and has_exchange:
                value, masked = ROUTING_KEY_TEMPLATE, True
            metric_parts.append(value)
        metric: dict[str, Any] = {MESSAGING_SYSTEM: "rabbitmq", OPERATION_NAME: operation}
        if masked:
            metric[DESTINATION_TEMPLATE] = ":".join(metric_parts)
        else:
            metric[DESTINATION_NAME] = name
        if host:
            metric[SERVER_ADDRESS] = host
        if port:
            metric[SERVER_PORT] = port
        self.count_attributes = metric
        duration = dict(metric)
        duration[OPERATION_TYPE] = operation_type
        self.duration_attributes = duration
        self._errors: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        #: (peer attributes, span attributes with them) of the last with_peer()
        self._peered: tuple[Any, dict[str, Any]] = (None, attributes)

    def with_peer(self, peer: dict[str, Any] | None) -> dict[str, Any]:
        """The span attributes with ``network.peer.*`` (a dict made once per peer: never change it)."""
        cached, attributes = self._peered
        if cached is peer:
            return attributes
        if cached is None or cached != peer:
            attributes = {**self.span_attributes, **peer} if peer else self.span_attributes
        self._peered = (peer, attributes)
        return attributes

    def failed(self, error_type: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (duration, count) metric attributes of a failed operation."""
        pair = self._errors.get(error_type)
        if pair is None:
            duration = dict(self.duration_attributes)
            duration[ERROR_TYPE] = error_type
            count = dict(self.count_attributes)
            count[ERROR_TYPE] = error_type
            pair = self._errors[error_type] = (duration, count)
        return pair


def _producer_parts(exchange: str, routing_key: str) -> list[tuple[str, str]]:
    parts = []
    if exchange:
        parts.append(("exchange", exchange))
    if routing_key:
        parts.append(("routing_key", routing_key))
    return parts


def _consumer_parts(exchange: str, routing_key: str, queue: str | None) -> list[tuple[str, str]]:
    parts = _producer_parts(exchange, routing_key)
    if queue and queue != routing_key:
        parts.append(("queue", queue))
    return parts


class _Operation:
    """A span in progress (or only its timing, when tracing is off)."""

    __slots__ = ("span", "start", "destination", "token", "style", "ended", "key")

    def __init__(self, span: Any, start: int, destination: _Destination) -> None:
        self.span = span
        self.start = start
        self.destination = destination
        self.token: Any = None
        self.style = ""
        self.ended = False
        self.key: Any = None


def _call_hook(hook: Callable[..., Any] | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        log.exception("OpenTelemetry hook %r failed (ignored)", hook)


class OpenTelemetryMiddleware(Middleware):
    """Traces and measures a client's messaging with OpenTelemetry (see the module doc).

    ``tracer_provider``, ``meter_provider``, ``logger_provider``
        where spans, metrics and exception events go; None uses the global ones (set later or
        never; the logger provider is ``opentelemetry._logs``'s).  Exception events accompany the
        operations traced or measured; a ``logger_provider`` given here makes every operation
        observed for its events, even with no tracer or meter provider configured.
    ``propagator``
        a ``TextMapPropagator`` for the message headers; None uses the global one
        (``opentelemetry.propagate``), W3C trace context and baggage by default.
    ``publish_hook(span, publish)``, ``consume_hook(span, delivery)``, ``settle_hook(span, delivery)``
        called once the span has started with its attributes, for recording spans only;
        ``publish`` is the :class:`~puka.tracing.OutgoingPublish` (its headers may still be
        changed), ``delivery`` the :class:`~puka.tracing.Delivery` (None in settle_hook for a
        message the middleware did not see delivered).  Their exceptions are logged and ignored.
    ``capture_headers``
        names of message headers recorded as ``messaging.header.<name>`` attributes on publish
        and process spans (opt-in: headers may hold personal data).
    ``process_parent``
        ``'creation'`` (default), ``'ambient'`` or ``'creation-always'``: see the module doc.
    ``record_body_size``
        record ``messaging.message.body.size`` on publish, process and receive spans: off by
        default, an opt-in attribute of the conventions.

    One middleware may serve several clients.
    """

    def __init__(
        self,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        propagator: Any = None,
        *,
        publish_hook: Callable[[Any, OutgoingPublish], Any] | None = None,
        consume_hook: Callable[[Any, Delivery], Any] | None = None,
        settle_hook: Callable[[Any, Delivery | None], Any] | None = None,
        capture_headers: Iterable[str] = (),
        process_parent: str = "creation",
        record_body_size: bool = False,
        logger_provider: Any = None,
    ) -> None:
        if process_parent not in PROCESS_PARENTS:
            raise ValueError("process_parent must be one of %s, not %r" % (", ".join(PROCESS_PARENTS), process_parent))
        if isinstance(capture_headers, str):
            raise TypeError("capture_headers takes a list of header names, not a string")
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.propagator = propagator
        self.publish_hook = publish_hook
        self.consume_hook = consume_hook
        self.settle_hook = settle_hook
        self.capture_headers = tuple((name, HEADER_PREFIX + name) for name in capture_headers)
        self.process_parent = process_parent
        self.record_body_size = record_body_size
        self.logger_provider = logger_provider
        self._tracer = _trace.get_tracer(SCOPE, __version__, tracer_provider, schema_url=SCHEMA_URL)
        meter = _metrics.get_meter(SCOPE, __version__, meter_provider, schema_url=SCHEMA_URL)
        self._logger = _logs.get_logger(SCOPE, __version__, logger_provider, schema_url=SCHEMA_URL)
        # Whether spans / metrics can be recorded at all: fixed for explicit providers, else
        # looked up until a global provider is set (that happens once per process).
        self._tracing_on: bool | None = None
        self._metering_on: bool | None = None
        if tracer_provider is not None:
            self._tracing_on = not isinstance(tracer_provider, _trace.NoOpTracerProvider)
        if meter_provider is not None:
            self._metering_on = not isinstance(meter_provider, _metrics.NoOpMeterProvider)
        # An explicit logger provider: operations are observed for their exception events even
        # when nothing else is recorded (metrics then go to a meter that may do nothing).  Folded
        # into the metering flag so that the no-SDK path tests nothing more.
        self._logging_on: bool | None = None
        if logger_provider is not None:
            self._logging_on = not isinstance(logger_provider, _logs.NoOpLoggerProvider)
            if self._logging_on and EXCEPTION_EVENTS_SUPPORTED:
                self._metering_on = True
        self._operation_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of messaging operation initiated by a producer or consumer client.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._sent_messages = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Number of messages producer attempted to send to the broker.",
        )
        self._consumed_messages = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )
        self._recoveries = meter.create_counter(
            "puka.client.recoveries",
            unit="{recovery}",
            description="Connections lost and recovered by the client.",
        )
        #: id(client) -> (span of the recovery in progress, start time)
        self._recovering: dict[int, Any] = {}
        self._publish_destinations: dict[tuple[Any, ...], _Destination] = {}
        self._consume_destinations: dict[tuple[Any, ...], _Destination] = {}
        self._fields: tuple[Any, frozenset[str]] = (None, frozenset())
        #: wait-style process spans not ended yet: id(client) -> {key: _Operation}
        self._open: dict[int, dict[Any, _Operation]] = {}
        #: id(client) -> (its socket, the network.peer.* attributes of that socket's peer)
        self._peers: dict[int, tuple[Any, dict[str, Any]]] = {}

    # --- helpers ---------------------------------------------------------------------------------

    def observes_publish(self) -> bool:
        """Publishes need this middleware when spans or metrics are recorded, or a context
        is active to pass on; otherwise they take the client's plain path."""
        if self._tracing_on or self._metering_on:
            return True
        if _get_current():
            return True
        tracing, metering = self._enabled()
        return tracing or metering

    def _enabled(self) -> tuple[bool, bool]:
        """(tracing, metering): whether spans and metrics can be recorded at all (metering is also
        True when an explicit logger provider wants the operations' exception events).

        With the global providers this looks at what the API's proxies look at, cheaply, so
        that nothing is started or measured while no SDK is configured.
        """
        tracing = self._tracing_on
        if tracing is None:
            provider = getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN)
            if provider is _UNKNOWN:  # another API version: the public (slower) way
                provider = _trace.get_tracer_provider()
                tracing = not isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider))
            elif provider is None:
                tracing = False
            else:
                tracing = self._tracing_on = not isinstance(provider, _trace.NoOpTracerProvider)
        metering = self._metering_on
        if metering is None:
            provider = getattr(_metrics_internal, "_METER_PROVIDER", _UNKNOWN)
            if provider is _UNKNOWN:
                provider = _metrics.get_meter_provider()
                metering = type(provider).__name__ != "_ProxyMeterProvider" and not isinstance(
                    provider, _metrics.NoOpMeterProvider
                )
            elif provider is None:
                metering = False
            else:
                metering = self._metering_on = not isinstance(provider, _metrics.NoOpMeterProvider)
        return tracing, metering

    def _start_span(
        self,
        destination: _Destination,
        parent: Any,
        kind: Any,
        attributes: Any,
        links: Any,
        start: int,
        hook: Any,
        subject: Any,
    ) -> Any:
        """Start a span named for the destination; run the user's hook on it when it records."""
        span = self._tracer.start_span(
            destination.span_name, context=parent, kind=kind, attributes=attributes, links=links, start_time=start
        )
        if hook is not None and span.is_recording():
            _call_hook(hook, span, subject)
        return span

    def _propagator(self) -> Any:
        return self.propagator if self.propagator is not None else get_global_textmap()

    def _has_creation_context(self, propagator: Any, headers: Any) -> bool:
        """Whether the caller put a creation context (not just baggage) in the headers."""
        if not headers:
            return False
        cached, fields = self._fields
        if cached is not propagator:
            fields = frozenset(field for field in propagator.fields if field != "baggage")
            self._fields = (propagator, fields)
        for field in fields:
            if field in headers:
                return True
        return False

    def _extract(self, headers: Any, propagator: Any = None) -> Any:
        """The creation context in a message's headers: (context, span context) or (None, None)."""
        if not headers:
            return None, None
        if propagator is None:
            propagator = self._propagator()
        try:
            ctx = propagator.extract(headers, context=_context.Context(), getter=_getter)
        except Exception:
            log.debug("could not extract a trace context from %r", headers, exc_info=True)
            return None, None
        span_context = _trace.get_current_span(ctx).get_span_context()
        if not span_context.is_valid:
            return None, None
        return ctx, span_context

    @staticmethod
    def _server(client: Any) -> tuple[str, int]:
        params = getattr(client, "params", None)
        return (getattr(params, "host", "") or "", getattr(params, "port", 0) or 0)

    def _publish_destination(self, client: Any, exchange: str, routing_key: str) -> _Destination:
        params = client.params
        key = (params.host, params.port, exchange, routing_key)
        destination = self._publish_destinations.get(key)
        if destination is None:
            destination = _Destination(
                "publish", "send", _producer_parts(exchange, routing_key), routing_key, self._server(client)
            )
            if len(self._publish_destinations) >= _CACHE_MAX:
                self._publish_destinations.clear()
            self._publish_destinations[key] = destination
        return destination

    def _consume_destination(
        self, client: Any, operation: str, exchange: str, routing_key: str, queue: str | None
    ) -> _Destination:
        server = self._server(client)
        key = (server, operation, exchange, routing_key, queue)
        destination = self._consume_destinations.get(key)
        if destination is None:
            if operation == "receive":
                parts: list[tuple[str, str]] = [("queue", queue)] if queue else []
                operation_type = "receive"
            else:
                parts = _consumer_parts(exchange, routing_key, queue)
                operation_type = "process" if operation == "process" else "settle"
            destination = _Destination(operation, operation_type, parts, routing_key, server)
            if len(self._consume_destinations) >= _CACHE_MAX:
                self._consume_destinations.clear()
            self._consume_destinations[key] = destination
        return destination

    def _message_attributes(self, attributes: dict[str, Any], headers: Any, body: Any, tag: Any) -> None:
        """Add what a single message says to span attributes."""
        if tag is not None:
            attributes[DELIVERY_TAG] = tag
        if headers:
            message_id = headers.get("message_id")
            if message_id is not None:
                attributes[MESSAGE_ID] = _text(message_id)
            correlation_id = headers.get("correlation_id")
            if correlation_id is not None:
                attributes[CONVERSATION_ID] = _text(correlation_id)
            if self.capture_headers:
                for name, attribute in self.capture_headers:
                    value = headers.get(name)
                    if value is not None:
                        attributes[attribute] = _attribute_value(value)
        if body is not None and self.record_body_size:
            attributes[BODY_SIZE] = body if body.__class__ is int else len(body)

    @staticmethod
    def _fail(span: Any, exc: BaseException | None, error_type: str) -> None:
        if span is not None and span.is_recording():
            span.set_attribute(ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, str(exc) if exc is not None else error_type))

    def _logging(self) -> bool:
        """Whether exception events can be recorded at all (asked on failures only)."""
        if not EXCEPTION_EVENTS_SUPPORTED:
            return False
        logging_on = self._logging_on
        if logging_on is not None:
            return logging_on
        provider = getattr(_logs_internal, "_LOGGER_PROVIDER", _UNKNOWN)
        if provider is _UNKNOWN:  # another API version: the public (slower) way
            provider = _logs.get_logger_provider()
            return type(provider).__name__ != "ProxyLoggerProvider" and not isinstance(
                provider, _logs.NoOpLoggerProvider
            )
        if provider is None:
            return False
        logging_on = self._logging_on = not isinstance(provider, _logs.NoOpLoggerProvider)
        return logging_on

    def _exception_event(self, event: tuple[str, Any, str], exc: BaseException | None, span: Any, when: int) -> None:
        """Emit a ``messaging.*.exception`` event (a log record) for a failed operation, in the
        context of its span (none when the operation was measured but not traced)."""
        if exc is None or not self._logging():
            return
        name, severity, severity_text = event
        attributes = {EXCEPTION_TYPE: _exception_type(exc), EXCEPTION_MESSAGE: str(exc)}
        if exc.__traceback__ is not None:
            attributes[EXCEPTION_STACKTRACE] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        # Never the ambient context: an empty one would be taken for "use the current context".
        context = _trace.set_span_in_context(span if span is not None else _trace.INVALID_SPAN, _context.Context())
        try:
            self._logger.emit(
                _logs.LogRecord(
                    timestamp=when,
                    context=context,
                    severity_number=severity,
                    severity_text=severity_text,
                    attributes=attributes,
                    event_name=name,
                )
            )
        except Exception:
            log.exception("could not emit the %s event (ignored)", name)

    def _peer(self, client: Any, fallback: bool = True) -> dict[str, Any] | None:
        """The ``network.peer.*`` attributes of the broker ``client`` is connected to now.

        The connected socket's peer address (cached per socket: recovery makes a new one);
        while there is none, the current host's ``params`` when ``fallback`` (else None).
        """
        try:
            sock = client.socket()
        except Exception:
            sock = None
        if sock is not None:
            cached = self._peers.get(id(client))
            if cached is not None and cached[0] is sock:
                return cached[1]
            try:
                peer = _peer_attributes(sock.getpeername())
            except (OSError, AttributeError, ValueError):  # not connected (yet, or any more)
                peer = None
            if peer is not None:
                if len(self._peers) >= _CACHE_MAX:
                    self._peers.clear()
                self._peers[id(client)] = (sock, peer)
                return peer
        if not fallback:
            return None
        host, port = self._server(client)
        if not host:
            return None
        attributes: dict[str, Any] = {NETWORK_PEER_ADDRESS: host}
        if port:
            attributes[NETWORK_PEER_PORT] = port
        return attributes

    # --- publish -----------------------------------------------------------------------------------
    #
    # A traced publish keeps, until its confirm, only its token: (span, start, destination, client,
    # peer) -- one tuple beside the SDK's span.  The destination is kept only when metrics are
    # recorded (None otherwise: the confirm then records none).  With thousands of publishes in
    # flight, every object kept per publish is traversed by each full garbage collection.

    def on_publish(self, publish: OutgoingPublish) -> Any:
        ctx = _get_current()
        headers = publish.headers
        tracing: bool | None = False
        metering: bool | None = False
        if not (ctx and _suppressed(ctx)):
            tracing = self._tracing_on
            metering = self._metering_on
            if tracing is None or metering is None:
                tracing, metering = self._enabled()
        if not tracing:
            if ctx:  # no span: still pass the active context on (there is none to pass otherwise)
                propagator = self._propagator()
                if not self._has_creation_context(propagator, headers):
                    propagator.inject(headers, context=ctx, setter=_setter)
            if metering:
                destination = self._publish_destination(publish.client, publish.exchange, publish.routing_key)
                return (None, _time_ns(), destination, publish.client, None)
            return None
        propagator = self.propagator
        if propagator is None:
            propagator = get_global_textmap()
        client = publish.client
        destination = self._publish_destination(client, publish.exchange, publish.routing_key)
        custom = self._has_creation_context(propagator, headers) if headers else False
        links = None
        if custom:
            _, creation = self._extract(headers, propagator)
            if creation is not None:
                links = [Link(creation)]
        peer = self._peer(client)
        attributes = destination.with_peer(peer)  # shared: the SDK copies what it is given
        if self.record_body_size or (
            headers
            and (
                self.capture_headers
                or headers.get("message_id") is not None
                or headers.get("correlation_id") is not None
            )
        ):
            attributes = dict(attributes)
            self._message_attributes(attributes, headers, publish.body_size, None)
        start = _time_ns()
        # PRODUCER when the span's context becomes the message's creation context, else CLIENT.
        span = self._tracer.start_span(
            destination.span_name,
            context=ctx,
            kind=SpanKind.CLIENT if custom else SpanKind.PRODUCER,
            attributes=attributes,
            links=links,
            start_time=start,
        )
        hook = self.publish_hook
        if hook is not None and span.is_recording():
            _call_hook(hook, span, publish)
        if not custom:
            if span.get_span_context().is_valid:
                propagator.inject(headers, context=_trace.set_span_in_context(span, ctx), setter=_setter)
            elif ctx:
                propagator.inject(headers, context=ctx, setter=_setter)
        return (span, start, destination if metering else None, client, peer)

    def on_publish_settled(self, token: Any, result: Any) -> None:
        span, start, destination, client, peer = token
        end = _time_ns()
        if span is not None:
            # The broker that settled it: another one when recovery sent the message again (a loss
            # forgets the client's cached peer, so the same dict means the same connection).
            cached = self._peers.get(id(client))
            if (cached is None or cached[1] is not peer) and span.is_recording():
                now = self._peer(client, fallback=False)
                if now is not None and now is not peer:
                    span.set_attributes(now)
        if result.is_error:
            exc = result.exception
            error_type = _error_type(exc)
            self._fail(span, exc, error_type)
            self._exception_event(SEND_EXCEPTION, exc, span, end)
            if span is not None:
                span.end(end)
            if destination is not None:
                duration_attributes, count_attributes = destination.failed(error_type)
                self._operation_duration.record((end - start) / 1e9, duration_attributes)
                self._sent_messages.add(1, count_attributes)
            return
        if span is not None:
            span.end(end)
        if destination is not None:
            self._operation_duration.record((end - start) / 1e9, destination.duration_attributes)
            self._sent_messages.add(1, destination.count_attributes)

    # --- consume -----------------------------------------------------------------------------------

    def on_deliver(self, delivery: Delivery) -> None:
        message = delivery.message
        if delivery.kind == "get":
            return  # a basic.get result: its receive span and count are done in on_get_done
        client = delivery.client
        if delivery.no_ack and self._open:
            open_ = self._open.get(id(client))
            if open_:
                previous = open_.pop(("no_ack", delivery.promise), None)
                if previous is not None:
                    self._end_process(previous)
        ctx = _get_current()
        if ctx and _suppressed(ctx):
            return
        tracing, metering = self._enabled()
        if not (tracing or metering):
            return
        destination = self._consume_destination(
            client, "process", message.get("exchange") or "", message.get("routing_key") or "", delivery.queue
        )
        if metering:
            self._consumed_messages.add(1, destination.count_attributes)
        span = None
        parent = ctx
        start = _time_ns()
        if tracing:
            headers = message.get("headers")
            creation_ctx, creation = self._extract(headers)
            links = None
            if creation is not None:
                links = [Link(creation)]
                mode = self.process_parent
                if mode != "ambient":
                    ambient = _trace.get_current_span(ctx).get_span_context()
                    if mode == "creation-always":
                        parent = creation_ctx
                        if ambient.is_valid:
                            links.append(Link(ambient))
                    elif not ambient.is_valid:
                        parent = creation_ctx
            attributes = dict(destination.span_attributes)
            self._message_attributes(attributes, headers, message.get("body"), message.get("delivery_tag"))
            span = self._start_span(
                destination, parent, SpanKind.CONSUMER, attributes, links, start, self.consume_hook, delivery
            )
        operation = _Operation(span, start, destination)
        operation.style = delivery.style
        delivery.context[self] = operation
        if delivery.style == "callback":
            if span is not None:
                operation.token = _context.attach(_trace.set_span_in_context(span, parent))
        else:
            key = ("no_ack", delivery.promise) if delivery.no_ack else (delivery.promise, message.get("delivery_tag"))
            operation.key = key
            self._open.setdefault(id(client), {})[key] = operation

    def on_deliver_done(self, delivery: Delivery) -> None:
        operation = delivery.context.get(self)
        if operation is None or operation.ended:
            return
        self._end_process(operation, delivery.error)

    def _end_process(self, operation: _Operation, exc: BaseException | None = None) -> None:
        if operation.ended:
            return
        operation.ended = True
        end = _time_ns()
        token, operation.token = operation.token, None
        if token is not None:
            try:
                _context.detach(token)
            except Exception:
                log.debug("could not detach the process span's context", exc_info=True)
        destination = operation.destination
        if exc is not None:
            error_type = _error_type(exc)
            self._fail(operation.span, exc, error_type)
            attributes = destination.failed(error_type)[1]
            self._exception_event(PROCESS_EXCEPTION, exc, operation.span, end)
        else:
            attributes = destination.count_attributes
        if operation.span is not None:
            operation.span.end(end)
        self._process_duration.record((end - operation.start) / 1e9, attributes)

    # --- settle ------------------------------------------------------------------------------------

    def on_settle(self, delivery: Delivery | None, message: dict[str, Any], verb: str) -> None:
        operation = delivery.context.get(self) if delivery is not None else None
        ctx = _get_current()
        if not (ctx and _suppressed(ctx)):
            tracing, metering = self._enabled()
            if tracing or metering:
                self._settle(ctx, tracing, delivery, operation, message, verb)
        if operation is not None and operation.style != "callback" and not operation.ended:
            self._end_process(operation)
            open_ = self._open.get(id(delivery.client)) if delivery is not None else None
            if open_:
                open_.pop(operation.key, None)

    def _settle(
        self, ctx: Any, tracing: bool, delivery: Any, operation: _Operation | None, message: Any, verb: str
    ) -> None:
        client = delivery.client if delivery is not None else None
        queue = delivery.queue if delivery is not None else None
        destination = self._consume_destination(
            client, verb, message.get("exchange") or "", message.get("routing_key") or "", queue
        )
        start = _time_ns()
        span = None
        if tracing:
            links = None
            parent = ctx
            if operation is not None and operation.span is not None:
                parent = _trace.set_span_in_context(operation.span, ctx)
            else:
                _, creation = self._extract(message.get("headers"))
                if creation is not None:
                    links = [Link(creation)]
            attributes = dict(destination.span_attributes)
            tag = message.get("delivery_tag")
            if tag is not None:
                attributes[DELIVERY_TAG] = tag
            headers = message.get("headers")
            if headers:
                message_id = headers.get("message_id")
                if message_id is not None:
                    attributes[MESSAGE_ID] = _text(message_id)
                correlation_id = headers.get("correlation_id")
                if correlation_id is not None:
                    attributes[CONVERSATION_ID] = _text(correlation_id)
            if client is not None:
                peer = self._peer(client)
                if peer is not None:
                    attributes.update(peer)
            span = self._start_span(
                destination, parent, SpanKind.CLIENT, attributes, links, start, self.settle_hook, delivery
            )
        end = _time_ns()
        if span is not None:
            span.end(end)
        self._operation_duration.record((end - start) / 1e9, destination.duration_attributes)

    # --- basic.get ---------------------------------------------------------------------------------

    def on_get(self, get: GetOperation) -> None:
        ctx = _get_current()
        if ctx and _suppressed(ctx):
            return
        tracing, metering = self._enabled()
        if not (tracing or metering):
            return
        destination = self._consume_destination(get.client, "receive", "", "", get.queue)
        start = _time_ns()
        span = None
        attributes = destination.span_attributes
        if tracing:
            peer = self._peer(get.client)
            if peer is not None:
                attributes = {**attributes, **peer}
            span = self._start_span(destination, ctx, SpanKind.CLIENT, attributes, None, start, None, get)
        get.context[self] = _Operation(span, start, destination)

    def on_get_done(self, get: GetOperation, result: Any) -> None:
        operation = get.context.pop(self, None)
        if operation is None:
            return
        destination = operation.destination
        span = operation.span
        duration_attributes = destination.duration_attributes
        if result.is_error:
            exc = result.exception
            error_type = _error_type(exc)
            self._fail(span, exc, error_type)
            duration_attributes = destination.failed(error_type)[0]
            self._exception_event(RECEIVE_EXCEPTION, exc, span, _time_ns())
        elif not result.get("empty"):
            self._consumed_messages.add(1, destination.count_attributes)
            if span is not None and span.is_recording():
                headers = result.get("headers")
                attributes: dict[str, Any] = {}
                routing_key = result.get("routing_key")
                if routing_key:
                    attributes[ROUTING_KEY] = routing_key
                self._message_attributes(attributes, headers, result.get("body"), result.get("delivery_tag"))
                span.set_attributes(attributes)
                _, creation = self._extract(headers)
                if creation is not None:
                    add_link = getattr(span, "add_link", None)
                    if add_link is not None:
                        add_link(creation)
        end = _time_ns()
        if span is not None:
            span.end(end)
        self._operation_duration.record((end - operation.start) / 1e9, duration_attributes)

    # --- recovery ----------------------------------------------------------------------------------

    def on_connection_lost(self, client: Any, exc: BaseException) -> None:
        """A span covers each outage, from the loss to the recovery (or to the end)."""
        self._peers.pop(id(client), None)  # the next connection has another socket, maybe another peer
        tracing, _metering = self._enabled()
        if not tracing:
            return
        previous = self._recovering.pop(id(client), None)
        if previous is not None:
            previous.end()
        span = self._tracer.start_span(
            "puka recovery",
            kind=SpanKind.INTERNAL,
            attributes={
                "messaging.system": "rabbitmq",
                "server.address": client.params.host,
                "server.port": client.params.port,
                "error.type": type(exc).__qualname__,
            },
        )
        self._recovering[id(client)] = span

    def on_recovered(self, client: Any, info: dict[str, Any]) -> None:
        span = self._recovering.pop(id(client), None)
        attributes = {"server.address": client.params.host, "server.port": client.params.port}
        if span is not None:
            span.set_attributes(
                {
                    **attributes,
                    "puka.recovery.outage_seconds": info["outage_seconds"],
                    "puka.recovery.attempts": info["attempts"],
                    "puka.recovery.republished": info["republished"],
                    "puka.recovery.renamed_queues": len(info["renamed"]),
                }
            )
            span.end()
        _tracing, metering = self._enabled()
        if metering:
            self._recoveries.add(1, attributes)

    # --- close -------------------------------------------------------------------------------------

    def on_close(self, client: Any) -> None:
        """End the process spans of messages still waiting for settlement (or the next delivery)."""
        outage = self._recovering.pop(id(client), None)
        if outage is not None:
            outage.set_status(Status(StatusCode.ERROR, "not recovered"))
            outage.end()
        self._peers.pop(id(client), None)
        open_ = self._open.pop(id(client), None)
        if open_:
            for operation in list(open_.values()):
                self._end_process(operation)


# --- the instrumentor (opentelemetry-instrument) -------------------------------------------------------

_INSTRUMENTS = ("puka >= 0.1",)
_MIDDLEWARE_OPTIONS = frozenset(inspect.signature(OpenTelemetryMiddleware).parameters)


def _make_instrumentor() -> type:
    try:
        from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ImportError(
            "puka.tracing.otel.PukaInstrumentor needs opentelemetry-instrumentation: "
            "pip install 'puka[otel]' (%s)" % exc
        ) from exc

    class PukaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
        """Adds an :class:`OpenTelemetryMiddleware` to every ``puka.Client`` created while on.

        ``instrument(tracer_provider=..., meter_provider=..., propagator=..., **options)``:
        the options are :class:`OpenTelemetryMiddleware`'s.  A client that already has an
        OpenTelemetryMiddleware in its ``middleware`` list gets no second one.
        """

        def instrumentation_dependencies(self) -> tuple[str, ...]:
            return _INSTRUMENTS

        _hook: Any = None

        def _instrument(self, **kwargs: Any) -> None:
            if PukaInstrumentor._hook is not None:
                return
            options = {key: value for key, value in kwargs.items() if key in _MIDDLEWARE_OPTIONS}
            middleware = OpenTelemetryMiddleware(**options)

            def add_middleware(chain: list[Any]) -> list[Any]:
                if any(isinstance(mw, OpenTelemetryMiddleware) for mw in chain):
                    return chain
                return [*chain, middleware]

            PukaInstrumentor._hook = add_middleware
            instrumentation.install(add_middleware)

        def _uninstrument(self, **kwargs: Any) -> None:
            hook, PukaInstrumentor._hook = PukaInstrumentor._hook, None
            if hook is not None:
                instrumentation.uninstall(hook)

    PukaInstrumentor.__module__ = __name__
    PukaInstrumentor.__qualname__ = "PukaInstrumentor"
    return PukaInstrumentor


def __getattr__(name: str) -> Any:
    if name == "PukaInstrumentor":
        cls = _make_instrumentor()
        globals()[name] = cls
        return cls
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


# PukaInstrumentor is made on first access (module __getattr__), so only opentelemetry-api is needed otherwise.
__all__ = ["OpenTelemetryMiddleware", "PukaInstrumentor", "SCHEMA_URL", "DURATION_BUCKETS"]  # noqa: F822
