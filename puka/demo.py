"""A short tour of puka against a broker: ``python -m puka.demo [--url URL] [--trace]``.

Connects, declares a queue, publishes a few messages with broker confirms,
consumes and acknowledges them, shows a returned (unroutable) publish, and
prints what happened at each step.  ``--trace`` prints OpenTelemetry spans to
the console (needs ``pip install 'puka[otel]'``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

import puka


def run(url: str, count: int, trace: bool, out: object = sys.stdout) -> int:
    def say(text: str) -> None:
        print(text, file=out, flush=True)  # type: ignore[call-overload]

    middleware = []
    if trace:
        try:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

            from puka.tracing import OpenTelemetryMiddleware
        except ImportError:
            say("--trace needs OpenTelemetry: pip install 'puka[otel]'")
            return 2
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        middleware.append(OpenTelemetryMiddleware(tracer_provider=provider))

    client = puka.Client(url, client_properties={"connection_name": "puka-demo"}, middleware=middleware)
    started = time.monotonic()
    server = client.wait(client.connect())["server_properties"]
    say("connected to %s %s at %s" % (server.get("product"), server.get("version"), client.params.redacted_url()))

    queue = "puka-demo-%s" % uuid.uuid4().hex[:8]
    client.wait(client.queue_declare(queue=queue, auto_delete=True))
    say("declared queue %s" % queue)
    consume = client.basic_consume(queue=queue, prefetch_count=10)

    t0 = time.monotonic()
    promises = [
        client.basic_publish(
            exchange="",
            routing_key=queue,
            body=("message %d" % i).encode(),
            headers={"content_type": "text/plain", "x-index": i},
        )
        for i in range(count)
    ]
    client.wait_for_all(promises)
    say("published %d messages, all confirmed by the broker in %.1f ms" % (count, (time.monotonic() - t0) * 1000))

    for _ in range(count):
        message = client.wait(consume, timeout=10)
        if message is None:
            say("timed out waiting for a message")
            return 1
        client.basic_ack(message)
        say(
            "  received %r (x-index=%s, delivery tag %d) and acked it"
            % (message["body"], message["headers"].get("x-index"), message["delivery_tag"])
        )

    returned = client.wait(
        client.basic_publish(exchange="", routing_key=queue + "-nowhere", body=b"lost?", mandatory=True),
        raise_errors=False,
    )
    say("a mandatory publish to a queue that does not exist: %s" % returned.exception)

    client.wait(client.basic_cancel(consume))
    client.wait(client.close())
    say("closed; the whole tour took %.1f ms" % ((time.monotonic() - started) * 1000))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m puka.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AMQP_URL") or "amqp:///")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--trace", action="store_true", help="print OpenTelemetry spans to the console")
    args = parser.parse_args(argv)
    try:
        return run(args.url, args.count, args.trace)
    except (puka.ConnectionBroken, puka.AMQPError, ValueError) as exc:
        print("puka demo: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
