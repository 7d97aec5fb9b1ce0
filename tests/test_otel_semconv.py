"""OpenTelemetryMiddleware against the messaging semantic conventions 1.44 (issue 12, items 14-18).

Span kind of a publish whose creation context the caller supplies, ``messaging.message.body.size``
opt-in, ``network.peer.*``, the conversation id on settle spans and the ``messaging.*.exception``
events.  Like tests/test_otel.py, every test gets its own SDK providers (traces, metrics, logs),
passed explicitly: no global OpenTelemetry state is set in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import puka

try:
    from opentelemetry import trace
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode
except ImportError as exc:  # the test extra brings the otel extra: a missing SDK is a broken set-up, not a skip
    raise ImportError(
        "tests/test_otel_semconv.py needs OpenTelemetry's API and SDK: pip install -e '.[test]' (or '.[otel]')"
    ) from exc

from faults import Proxy

from puka.tracing.otel import SCHEMA_URL, OpenTelemetryMiddleware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THEIR_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Telemetry:
    """One test's providers and in-memory exporters (spans, metrics, log records)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.log_exporter = InMemoryLogRecordExporter()
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.log_exporter))

    def middleware(self, **options) -> OpenTelemetryMiddleware:
        return OpenTelemetryMiddleware(self.tracer_provider, self.meter_provider, **options)

    def spans(self, name_prefix: str = "") -> list:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(name_prefix)]

    def span(self, name: str):
        matching = [s for s in self.exporter.get_finished_spans() if s.name == name]
        assert len(matching) == 1, "expected one span %r, got %r" % (name, [s.name for s in self.spans()])
        return matching[0]

    def events(self) -> list:
        """The log records emitted by puka's instrumentation scope."""
        found = []
        for readable in self.log_exporter.get_finished_logs():
            if readable.instrumentation_scope.name == "puka.tracing.otel":
                assert readable.instrumentation_scope.schema_url == SCHEMA_URL
                found.append(readable.log_record)
        return found

    def metric_attributes(self) -> list[dict]:
        data = self.reader.get_metrics_data()
        found = []
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    found.extend(dict(point.attributes) for point in metric.data.data_points)
        return found

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()


@pytest.fixture
def otel():
    telemetry = Telemetry()
    yield telemetry
    telemetry.shutdown()


def connect(url, *middleware, **kwargs):
    client = puka.Client(url, middleware=list(middleware), **kwargs)
    client.wait(client.connect(), timeout=10)
    return client


@pytest.fixture
def traced(amqp_url, otel):
    client = connect(amqp_url, otel.middleware())
    yield client
    client.wait(client.close(), timeout=10)


@pytest.fixture
def tqueue(traced, name):
    traced.wait(traced.queue_declare(queue=name, exclusive=True))
    return name


@pytest.fixture
def logged(amqp_url, otel):
    """Like ``traced``, with exception events going to ``otel``'s logger provider."""
    client = connect(amqp_url, otel.middleware(logger_provider=otel.logger_provider))
    yield client
    client.wait(client.close(), timeout=10)


def consume_one(client, queue, **kwargs):
    consume = client.basic_consume(queue=queue, **kwargs)
    message = client.wait(consume, timeout=10)
    assert message is not None, "no message arrived"
    return consume, message


# --- 14. the publish span's kind -------------------------------------------------------------------------


def test_publish_span_is_client_when_the_caller_supplies_the_creation_context(otel, traced, tqueue):
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"ours"))
    traced.wait(
        traced.basic_publish(
            exchange="", routing_key=tqueue, body=b"theirs", headers={"traceparent": THEIR_TRACEPARENT}
        )
    )
    ours, theirs = otel.spans("publish")
    # The message carries the publish span's context: the span is its creation context.
    assert ours.kind is SpanKind.PRODUCER
    assert list(ours.links) == []
    # The caller's context is the creation context: the publish span only sends it.
    assert theirs.kind is SpanKind.CLIENT
    assert [link.context.trace_id for link in theirs.links] == [int(THEIR_TRACEPARENT.split("-")[1], 16)]
    first = traced.wait(traced.basic_get(queue=tqueue, no_ack=True))
    second = traced.wait(traced.basic_get(queue=tqueue, no_ack=True))
    assert first["headers"]["traceparent"].split("-")[2] == "%016x" % ours.context.span_id
    assert second["headers"]["traceparent"] == THEIR_TRACEPARENT


# --- 15. messaging.message.body.size is opt-in ----------------------------------------------------------------


@pytest.mark.parametrize("record_body_size", [None, True])
def test_body_size_is_recorded_only_when_asked(amqp_url, otel, name, record_body_size):
    options = {} if record_body_size is None else {"record_body_size": record_body_size}
    client = connect(amqp_url, otel.middleware(**options))
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True))
        for _ in range(2):
            client.wait(client.basic_publish(exchange="", routing_key=name, body=b"12345"))
        client.basic_ack(client.wait(client.basic_get(queue=name)))
        consume, message = consume_one(client, name)
        client.basic_ack(message)
        client.wait(client.basic_cancel(consume))
    finally:
        client.wait(client.close())
    spans = otel.spans("publish") + otel.spans("process") + otel.spans("receive")
    assert [s.name.split()[0] for s in spans] == ["publish", "publish", "process", "receive"]
    sizes = [s.attributes.get("messaging.message.body.size") for s in spans]
    if record_body_size:
        assert sizes == [5, 5, 5, 5]
    else:
        assert sizes == [None] * 4
    assert OpenTelemetryMiddleware().record_body_size is False


