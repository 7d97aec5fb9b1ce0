#!/usr/bin/env python
"""A service: takes requests from a queue, answers RPCs, publishes results, stops cleanly on SIGTERM.

Each request is a message on the requests queue.  A request with ``reply_to`` is an RPC:
the answer goes back with ``rpc_reply``.  Any other request's result is published
(persistent, confirmed) to the results queue.  A request is acknowledged only once the
broker has confirmed its answer or result, so a crash at any point loses nothing: what
was not acknowledged is redelivered.

On SIGTERM the service stops taking requests and ``client.shutdown()`` finishes the
work in hand: held requests are answered and acknowledged, publishes confirmed, then the
connection is closed.  What the deadline cuts short is redelivered by the broker.

Everything is traced with OpenTelemetry (needs ``pip install 'puka[otel]'``): the broker
carries the trace context, so a ``process`` span continues the caller's trace, and the
``work`` and the result's ``publish`` are its children.  Spans go to the console, one
JSON object per line on stdout, or to an OTLP collector when ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set and ``opentelemetry-exporter-otlp-proto-http`` is installed.  Logs go to stderr.

    AMQP_URL=amqp://guest:guest@localhost/ python examples/service.py [REQUESTS [RESULTS]]

``SERVICE_WORK_SECONDS`` makes each request take that long (a stand-in for real work);
``SERVICE_SHUTDOWN_TIMEOUT`` (default 30) bounds the graceful stop.
"""

import importlib.util
import logging
import os
import signal
import sys
import time

import puka

log = logging.getLogger("service")


def make_tracer_provider():
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    try:  # pip install opentelemetry-exporter-otlp-proto-http
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        OTLPSpanExporter = None
    provider = TracerProvider(resource=Resource.create({"service.name": "puka-example-service"}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and OTLPSpanExporter is not None:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads the OTEL_* variables
        log.info("spans go to %s", os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    else:
        console = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(console))
    return provider


class Service:
    def __init__(self, url, requests, results, tracer_provider):
        from puka.tracing import OpenTelemetryMiddleware

        self.requests, self.results = requests, results
        self.tracer = tracer_provider.get_tracer("puka-example-service")
        self.work_seconds = float(os.environ.get("SERVICE_WORK_SECONDS") or 0)
        self.stopping = False
        self.client = puka.Client(url, middleware=[OpenTelemetryMiddleware(tracer_provider=tracer_provider)])

    def start(self):
        client = self.client
        client.wait(client.connect())
        client.wait(client.queue_declare(queue=self.requests, durable=True))
        client.wait(client.queue_declare(queue=self.results, durable=True))
        client.basic_consume(queue=self.requests, prefetch_count=10, callback=self.on_request)

    def work(self, body):
        with self.tracer.start_as_current_span("work"):
            time.sleep(self.work_seconds)
            return body.upper()

    def on_request(self, _promise, request):
        if request.is_error:  # the consume ended (queue deleted...): stop
            log.error("consume ended: %s", request.exception)
            self.stopping = True
            return
        client = self.client
        answer = self.work(request["body"])
        headers = {"request-id": request["headers"].get("message_id")}

        def answered(_number, result):
            if result.is_error:  # not confirmed: give the request back for another try
                log.warning("answer not confirmed (%s): requeueing the request", result.exception)
                client.basic_reject(request, requeue=True)
            else:
                client.basic_ack(request)

        if request["headers"].get("reply_to"):
            client.rpc_reply(request, answer, headers, callback=answered)
        else:
            headers["delivery_mode"] = 2
            client.basic_publish("", self.results, answer, headers, callback=answered)

    def run(self):
        while not self.stopping:
            self.client.loop(timeout=0.5)  # returns now and then to look at self.stopping

    def stop(self, *_signal):
        self.stopping = True
        self.client.loop_break()


def main(requests="puka-example-service-requests", results="puka-example-service-results"):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        print("service.py needs the OpenTelemetry SDK: pip install 'puka[otel]'", file=sys.stderr)
        return 1
    url = os.environ.get("AMQP_URL") or "amqp:///"
    provider = make_tracer_provider()
    service = Service(url, requests, results, provider)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    service.start()
    log.info("ready: consuming %s", requests)
    service.run()
    log.info("stopping")
    left = service.client.shutdown(timeout=float(os.environ.get("SERVICE_SHUTDOWN_TIMEOUT") or 30))
    log.info("stopped: %r", left)  # {'unsettled': 0, 'pending': 0}: nothing was cut short
    provider.shutdown()  # the last spans are exported
    return 0 if left == {"unsettled": 0, "pending": 0} else 2


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
