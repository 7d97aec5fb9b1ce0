"""Every script in examples/ runs against the broker, exits 0 and says what it should."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid

import pytest

import puka

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run_example(amqp_url: str, script: str, *args: str):
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT, AMQP_URL=amqp_url),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, "%s exited %d:\nstdout:\n%s\nstderr:\n%s" % (
        script,
        done.returncode,
        done.stdout,
        done.stderr,
    )
    assert "Traceback" not in done.stderr
    return done


def test_every_example_is_tested():
    scripts = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))
    assert scripts == sorted(
        [
            "async_send.py",
            "asyncio_example.py",
            "frame_tap.py",
            "publish_reliably.py",
            "select_loop.py",
            "service.py",
            "sync_receive.py",
            "sync_send.py",
            "traced_pair.py",
        ]
    )


def test_sync_send_then_sync_receive(amqp_url, client):
    queue = "puka-example-test-%s" % uuid.uuid4().hex[:8]
    try:
        sent = run_example(amqp_url, "sync_send.py", "4", queue)
        assert sent.stdout.count("Message") == 4 and " [*] Message 3 sent" in sent.stdout
        received = run_example(amqp_url, "sync_receive.py", "4", queue)
        for i in range(4):
            assert " [x] Received message b'Hello world! %d'" % i in received.stdout
    finally:
        client.wait(client.queue_delete(queue=queue), raise_errors=False)


def test_sync_receive_deletes_its_queue(amqp_url, client):
    queue = "puka-example-test-%s" % uuid.uuid4().hex[:8]
    run_example(amqp_url, "sync_send.py", "1", queue)
    run_example(amqp_url, "sync_receive.py", "1", queue)
    result = client.wait(client.queue_declare(queue=queue, passive=True), raise_errors=False)
    assert isinstance(result.exception, puka.NotFound)  # cleaned up


def test_async_send(amqp_url):
    done = run_example(amqp_url, "async_send.py")
    assert " [*] 10 messages sent" in done.stdout
    assert " [*] Queue deleted with 10 messages in it" in done.stdout


def test_asyncio_example(amqp_url):
    done = run_example(amqp_url, "asyncio_example.py")
    assert "published 10 messages" in done.stdout
    assert "received b'message 9'" in done.stdout
    assert "received all 10 messages" in done.stdout


def test_publish_reliably(amqp_url):
    queue = "puka-example-test-%s" % uuid.uuid4().hex[:8]
    done = run_example(amqp_url, "publish_reliably.py", "25", queue)
    assert " [*] 25 messages confirmed (1 connection)" in done.stdout
    assert " [*] Queue deleted with 25 messages in it" in done.stdout


def test_select_loop(amqp_url):
    done = run_example(amqp_url, "select_loop.py")
    lines = done.stdout.splitlines()
    assert lines[0] == "connected"
    assert "published 5 messages" in lines
    assert [line for line in lines if line.startswith("received")] == ["received b'tick %d'" % i for i in range(5)]
    assert lines[-1] == "closed"


def test_frame_tap(amqp_url):
    done = run_example(amqp_url, "frame_tap.py")
    out = done.stdout
    for expected in ("out ch 0 connection.start-ok", "in  ch 0 connection.start ", "basic.get-ok", "queue.declare-ok"):
        assert expected in out
    assert "'response': '***'" in out
    sent = next(line for line in out.splitlines() if line.startswith("sent:"))
    received = next(line for line in out.splitlines() if line.startswith("received:"))
    assert "basic.publish header body basic.get basic.ack" in sent
    assert "basic.get-ok header body" in received


def _have_otel_sdk() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ImportError:
        return False


def test_traced_pair(amqp_url):
    # Deliberately not skipped: CI installs the otel extra, and this example must run there.
    if not _have_otel_sdk():
        pytest.fail("examples/traced_pair.py needs the OpenTelemetry SDK: pip install -e '.[otel]'")
    done = run_example(amqp_url, "traced_pair.py")
    out = done.stdout
    assert "consumer got b'order 42' (traceparent 00-" in out
    for span in (
        '"name": "checkout"',
        '"name": "publish puka-example-traced-',
        '"name": "process puka-example-traced-',
    ):
        assert span in out
    assert '"name": "handle order"' in out
    assert "one trace: " in out and "(5 spans)" in out
