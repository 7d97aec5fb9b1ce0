#!/usr/bin/env python
"""A producer and a consumer, two Clients, one trace: OpenTelemetry across a queue.

The producer publishes inside a ``checkout`` span; OpenTelemetryMiddleware injects the trace
context into the message headers (W3C ``traceparent``).  The consumer's middleware extracts it:
its ``process`` span continues the same trace, and the work done in the consumer's callback
(``handle order``) and the ack are children of that span.  Spans are printed by the SDK's
console exporter as they end; at the end the script checks that they all share one trace id.

Needs the OpenTelemetry SDK:  pip install 'puka[otel]'

    AMQP_URL=amqp://guest:guest@localhost/ python examples/traced_pair.py
"""

import importlib.util
import os
import sys

import puka


def _have_sdk() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ImportError:
        return False


def main() -> int:
    if not _have_sdk():
        print("traced_pair.py needs the OpenTelemetry SDK: pip install 'puka[otel]'", file=sys.stderr)
        return 1
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from puka.tracing import OpenTelemetryMiddleware

    url = os.environ.get("AMQP_URL") or "amqp:///"
    provider = TracerProvider(resource=Resource.create({"service.name": "puka-traced-pair"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    finished = InMemorySpanExporter()  # to check the result at the end
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("traced_pair")

    # In real life these are two processes; each has its own middleware.
    producer = puka.Client(url, middleware=[OpenTelemetryMiddleware(tracer_provider=provider)])
    consumer = puka.Client(url, middleware=[OpenTelemetryMiddleware(tracer_provider=provider)])
    producer.wait(producer.connect())
    consumer.wait(consumer.connect())
    queue = consumer.wait(consumer.queue_declare(queue="puka-example-traced-%d" % os.getpid(), exclusive=True))["queue"]

    with tracer.start_as_current_span("checkout") as checkout:
        producer.wait(producer.basic_publish(exchange="", routing_key=queue, body=b"order 42"))
    trace_id = checkout.get_span_context().trace_id

    def on_message(promise, message):
        # The middleware made the 'process' span current: this span is its child.
        with tracer.start_as_current_span("handle order"):
            print("consumer got %r (traceparent %s)" % (message["body"], message["headers"].get("traceparent")))
        consumer.basic_ack(message)
        consumer.loop_break()

    consume = consumer.basic_consume(queue=queue, callback=on_message)
    consumer.loop(timeout=30)
    consumer.wait(consumer.basic_cancel(consume))
    consumer.wait(consumer.close())
    producer.wait(producer.close())
    provider.shutdown()

    spans = finished.get_finished_spans()
    names = sorted(span.name for span in spans)
    print("spans: %s" % ", ".join(names))
    traces = {span.context.trace_id for span in spans}
    if traces != {trace_id} or not any(span.name.startswith("process ") for span in spans):
        print("expected one trace with a process span, got %d traces" % len(traces), file=sys.stderr)
        return 1
    print("one trace: %032x (%d spans)" % (trace_id, len(spans)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
