"""`opentelemetry-instrument python app.py` traces an unchanged puka program (the entry point)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

APP = """
import puka

client = puka.Client(%r)
client.wait(client.connect())
queue = client.wait(client.queue_declare(exclusive=True))["queue"]
client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"traced"))
message = client.wait(client.basic_get(queue=queue))
client.basic_ack(message)
client.wait(client.close())
"""


def test_opentelemetry_instrument_traces_an_unchanged_program(amqp_url, tmp_path):
    command = shutil.which("opentelemetry-instrument", path=os.path.dirname(sys.executable))
    assert command, "opentelemetry-instrument is missing: install the 'otel' extra"
    app = tmp_path / "app.py"
    app.write_text(APP % amqp_url)
    env = dict(
        os.environ,
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="puka-instrument-test",
    )
    done = subprocess.run(
        [command, sys.executable, str(app)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # The console exporter prints one JSON object per span.
    decoder = json.JSONDecoder()
    text, spans, index = done.stdout, [], 0
    while True:
        start = text.find("{", index)
        if start < 0:
            break
        span, index = decoder.raw_decode(text, start)
        spans.append(span)
    kinds = {(span["name"], span["kind"]) for span in spans}
    assert ("publish (anonymous)", "SpanKind.PRODUCER") in kinds
    assert ("receive (anonymous)", "SpanKind.CLIENT") in kinds
    assert ("ack (anonymous)", "SpanKind.CLIENT") in kinds
    publish = next(span for span in spans if span["kind"] == "SpanKind.PRODUCER")
    assert publish["attributes"]["messaging.system"] == "rabbitmq"
