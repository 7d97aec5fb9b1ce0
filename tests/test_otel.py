"""OpenTelemetryMiddleware and PukaInstrumentor against a real RabbitMQ.

Every test gets its own SDK TracerProvider (SimpleSpanProcessor into an InMemorySpanExporter)
and MeterProvider (InMemoryMetricReader), passed explicitly: no global OpenTelemetry state is
set, so nothing leaks from one test to the next.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import puka

try:
    from opentelemetry import baggage, context, trace
    from opentelemetry.instrumentation.utils import suppress_instrumentation
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # the test extra brings the otel extra: a missing SDK is a broken set-up, not a skip
    raise ImportError(
        "tests/test_otel.py needs OpenTelemetry's API, SDK and instrumentation packages: "
        "pip install -e '.[test]' (or '.[otel]')"
    ) from exc

from puka.tracing.otel import DURATION_BUCKETS, SCHEMA_URL, OpenTelemetryMiddleware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Telemetry:
    """One test's providers, exporter and reader, and helpers to read what they got."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("tests")

    def middleware(self, **options) -> OpenTelemetryMiddleware:
        return OpenTelemetryMiddleware(self.tracer_provider, self.meter_provider, **options)

    def spans(self, name_prefix: str | None = None) -> list:
        spans = list(self.exporter.get_finished_spans())
        if name_prefix is not None:
            spans = [s for s in spans if s.name.startswith(name_prefix)]
        return spans

    def span(self, name: str):
        matching = [s for s in self.exporter.get_finished_spans() if s.name == name]
        assert len(matching) == 1, "expected one span %r, got %r" % (name, [s.name for s in self.spans()])
        return matching[0]

    def metrics(self) -> dict:
        found = {}
        data = self.reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                if scope_metrics.scope.name != "puka.tracing.otel":
                    continue
                assert scope_metrics.scope.schema_url == SCHEMA_URL
                for metric in scope_metrics.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name: str) -> list:
        metric = self.metrics().get(name)
        return list(metric.data.data_points) if metric is not None else []

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel():
    telemetry = Telemetry()
    yield telemetry
    telemetry.shutdown()


def connect(amqp_url, *middleware, **kwargs):
    client = puka.Client(amqp_url, middleware=list(middleware), **kwargs)
    client.wait(client.connect(), timeout=10)
    return client


@pytest.fixture
def traced(amqp_url, otel):
    """A connected client with an OpenTelemetryMiddleware reporting to ``otel`` (body sizes opted in)."""
    client = connect(amqp_url, otel.middleware(record_body_size=True))
    yield client
    client.wait(client.close(), timeout=10)  # a no-op when the test broke or closed the connection


@pytest.fixture
def tqueue(amqp_url, traced, name):
    traced.wait(traced.queue_declare(queue=name))
    yield name
    try:
        traced.wait(traced.queue_delete(queue=name), raise_errors=False)
    except puka.ConnectionBroken:  # the test ended that connection: delete the queue with another
        with puka.Client(amqp_url) as other:
            other.wait(other.queue_delete(queue=name), raise_errors=False)


def parse_traceparent(value):
    if isinstance(value, bytes):
        value = value.decode()
    version, trace_id, span_id, flags = value.split("-")
    return int(trace_id, 16), int(span_id, 16)


def consume_one(client, queue, **kwargs):
    consume = client.basic_consume(queue=queue, **kwargs)
    message = client.wait(consume, timeout=10)
    assert message is not None, "no message arrived"
    return consume, message


# --- import hygiene ---------------------------------------------------------------------------------


