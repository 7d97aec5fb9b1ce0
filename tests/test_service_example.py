"""examples/service.py as a real process: work, RPCs, SIGTERM, and what must hold afterwards.

The test is the service's user: it publishes plain requests and makes RPCs through a traced
client, sends SIGTERM while requests are still in the queue, and then checks, from the
broker and from the spans the service printed (one JSON object per line on its stdout):

* every request was processed exactly once (one result, or one reply) or is still in the
  requests queue, to be redelivered -- never both, never neither;
* every result the service had confirmed is in the results queue (a request is acknowledged
  only once its result is confirmed, so an acknowledged request has its result);
* the service stopped cleanly (``shutdown`` left nothing) and exited 0;
* the spans are there and linked: each request's ``process`` span continues the test's
  ``publish`` span, its ``work`` and result ``publish`` spans are its children, and the test's
  handling of each RPC reply is linked to the service's reply ``publish``.
"""

from __future__ import annotations

import json
import os
import queue as queue_module
import signal
import subprocess
import sys
import threading

import pytest

import puka

try:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from puka.tracing import OpenTelemetryMiddleware
except ImportError as exc:  # the test extra brings the otel extra: a missing SDK is a broken set-up, not a skip
    raise ImportError("tests/test_service_example.py needs the OpenTelemetry SDK: pip install -e '.[test]'") from exc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICE = os.path.join(ROOT, "examples", "service.py")
PLAIN_FIRST, RPCS, PLAIN_LATER = 20, 10, 40


