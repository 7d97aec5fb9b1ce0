"""connection.blocked / unblocked from a real memory alarm."""

from __future__ import annotations

import subprocess
import time

import pytest

import puka


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def memory_alarm():
    """Trip the broker's memory alarm; always restore the default watermark."""
    try:
        yield lambda: rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")


def wait_until(predicate, client, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in %ss" % timeout
        client._conn.io_step(0.2)


def test_blocked_is_reported_and_publishes_complete_after_unblock(amqp_url, memory_alarm, name):
    client = puka.Client(amqp_url)
    client.wait(client.connect())
    events = []
    client.on_blocked = events.append
    queue = client.wait(client.queue_declare(queue=name, auto_delete=True))["queue"]
    consume = client.basic_consume(queue=queue, no_ack=True)  # keeps the auto-delete queue alive
    try:
        memory_alarm()
        first = client.basic_publish(exchange="", routing_key=queue, body=b"while blocked")
        wait_until(lambda: client.blocked is not None, client)
        assert events and events[0] == client.blocked
        later = [client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(100)]
        assert client.wait(later[-1], timeout=1.0) is None  # held back while blocked
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        assert client.wait(first, timeout=15) == {}
        assert all(r == {} for r in client.wait_for_all(later))
        wait_until(lambda: client.blocked is None, client)
        assert events[-1] is None
        received = [client.wait(consume, timeout=10)["body"] for _ in range(101)]
        assert received[0] == b"while blocked" and received[1:] == [b"%d" % i for i in range(100)]
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        if client._session.status == "open":
            client.wait(client.close(), timeout=10)


def test_close_while_blocked_returns_in_bounded_time(amqp_url, memory_alarm, name):
    client = puka.Client(amqp_url)
    client.wait(client.connect())
    queue = client.wait(client.queue_declare(queue=name, auto_delete=True))["queue"]
    memory_alarm()
    pending = client.basic_publish(exchange="", routing_key=queue, body=b"x")
    wait_until(lambda: client.blocked is not None, client)
    started = time.monotonic()
    client.wait(client.close(), timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 8, "close() took %.1fs while blocked" % elapsed
    result = client.wait(pending, raise_errors=False)
    assert result.is_error and isinstance(result.exception, puka.ConnectionBroken)