def test_importing_puka_never_imports_opentelemetry():
    code = (
        "import puka, puka.tracing, sys\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "from puka.tracing import OpenTelemetryMiddleware\n"
        "assert 'opentelemetry.instrumentation' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_instrumentor_without_opentelemetry_instrumentation_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['opentelemetry.instrumentation'] = None\n"
        "sys.modules['opentelemetry.instrumentation.instrumentor'] = None\n"
        "from puka.tracing.otel import OpenTelemetryMiddleware\n"
        "OpenTelemetryMiddleware()\n"
        "try:\n"
        "    from puka.tracing import PukaInstrumentor\n"
        "except ImportError as exc:\n"
        "    assert 'puka[otel]' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="process_parent"):
        OpenTelemetryMiddleware(process_parent="sometimes")
    with pytest.raises(TypeError, match="capture_headers"):
        OpenTelemetryMiddleware(capture_headers="x-tenant")


# --- publish -------------------------------------------------------------------------------------------


def test_publish_span_attributes_and_injected_context(otel, traced, tqueue):
    headers = {"message_id": "m-1", "correlation_id": "conv-9", "x-origin": "test"}
    before = dict(headers)
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"hello", headers=headers))
    assert headers == before, "the caller's headers dict was modified"

    span = otel.span("publish %s" % tqueue)
    assert span.kind is SpanKind.PRODUCER
    assert span.parent is None
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope.schema_url == SCHEMA_URL
    assert dict(span.attributes) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": tqueue,
        "messaging.rabbitmq.destination.routing_key": tqueue,
        "messaging.message.id": "m-1",
        "messaging.message.conversation_id": "conv-9",
        "messaging.message.body.size": 5,
        "server.address": traced.params.host,
        "server.port": traced.params.port,
        "network.peer.address": traced.socket().getpeername()[0],
        "network.peer.port": traced.socket().getpeername()[1],
    }
    # The span covers the confirm: it ended, and the message carries its context.
    message = traced.wait(traced.basic_get(queue=tqueue, no_ack=True))
    assert parse_traceparent(message["headers"]["traceparent"]) == (span.context.trace_id, span.context.span_id)
    assert message["headers"]["x-origin"] == "test"


@pytest.mark.parametrize(
    "exchange, routing_key, expected",
    [
        ("EX", "rk.1", "EX:rk.1"),
        ("EX", "", "EX"),
        ("", "", "amq.default"),
    ],
)
def test_publish_destination_names(otel, traced, name, exchange, routing_key, expected):
    exchange = exchange.replace("EX", name)
    expected = expected.replace("EX", name)
    if exchange:
        traced.wait(traced.exchange_declare(exchange=exchange, type="fanout", auto_delete=False))
    try:
        traced.wait(traced.basic_publish(exchange=exchange, routing_key=routing_key, body=b"x"))
    finally:
        if exchange:
            traced.wait(traced.exchange_delete(exchange=exchange))
    span = otel.span("publish %s" % expected)
    assert span.attributes["messaging.destination.name"] == expected
    assert span.attributes.get("messaging.rabbitmq.destination.routing_key") == (routing_key or None)
    assert "messaging.destination.anonymous" not in span.attributes


def test_publish_span_is_a_child_of_the_active_span(otel, traced, tqueue):
    with otel.tracer.start_as_current_span("job") as job:
        traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
    span = otel.span("publish %s" % tqueue)
    assert span.parent.span_id == job.get_span_context().span_id
    assert span.context.trace_id == job.get_span_context().trace_id


def test_no_route_sets_error_status_and_error_type(otel, traced, name):
    missing = name + "-missing"
    with pytest.raises(puka.NoRoute):
        traced.wait(traced.basic_publish(exchange="", routing_key=missing, body=b"x", mandatory=True))
    span = otel.span("publish %s" % missing)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "NoRoute"
    sent = otel.points("messaging.client.sent.messages")
    assert [dict(p.attributes).get("error.type") for p in sent] == ["NoRoute"]
    durations = otel.points("messaging.client.operation.duration")
    assert [dict(p.attributes).get("error.type") for p in durations] == ["NoRoute"]


def test_missing_exchange_is_not_found(otel, traced, name):
    exchange = name + "-nx"
    with pytest.raises(puka.NotFound):
        traced.wait(traced.basic_publish(exchange=exchange, routing_key="k", body=b"x"))
    span = otel.span("publish %s:k" % exchange)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "NotFound"
    assert "404" in span.status.description


def test_nacked_publish_is_publish_nacked(otel, traced, name):
    arguments = {"x-max-length": 0, "x-overflow": "reject-publish"}
    traced.wait(traced.queue_declare(queue=name, exclusive=True, arguments=arguments))
    with pytest.raises(puka.PublishNacked):
        traced.wait(traced.basic_publish(exchange="", routing_key=name, body=b"x"))
    span = otel.span("publish %s" % name)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "PublishNacked"