class Process:
    """The service as a subprocess; its stderr lines are read as they come."""

    def __init__(self, amqp_url: str, requests: str, results: str, **extra_env: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(PYTHONPATH=ROOT, AMQP_URL=amqp_url, SERVICE_WORK_SECONDS="0.02", PYTHONUNBUFFERED="1")
        env.update(extra_env)
        self.popen = subprocess.Popen(
            [sys.executable, SERVICE, requests, results],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue_module.Queue = queue_module.Queue()
        self.stderr: list[str] = []
        self.stdout = ""
        self.readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read_stderr(self) -> None:
        for line in self.popen.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _read_stdout(self) -> None:
        self.stdout = self.popen.stdout.read()

    def wait_for_line(self, text: str) -> str:
        while True:
            line = self.lines.get(timeout=60)
            assert line is not None, "the service ended before saying %r:\n%s" % (text, "".join(self.stderr))
            if text in line:
                return line

    def finish(self) -> int:
        code = self.popen.wait(60)
        for reader in self.readers:
            reader.join(60)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.finish()


def spans_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def parent_or_links(span: dict) -> set[str]:
    ids = {link["context"]["span_id"] for link in span.get("links") or ()}
    if span.get("parent_id"):
        ids.add(span["parent_id"])
    return ids


def take_all(client: puka.Client, queue: str) -> list:
    """Every message in ``queue`` (acknowledged)."""
    messages = []
    while True:
        message = client.wait(client.basic_get(queue=queue))
        if message.get("empty"):
            return messages
        client.basic_ack(message)
        messages.append(message)


def test_the_service_processes_answers_traces_and_stops_without_losing_anything(amqp_url, client, name):
    requests, results = name + "-requests", name + "-results"
    for queue in (requests, results):
        client.wait(client.queue_declare(queue=queue, durable=True))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    caller = puka.Client(amqp_url, middleware=[OpenTelemetryMiddleware(provider)])
    caller.wait(caller.connect())
    service = Process(amqp_url, requests, results)
    try:
        service.wait_for_line("ready: consuming")

        def send(first: int, count: int) -> None:
            caller.wait_for_all(
                [
                    caller.basic_publish("", requests, b"job %d" % i, {"message_id": "job-%d" % i, "delivery_mode": 2})
                    for i in range(first, first + count)
                ]
            )

        send(0, PLAIN_FIRST)
        calls = [
            caller.rpc_call("", requests, b"rpc %d" % i, {"message_id": "rpc-%d" % i}, timeout=60) for i in range(RPCS)
        ]
        replies = [caller.wait(call) for call in calls]
        assert [r["body"] for r in replies] == [b"RPC %d" % i for i in range(RPCS)]
        assert [r["headers"]["request-id"] for r in replies] == ["rpc-%d" % i for i in range(RPCS)]
        # More work, and SIGTERM while it waits in the queue: the service finishes what it holds, and stops.
        send(PLAIN_FIRST, PLAIN_LATER)
        service.popen.send_signal(signal.SIGTERM)
        assert service.finish() == 0, "".join(service.stderr)
    finally:
        service.kill()
        caller.wait(caller.close())  # ends the process spans of the replies taken with wait()
        provider.shutdown()
    log = "".join(service.stderr)
    assert "stopping" in log and "stopped: {'unsettled': 0, 'pending': 0}" in log, log
    assert "Traceback" not in log, log

    # --- what the broker holds: every request processed exactly once or still queued ---
    try:
        outputs = take_all(client, results)
        left = take_all(client, requests)
    finally:
        for queue in (requests, results):
            client.wait(client.queue_delete(queue=queue))
    done = [m["headers"]["request-id"] for m in outputs]
    waiting = [m["headers"]["message_id"] for m in left]
    plain = ["job-%d" % i for i in range(PLAIN_FIRST + PLAIN_LATER)]
    assert len(done) == len(set(done)), "a request was processed twice"
    assert not set(done) & set(waiting), "a request was processed and also left in the queue"
    assert sorted(done + waiting) == sorted(plain)  # nothing lost, nothing extra
    assert all(m["body"] == b"JOB %s" % m["headers"]["request-id"][4:].encode() for m in outputs)

    # --- the spans: present and linked ---
    theirs = spans_of(service.stdout)
    ours = exporter.get_finished_spans()
    by_id = {s["context"]["span_id"]: s for s in theirs}
    processes = [s for s in theirs if s["name"] == "process " + requests]
    processed_ids = {s["attributes"].get("messaging.message.id") for s in processes}
    assert len(processes) == len(done) + RPCS  # one per request handled
    assert processed_ids == set(done) | {"rpc-%d" % i for i in range(RPCS)}
    publishes = {"0x%016x" % s.context.span_id: s for s in ours if s.name == "publish " + requests}
    assert len(publishes) == PLAIN_FIRST + PLAIN_LATER + RPCS
    for process in processes:
        # The test's publish span is the process span's parent or link: one trace from caller to service.
        (origin,) = parent_or_links(process) & set(publishes)
        assert process["context"]["trace_id"] == "0x%032x" % publishes[origin].context.trace_id
        children = [s for s in theirs if s.get("parent_id") == process["context"]["span_id"]]
        assert sorted(s["name"] for s in children) == sorted(
            [
                "work",
                "ack " + requests,
                "publish " + results
                if process["attributes"]["messaging.message.id"][:4] == "job-"
                else "publish (anonymous)",
            ]
        )
    reply_publishes = {s["context"]["span_id"] for s in theirs if s["name"] == "publish (anonymous)"}
    assert len(reply_publishes) == RPCS
    handled = [s for s in ours if s.name == "process (anonymous)"]
    assert len(handled) == RPCS
    for span in handled:
        links = {"0x%016x" % link.context.span_id for link in span.links}
        if span.parent is not None:
            links.add("0x%016x" % span.parent.span_id)
        (reply,) = links & reply_publishes
        assert by_id[reply]["context"]["trace_id"] == "0x%032x" % span.context.trace_id


def test_with_an_otlp_endpoint_but_no_otlp_exporter_spans_go_to_the_console(amqp_url, client, name):
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the OTLP exporter is installed here: the console fallback is not used")
    requests, results = name + "-requests", name + "-results"
    service = Process(amqp_url, requests, results, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")
    try:
        service.wait_for_line("ready: consuming")
        client.wait(client.basic_publish("", requests, b"one", {"message_id": "one"}))
        watch = client.basic_consume(queue=results)
        result = client.wait(watch)
        client.basic_ack(result)
        assert result["body"] == b"ONE" and result["headers"]["request-id"] == "one"
        service.popen.send_signal(signal.SIGTERM)
        assert service.finish() == 0, "".join(service.stderr)
    finally:
        service.kill()
        for queue in (requests, results):
            client.wait(client.queue_delete(queue=queue))
    assert [s["name"] for s in spans_of(service.stdout) if s["name"].startswith("process ")] == ["process " + requests]