# --- 16. network.peer.address / network.peer.port ---------------------------------------------------------------


def test_publish_receive_and_settle_spans_carry_the_peer_address(amqp_url, otel, name):
    # By host name: server.address is the name in the URL, network.peer.address the socket's peer.
    params = puka.parse_amqp_url(amqp_url)
    url = amqp_url.replace("@127.0.0.1:", "@localhost:") if params.host == "127.0.0.1" else amqp_url
    client = connect(url, otel.middleware())
    try:
        address, port = client.socket().getpeername()[:2]
        client.wait(client.queue_declare(queue=name, exclusive=True))
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"x"))
        client.basic_ack(client.wait(client.basic_get(queue=name)))
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"y"))
        consume, message = consume_one(client, name)
        client.basic_reject(message, requeue=False)
        client.wait(client.basic_cancel(consume))
    finally:
        client.wait(client.close())
    spans = otel.spans("publish") + otel.spans("receive") + otel.spans("ack") + otel.spans("reject")
    assert len(spans) == 5
    for span in spans:
        assert span.attributes["network.peer.address"] == address, span.name
        assert span.attributes["network.peer.port"] == port, span.name
        assert span.attributes["server.address"] == client.params.host
        assert span.attributes["server.port"] == client.params.port
    if client.params.host == "localhost":
        assert address in ("127.0.0.1", "::1")
    # network.peer.* are span attributes only: never on metrics.
    assert otel.metric_attributes()
    for attributes in otel.metric_attributes():
        assert "network.peer.address" not in attributes and "network.peer.port" not in attributes


def test_the_peer_follows_recovery_to_the_next_host(amqp_url, otel, name):
    params = puka.parse_amqp_url(amqp_url)
    upstream = (params.host, params.port)
    with Proxy(upstream) as first, Proxy(upstream) as second:
        proxies = {first.port: first, second.port: second}
        url = "amqp://guest:guest@127.0.0.1:%d,127.0.0.1:%d/" % (first.port, second.port)
        recovery = puka.Recovery(initial_delay=0.01, max_delay=0.1, deadline=30.0)
        client = connect(url, otel.middleware(), recovery=recovery)
        try:
            [used] = [p for p in proxies.values() if p.active]
            [spare] = [p for p in proxies.values() if p is not used]
            queue = client.wait(client.queue_declare(queue="", exclusive=True), timeout=30)["queue"]
            client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"before"), timeout=30)
            used.close()
            # Started on the lost connection, sent again and confirmed by the next host.
            client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"during"), timeout=30)
            client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"after"), timeout=30)
            assert client.params.port == spare.port
        finally:
            client.wait(client.close(), timeout=10)
    publishes = otel.spans("publish")
    assert len(publishes) == 3
    assert [s.attributes["network.peer.port"] for s in publishes] == [used.port, spare.port, spare.port]
    assert [s.attributes["server.port"] for s in publishes][2] == spare.port
    assert {s.attributes["network.peer.address"] for s in publishes} == {"127.0.0.1"}


class _Params:
    host = "broker.example"
    port = 5671


class _Unconnected:
    def getpeername(self):
        raise OSError(107, "Transport endpoint is not connected")


class _StubClient:
    params = _Params()

    def __init__(self, sock) -> None:
        self.sock = sock

    def socket(self):
        return self.sock


@pytest.mark.parametrize("sock", [None, _Unconnected()], ids=["no-socket", "not-connected"])
def test_without_a_connected_socket_the_peer_is_the_current_host(sock):
    middleware = OpenTelemetryMiddleware()
    client = _StubClient(sock)
    assert middleware._peer(client) == {"network.peer.address": "broker.example", "network.peer.port": 5671}
    assert middleware._peer(client, fallback=False) is None


# --- 17. messaging.message.conversation_id on settle spans ---------------------------------------------------------


def test_settle_spans_carry_the_conversation_id(otel, traced, tqueue):
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"1", headers={"correlation_id": "conv-1"}))
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"2", headers={"correlation_id": b"conv-2"}))
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"3"))
    consume = traced.basic_consume(queue=tqueue, prefetch_count=3)
    first, second, third = (traced.wait(consume, timeout=10) for _ in range(3))
    traced.basic_ack(first)
    traced.basic_nack(second, requeue=False)
    traced.basic_reject(third, requeue=False)
    traced.wait(traced.basic_cancel(consume))
    assert otel.span("ack %s" % tqueue).attributes["messaging.message.conversation_id"] == "conv-1"
    assert otel.span("nack %s" % tqueue).attributes["messaging.message.conversation_id"] == "conv-2"
    assert "messaging.message.conversation_id" not in otel.span("reject %s" % tqueue).attributes