def test_broken_connection_ends_publish_spans_in_flight(proxy, otel, name):
    client = connect(proxy.url, otel.middleware(), recovery=False)  # fail-fast: the cut fails the publishes
    client.wait(client.queue_declare(queue=name, exclusive=True))
    promises = [client.basic_publish(exchange="", routing_key=name, body=b"x") for _ in range(3)]
    proxy.cut()  # before anything is read (or even written): the broker cannot have confirmed them
    for promise in promises:
        with pytest.raises(puka.ConnectionBroken):
            client.wait(promise)
    spans = otel.spans("publish")
    assert len(spans) == 3
    assert {span.attributes["error.type"] for span in spans} == {"ConnectionBroken"}
    sent = otel.points("messaging.client.sent.messages")
    assert [(dict(p.attributes)["error.type"], p.value) for p in sent] == [("ConnectionBroken", 3)]


def test_bad_publish_arguments_end_the_span_with_the_error(otel, traced, tqueue):
    with pytest.raises(ValueError):
        traced.basic_publish(exchange="", routing_key=tqueue, body=b"x", headers={"delivery_mode": 7})
    span = otel.span("publish %s" % tqueue)
    assert span.attributes["error.type"] == "ValueError"


def test_caller_supplied_traceparent_is_kept_and_linked(otel, traced, tqueue):
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"traceparent": theirs}
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x", headers=headers))
    assert headers == {"traceparent": theirs}
    message = traced.wait(traced.basic_get(queue=tqueue, no_ack=True))
    assert message["headers"]["traceparent"] == theirs
    span = otel.span("publish %s" % tqueue)
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [parse_traceparent(theirs)]
    assert span.context.trace_id != parse_traceparent(theirs)[0]  # the publish span stays in the ambient trace


def test_a_custom_propagator_replaces_the_global_one(amqp_url, otel, name):
    client = connect(amqp_url, otel.middleware(propagator=TraceContextTextMapPropagator()))
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True))
        ctx = baggage.set_baggage("tenant", "acme")
        token = context.attach(ctx)
        try:
            client.wait(client.basic_publish(exchange="", routing_key=name, body=b"x"))
        finally:
            context.detach(token)
        message = client.wait(client.basic_get(queue=name, no_ack=True))
        assert "traceparent" in message["headers"]
        assert "baggage" not in message["headers"]  # the global propagator would have added it
    finally:
        client.wait(client.queue_delete(queue=name), raise_errors=False)
        client.wait(client.close())


# --- consume: process spans ------------------------------------------------------------------------------


def test_producer_and_consumer_clients_join_in_one_trace(amqp_url, otel, name):
    producer = connect(amqp_url, otel.middleware(record_body_size=True))
    consumer = connect(amqp_url, otel.middleware(record_body_size=True))
    try:
        consumer.wait(consumer.queue_declare(queue=name, exclusive=True))
        consume = consumer.basic_consume(queue=name)
        producer.wait(producer.basic_publish(exchange="", routing_key=name, body=b"job", headers={"message_id": "7"}))
        message = consumer.wait(consume, timeout=10)
        consumer.basic_ack(message)
        consumer.wait(consumer.basic_cancel(consume))
    finally:
        producer.wait(producer.close())
        consumer.wait(consumer.close())
    publish = otel.span("publish %s" % name)
    process = otel.span("process %s" % name)
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent.span_id == publish.context.span_id
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]
    attributes = dict(process.attributes)
    assert attributes["messaging.operation.name"] == "process"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == name  # default exchange, routing key == queue
    assert attributes["messaging.rabbitmq.message.delivery_tag"] == message["delivery_tag"]
    assert attributes["messaging.message.id"] == "7"
    assert attributes["messaging.message.body.size"] == 3
    assert "messaging.consumer.group.name" not in attributes  # RabbitMQ has no consumer groups


def test_consumer_destination_is_exchange_routing_key_queue(otel, traced, name):
    exchange = name + "-ex"
    traced.wait(traced.exchange_declare(exchange=exchange, type="topic", auto_delete=True))
    traced.wait(traced.queue_declare(queue=name, exclusive=True))
    traced.wait(traced.queue_bind(queue=name, exchange=exchange, routing_key="orders.#"))
    traced.wait(traced.basic_publish(exchange=exchange, routing_key="orders.eu", body=b"x"))
    consume, message = consume_one(traced, name)
    traced.basic_ack(message)
    traced.wait(traced.basic_cancel(consume))
    process = otel.span("process %s:orders.eu:%s" % (exchange, name))
    assert process.attributes["messaging.destination.name"] == "%s:orders.eu:%s" % (exchange, name)
    assert process.attributes["messaging.rabbitmq.destination.routing_key"] == "orders.eu"
    # Metrics never carry the routing key.
    for point in otel.points("messaging.client.consumed.messages"):
        attributes = dict(point.attributes)
        assert attributes["messaging.destination.template"] == "%s:{routing_key}:%s" % (exchange, name)
        assert "messaging.destination.name" not in attributes
        assert "orders.eu" not in repr(attributes)


def test_wait_style_process_span_ends_at_the_ack(otel, traced, tqueue):
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
    consume, message = consume_one(traced, tqueue)
    assert otel.spans("process") == [], "the process span must last until the message is settled"
    traced.basic_ack(message)
    process = otel.span("process %s" % tqueue)
    ack = otel.span("ack %s" % tqueue)
    assert ack.kind is SpanKind.CLIENT
    assert ack.parent.span_id == process.context.span_id
    assert ack.attributes["messaging.operation.type"] == "settle"
    assert ack.attributes["messaging.operation.name"] == "ack"
    assert ack.attributes["messaging.rabbitmq.message.delivery_tag"] == message["delivery_tag"]
    assert ack.end_time <= process.end_time
    traced.wait(traced.basic_cancel(consume))


def test_nack_and_reject_make_settle_spans(otel, traced, tqueue):
    for _ in range(2):
        traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
    consume = traced.basic_consume(queue=tqueue, prefetch_count=2)
    first = traced.wait(consume, timeout=10)
    second = traced.wait(consume, timeout=10)
    traced.basic_nack(first, requeue=False)
    traced.basic_reject(second, requeue=False)
    traced.wait(traced.basic_cancel(consume))
    assert otel.span("nack %s" % tqueue).attributes["messaging.operation.name"] == "nack"
    assert otel.span("reject %s" % tqueue).attributes["messaging.operation.name"] == "reject"
    assert len(otel.spans("process")) == 2
    settles = [dict(p.attributes) for p in otel.points("messaging.client.operation.duration")]
    assert {a["messaging.operation.name"] for a in settles if a["messaging.operation.type"] == "settle"} == {
        "nack",
        "reject",
    }


def test_ack_multiple_settles_and_ends_every_message(otel, traced, tqueue):
    for _ in range(3):
        traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
    consume = traced.basic_consume(queue=tqueue, prefetch_count=3)
    messages = [traced.wait(consume, timeout=10) for _ in range(3)]
    traced.basic_ack(messages[-1], multiple=True)
    traced.wait(traced.basic_cancel(consume))
    assert len(otel.spans("process")) == 3
    assert len(otel.spans("ack")) == 3


def test_wait_style_no_ack_ends_at_next_delivery_and_at_close(amqp_url, otel, name):
    client = connect(amqp_url, otel.middleware(record_body_size=True))
    client.wait(client.queue_declare(queue=name, exclusive=True))
    for body in (b"1", b"2"):
        client.wait(client.basic_publish(exchange="", routing_key=name, body=body))
    consume = client.basic_consume(queue=name, no_ack=True)
    client.wait(consume, timeout=10)
    assert otel.spans("process") == []
    client.wait(consume, timeout=10)
    assert len(otel.spans("process")) == 1, "the next delivery ends the previous no_ack message's span"
    client.wait(client.close())
    processes = otel.spans("process")
    assert len(processes) == 2
    assert [p.attributes["messaging.message.body.size"] for p in processes] == [1, 1]
    assert len(otel.points("messaging.process.duration")) == 1
    assert otel.points("messaging.process.duration")[0].count == 2


def test_close_ends_unsettled_process_spans(amqp_url, otel, name):
    client = connect(amqp_url, otel.middleware())
    client.wait(client.queue_declare(queue=name))
    try:
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"x"))
        consume_one(client, name)
        assert otel.spans("process") == []
        client.wait(client.close())
        assert len(otel.spans("process")) == 1
    finally:
        cleanup = connect(amqp_url)
        cleanup.wait(cleanup.queue_delete(queue=name), raise_errors=False)
        cleanup.wait(cleanup.close())