def test_settle_span_of_a_got_message_carries_the_conversation_id(otel, traced, tqueue):
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x", headers={"correlation_id": "c-9"}))
    traced.basic_ack(traced.wait(traced.basic_get(queue=tqueue)))
    assert otel.span("ack %s" % tqueue).attributes["messaging.message.conversation_id"] == "c-9"


# --- 18. the messaging.*.exception events ---------------------------------------------------------------------------


def test_a_failed_publish_emits_a_send_exception_event(otel, logged, name):
    logged.wait(logged.queue_declare(queue=name, exclusive=True))
    logged.wait(logged.basic_publish(exchange="", routing_key=name, body=b"fine"))
    assert otel.events() == [], "a successful publish emits no event"
    missing = name + "-missing"
    promise = logged.basic_publish(exchange="", routing_key=missing, body=b"x", mandatory=True)
    with pytest.raises(puka.NoRoute) as raised:
        logged.wait(promise)
    span = otel.span("publish %s" % missing)
    assert span.status.status_code is StatusCode.ERROR
    [event] = otel.events()
    assert event.event_name == "messaging.send.exception"
    assert event.severity_number is SeverityNumber.WARN
    assert event.severity_text == "WARN"
    assert dict(event.attributes) == {
        "exception.type": "puka.spec.NoRoute",
        "exception.message": str(raised.value),
    }
    assert (event.trace_id, event.span_id) == (span.context.trace_id, span.context.span_id)
    assert event.timestamp == span.end_time


def test_a_failed_get_emits_a_receive_exception_event(otel, logged, name):
    missing = name + "-missing"
    with pytest.raises(puka.NotFound) as raised:
        logged.wait(logged.basic_get(queue=missing))
    span = otel.span("receive %s" % missing)
    [event] = otel.events()
    assert event.event_name == "messaging.receive.exception"
    assert event.severity_number is SeverityNumber.WARN
    assert event.attributes["exception.type"] == "puka.spec.NotFound"
    assert event.attributes["exception.message"] == str(raised.value)
    assert (event.trace_id, event.span_id) == (span.context.trace_id, span.context.span_id)


def test_a_callback_that_raises_emits_a_process_exception_event(otel, logged, name):
    def on_message(promise, message):
        raise RuntimeError("handler failed")

    logged.wait(logged.queue_declare(queue=name, exclusive=True))
    logged.wait(logged.basic_publish(exchange="", routing_key=name, body=b"x"))
    consume = logged.basic_consume(queue=name, no_ack=True, callback=on_message)
    with pytest.raises(RuntimeError, match="handler failed"):
        logged.loop(timeout=10)
    logged.wait(logged.basic_cancel(consume))
    process = otel.span("process %s" % name)
    [event] = otel.events()
    assert event.event_name == "messaging.process.exception"
    assert event.severity_number is SeverityNumber.ERROR
    assert event.severity_text == "ERROR"
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "handler failed"
    stacktrace = event.attributes["exception.stacktrace"]
    assert stacktrace.startswith("Traceback (most recent call last):")
    assert "in on_message" in stacktrace and stacktrace.rstrip().endswith("RuntimeError: handler failed")
    assert (event.trace_id, event.span_id) == (process.context.trace_id, process.context.span_id)


def test_a_logger_provider_alone_gets_exception_events(amqp_url, otel, name):
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), "a global provider leaked"
    client = connect(amqp_url, OpenTelemetryMiddleware(logger_provider=otel.logger_provider))
    try:
        with pytest.raises(puka.NoRoute):
            client.wait(client.basic_publish(exchange="", routing_key=name + "-missing", body=b"x", mandatory=True))
    finally:
        client.wait(client.close())
    [event] = otel.events()
    assert event.event_name == "messaging.send.exception"
    assert event.attributes["exception.type"] == "puka.spec.NoRoute"
    assert (event.trace_id, event.span_id) == (0, 0), "no span: no span context either"
    assert otel.spans() == []


GLOBAL_LOGGER_PROVIDER_SCRIPT = """
import sys
import puka
from opentelemetry import _logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from puka.tracing.otel import OpenTelemetryMiddleware

url, queue = sys.argv[1:]
client = puka.Client(url, middleware=[OpenTelemetryMiddleware(TracerProvider())])  # before the provider is set
client.wait(client.connect())
try:
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"x", mandatory=True))
except puka.NoRoute:
    pass
exporter = InMemoryLogRecordExporter()
provider = LoggerProvider()
provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
_logs.set_logger_provider(provider)
try:
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"x", mandatory=True))
except puka.NoRoute:
    pass
client.wait(client.close())
names = [r.log_record.event_name for r in exporter.get_finished_logs()]
assert names == ["messaging.send.exception"], names
"""


def test_the_global_logger_provider_is_the_default(amqp_url, name):
    # In a subprocess: the global logger provider can be set only once per process.
    subprocess.run(
        [sys.executable, "-c", GLOBAL_LOGGER_PROVIDER_SCRIPT, amqp_url, name + "-missing"],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