def test_callback_style_span_is_current_inside_the_callback(otel, traced, tqueue):
    seen = {}

    def on_message(promise, message):
        span = trace.get_current_span()
        seen["span_id"] = span.get_span_context().span_id
        seen["recording"] = span.is_recording()
        with otel.tracer.start_as_current_span("work"):
            pass
        traced.basic_ack(message)
        traced.loop_break()

    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
    consume = traced.basic_consume(queue=tqueue, callback=on_message)
    traced.loop(timeout=10)
    traced.wait(traced.basic_cancel(consume))
    process = otel.span("process %s" % tqueue)
    assert seen == {"span_id": process.context.span_id, "recording": True}
    assert otel.span("work").parent.span_id == process.context.span_id
    assert otel.span("ack %s" % tqueue).parent.span_id == process.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN, "the process span's context leaked out of the callback"
    assert otel.points("messaging.process.duration")[0].count == 1


def test_a_callback_that_raises_marks_the_process_span(otel, traced, tqueue):
    def on_message(promise, message):
        raise RuntimeError("handler failed")

    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
    consume = traced.basic_consume(queue=tqueue, no_ack=True, callback=on_message)
    with pytest.raises(RuntimeError, match="handler failed"):
        traced.loop(timeout=10)
    process = otel.span("process %s" % tqueue)
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes["error.type"] == "RuntimeError"
    assert [dict(p.attributes).get("error.type") for p in otel.points("messaging.process.duration")] == ["RuntimeError"]
    assert trace.get_current_span() is trace.INVALID_SPAN
    traced.wait(traced.basic_cancel(consume))


def test_process_span_under_an_active_span_keeps_it_as_parent(otel, traced, tqueue):
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
    with otel.tracer.start_as_current_span("poller") as poller:
        consume, message = consume_one(traced, tqueue)
        traced.basic_ack(message)
    traced.wait(traced.basic_cancel(consume))
    publish = otel.span("publish %s" % tqueue)
    process = otel.span("process %s" % tqueue)
    assert process.parent.span_id == poller.get_span_context().span_id
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]


@pytest.mark.parametrize("mode", ["ambient", "creation-always"])
def test_process_parent_options(amqp_url, otel, name, mode):
    client = connect(amqp_url, otel.middleware(process_parent=mode))
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True))
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"x"))
        with otel.tracer.start_as_current_span("poller") as poller:
            consume, message = consume_one(client, name, no_ack=True)
        client.wait(client.basic_cancel(consume))
    finally:
        client.wait(client.close())
    publish = otel.span("publish %s" % name)
    process = otel.span("process %s" % name)
    links = [link.context.span_id for link in process.links]
    if mode == "ambient":
        assert process.parent.span_id == poller.get_span_context().span_id
        assert links == [publish.context.span_id]
    else:
        assert process.parent.span_id == publish.context.span_id
        assert links == [publish.context.span_id, poller.get_span_context().span_id]


def test_ambient_mode_without_active_span_starts_a_new_trace(amqp_url, otel, name):
    client = connect(amqp_url, otel.middleware(process_parent="ambient"))
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True))
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"x"))
        consume, message = consume_one(client, name, no_ack=True)
        client.wait(client.basic_cancel(consume))
    finally:
        client.wait(client.close())
    publish = otel.span("publish %s" % name)
    process = otel.span("process %s" % name)
    assert process.parent is None
    assert process.context.trace_id != publish.context.trace_id
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        "00-00000000000000000000000000000000-0000000000000000-01",
        b"\xff\xfe not ascii",
        12345,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    ],
)
def test_malformed_traceparent_in_a_message_gives_no_link_and_no_crash(amqp_url, otel, client, queue, traceparent):
    # ``client`` has no middleware: the malformed header goes out as it is.
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"x", headers={"traceparent": traceparent}))
    traced = connect(amqp_url, otel.middleware())
    try:
        consume, message = consume_one(traced, queue)
        traced.basic_ack(message)
        traced.wait(traced.basic_cancel(consume))
    finally:
        traced.wait(traced.close())
    process = otel.span("process %s" % queue)
    assert list(process.links) == []
    assert process.parent is None


def test_traceparent_as_bytes_is_understood(amqp_url, otel, client, queue):
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"x", headers={"traceparent": traceparent}))
    traced = connect(amqp_url, otel.middleware())
    try:
        consume, message = consume_one(traced, queue, no_ack=True)
        traced.wait(traced.basic_cancel(consume))
    finally:
        traced.wait(traced.close())
    process = otel.span("process %s" % queue)
    assert [(link.context.trace_id, link.context.span_id) for link in process.links] == [parse_traceparent(traceparent)]
    assert process.context.trace_id == parse_traceparent(traceparent)[0]


# --- basic.get -------------------------------------------------------------------------------------------


def test_get_makes_a_receive_span_linked_to_the_message(otel, traced, tqueue):
    traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"abc", headers={"message_id": "g1"}))
    message = traced.wait(traced.basic_get(queue=tqueue))
    traced.basic_ack(message)
    empty = traced.wait(traced.basic_get(queue=tqueue))
    assert empty["empty"] is True

    publish = otel.span("publish %s" % tqueue)
    receives = otel.spans("receive %s" % tqueue)
    assert len(receives) == 2
    got, nothing = receives
    assert got.kind is SpanKind.CLIENT
    assert got.attributes["messaging.operation.type"] == "receive"
    assert got.attributes["messaging.operation.name"] == "receive"
    assert got.attributes["messaging.destination.name"] == tqueue
    assert got.attributes["messaging.message.id"] == "g1"
    assert got.attributes["messaging.message.body.size"] == 3
    assert got.attributes["messaging.rabbitmq.message.delivery_tag"] == message["delivery_tag"]
    assert [link.context.span_id for link in got.links] == [publish.context.span_id]
    assert list(nothing.links) == []
    assert nothing.status.status_code is StatusCode.UNSET
    assert otel.spans("process") == [], "basic_get messages are covered by their receive span"
    ack = otel.span("ack %s" % tqueue)
    assert [link.context.span_id for link in ack.links] == [publish.context.span_id]
    consumed = otel.points("messaging.client.consumed.messages")
    assert [(dict(p.attributes)["messaging.operation.name"], p.value) for p in consumed] == [("receive", 1)]


def test_get_from_a_missing_queue_is_an_error(otel, traced, name):
    missing = name + "-missing"
    with pytest.raises(puka.NotFound):
        traced.wait(traced.basic_get(queue=missing))
    span = otel.span("receive %s" % missing)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "NotFound"


# --- metrics ---------------------------------------------------------------------------------------------


def test_metrics_names_units_buckets_and_attributes(otel, traced, tqueue):
    for _ in range(3):
        traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
    consume = traced.basic_consume(queue=tqueue, prefetch_count=3)
    for _ in range(3):
        traced.basic_ack(traced.wait(consume, timeout=10))
    traced.wait(traced.basic_cancel(consume))

    metrics = otel.metrics()
    assert set(metrics) == {
        "messaging.client.operation.duration",
        "messaging.process.duration",
        "messaging.client.sent.messages",
        "messaging.client.consumed.messages",
    }
    assert metrics["messaging.client.operation.duration"].unit == "s"
    assert metrics["messaging.process.duration"].unit == "s"
    assert metrics["messaging.client.sent.messages"].unit == "{message}"
    assert metrics["messaging.client.consumed.messages"].unit == "{message}"
    server = {"server.address": traced.params.host, "server.port": traced.params.port}
    common = {"messaging.system": "rabbitmq", "messaging.destination.name": tqueue, **server}

    durations = {
        dict(p.attributes)["messaging.operation.name"]: p for p in otel.points("messaging.client.operation.duration")
    }
    assert set(durations) == {"publish", "ack"}
    assert dict(durations["publish"].attributes) == {
        **common,
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
    }
    assert dict(durations["ack"].attributes) == {
        **common,
        "messaging.operation.name": "ack",
        "messaging.operation.type": "settle",
    }
    assert durations["publish"].count == 3
    assert list(durations["publish"].explicit_bounds) == list(DURATION_BUCKETS)
    (process,) = otel.points("messaging.process.duration")
    assert dict(process.attributes) == {**common, "messaging.operation.name": "process"}
    assert process.count == 3
    assert list(process.explicit_bounds) == list(DURATION_BUCKETS)
    (sent,) = otel.points("messaging.client.sent.messages")
    assert dict(sent.attributes) == {**common, "messaging.operation.name": "publish"}
    assert sent.value == 3
    (consumed,) = otel.points("messaging.client.consumed.messages")
    assert dict(consumed.attributes) == {**common, "messaging.operation.name": "process"}
    assert consumed.value == 3

    # The publish span and its duration measurement agree.
    publish_spans = otel.spans("publish")
    total = sum((s.end_time - s.start_time) for s in publish_spans) / 1e9
    assert durations["publish"].sum == pytest.approx(total, rel=1e-6, abs=1e-9)


def test_anonymous_queues_stay_out_of_span_names_and_metrics(otel, traced):
    queue = traced.wait(traced.queue_declare(queue="", exclusive=True))["queue"]
    assert queue.startswith("amq.gen-")
    traced.wait(traced.basic_publish(exchange="", routing_key=queue, body=b"x"))
    consume, message = consume_one(traced, queue)
    traced.basic_ack(message)
    traced.wait(traced.basic_cancel(consume))

    names = {s.name for s in otel.spans()}
    assert names == {"publish (anonymous)", "process (anonymous)", "ack (anonymous)"}
    for span in otel.spans():
        assert span.attributes["messaging.destination.anonymous"] is True
        assert span.attributes["messaging.destination.template"] == "(anonymous)"
        assert span.attributes["messaging.destination.name"] == queue
    for metric_name in otel.metrics():
        for point in otel.points(metric_name):
            attributes = dict(point.attributes)
            assert queue not in repr(attributes)
            assert attributes["messaging.destination.template"] == "(anonymous)"


# --- hooks, header capture, suppression, no SDK ---------------------------------------------------------


def test_hooks_see_the_span_and_the_operation(amqp_url, otel, name):
    calls = []

    def publish_hook(span, publish):
        calls.append(("publish", span.name, publish.routing_key))
        span.set_attribute("app.tenant", "acme")

    def consume_hook(span, delivery):
        calls.append(("consume", span.name, delivery.message["body"], delivery.queue))

    def settle_hook(span, delivery):
        calls.append(("settle", span.name, delivery.message["delivery_tag"]))
        raise RuntimeError("a broken hook must not break messaging")

    client = connect(
        amqp_url, otel.middleware(publish_hook=publish_hook, consume_hook=consume_hook, settle_hook=settle_hook)
    )
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True))
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"payload"))
        consume, message = consume_one(client, name)
        client.basic_ack(message)
        client.wait(client.basic_cancel(consume))
    finally:
        client.wait(client.close())
    assert calls == [
        ("publish", "publish %s" % name, name),
        ("consume", "process %s" % name, b"payload", name),
        ("settle", "ack %s" % name, message["delivery_tag"]),
    ]
    assert otel.span("publish %s" % name).attributes["app.tenant"] == "acme"
    assert len(otel.spans("ack")) == 1


def test_capture_headers_records_chosen_headers(amqp_url, otel, name):
    client = connect(amqp_url, otel.middleware(capture_headers=["x-tenant", "x-count", "x-raw", "x-absent"]))
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True))
        headers = {"x-tenant": "acme", "x-count": 3, "x-raw": b"bytes", "x-secret": "hide me"}
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"x", headers=headers))
        consume, message = consume_one(client, name, no_ack=True)
        client.wait(client.basic_cancel(consume))
    finally:
        client.wait(client.close())
    for span in (otel.span("publish %s" % name), otel.span("process %s" % name)):
        captured = {k: v for k, v in span.attributes.items() if k.startswith("messaging.header.")}
        assert captured == {
            "messaging.header.x-tenant": "acme",
            "messaging.header.x-count": 3,
            "messaging.header.x-raw": "bytes",
        }


def test_suppressed_instrumentation_makes_no_span_but_still_propagates(otel, traced, tqueue):
    with otel.tracer.start_as_current_span("outer") as outer:
        with suppress_instrumentation():
            traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
            message = traced.wait(traced.basic_get(queue=tqueue, no_ack=True))
    assert [s.name for s in otel.spans()] == ["outer"]
    assert otel.metrics() == {}
    context_ = outer.get_span_context()
    assert parse_traceparent(message["headers"]["traceparent"]) == (context_.trace_id, context_.span_id)


def test_without_an_sdk_nothing_is_recorded_and_the_active_context_still_propagates(amqp_url, name):
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), "a global provider leaked"
    middleware = OpenTelemetryMiddleware()
    client = connect(amqp_url, middleware)
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True))
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"1"))
        remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        with trace.use_span(NonRecordingSpan(remote)):
            client.wait(client.basic_publish(exchange="", routing_key=name, body=b"2"))
        consume = client.basic_consume(queue=name)
        first = client.wait(consume, timeout=10)
        second = client.wait(consume, timeout=10)
        client.basic_ack(second, multiple=True)
        client.wait(client.basic_cancel(consume))
    finally:
        client.wait(client.close())
    assert "traceparent" not in first["headers"]
    assert parse_traceparent(second["headers"]["traceparent"]) == (0x1234, 0x5678)


GLOBAL_PROVIDERS_SCRIPT = """
import sys
import puka
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from puka.tracing.otel import OpenTelemetryMiddleware

url, queue = sys.argv[1:]
client = puka.Client(url, middleware=[OpenTelemetryMiddleware()])  # before any provider is set
client.wait(client.connect())
client.wait(client.queue_declare(queue=queue, exclusive=True))
client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"before"))
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"after"))
client.wait(client.close())
assert [s.name for s in exporter.get_finished_spans()] == ["publish " + queue], exporter.get_finished_spans()
names = {m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
assert "messaging.client.sent.messages" in names, names
"""


def test_global_providers_set_later_are_used(amqp_url, name):
    # In a subprocess: global providers can be set only once per process.
    subprocess.run([sys.executable, "-c", GLOBAL_PROVIDERS_SCRIPT, amqp_url, name], cwd=ROOT, check=True, timeout=60)


def test_global_propagator_is_used_by_default(otel, traced, tqueue):
    propagator = CompositePropagator([TraceContextTextMapPropagator()])
    from opentelemetry import propagate

    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(propagator)
    try:
        token = context.attach(baggage.set_baggage("k", "v"))
        try:
            traced.wait(traced.basic_publish(exchange="", routing_key=tqueue, body=b"x"))
        finally:
            context.detach(token)
    finally:
        propagate.set_global_textmap(previous)
    message = traced.wait(traced.basic_get(queue=tqueue, no_ack=True))
    assert "traceparent" in message["headers"] and "baggage" not in message["headers"]


# --- the instrumentor ------------------------------------------------------------------------------------


@pytest.fixture
def instrumentor():
    from puka.tracing.otel import PukaInstrumentor

    instrumentor = PukaInstrumentor()
    original = puka.Client.__init__
    yield instrumentor
    instrumentor.uninstrument()
    assert puka.Client.__init__ is original


def test_instrumentor_traces_every_client_once(amqp_url, otel, instrumentor, name):
    from puka.tracing import PukaInstrumentor

    assert PukaInstrumentor is type(instrumentor)
    assert instrumentor.instrumentation_dependencies() == ("puka >= 0.1",)
    assert puka.Client(amqp_url).middleware == []
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, skip_dep_check=True
    )
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, skip_dep_check=True
    )
    PukaInstrumentor().instrument(tracer_provider=otel.tracer_provider, skip_dep_check=True)

    plain = puka.Client(amqp_url)
    explicit = puka.Client(amqp_url, middleware=[otel.middleware()])
    assert sum(isinstance(m, OpenTelemetryMiddleware) for m in plain.middleware) == 1
    assert sum(isinstance(m, OpenTelemetryMiddleware) for m in explicit.middleware) == 1
    plain.wait(plain.connect(), timeout=10)
    try:
        plain.wait(plain.queue_declare(queue=name, exclusive=True))
        plain.wait(plain.basic_publish(exchange="", routing_key=name, body=b"x"))
    finally:
        plain.wait(plain.close())
    assert len(otel.spans("publish")) == 1

    instrumentor.uninstrument()
    assert puka.Client(amqp_url).middleware == []


def test_instrumentor_passes_middleware_options(amqp_url, otel, instrumentor, name):
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        capture_headers=["x-tenant"],
        skip_dep_check=True,
    )
    client = puka.Client(amqp_url, None, {"connection_name": "positional-args"})
    assert client.client_properties == {"connection_name": "positional-args"}
    client.wait(client.connect(), timeout=10)
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True))
        client.wait(client.basic_publish(exchange="", routing_key=name, body=b"x", headers={"x-tenant": "t1"}))
    finally:
        client.wait(client.close())
    assert otel.span("publish %s" % name).attributes["messaging.header.x-tenant"] == "t1"
