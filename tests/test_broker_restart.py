"""Broker restart (rabbitmqctl stop_app / start_app): promises fail promptly, a new Client connects.

This test stops the broker application for a few seconds: it runs alone (the
last of the suite, see conftest's ordering) so that no other test sees the gap.
"""

from __future__ import annotations

import subprocess
import time

import pytest

import puka

pytestmark = pytest.mark.broker_restart


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def connect(url: str, timeout: float = 60.0) -> puka.Client:
    deadline = time.monotonic() + timeout
    while True:
        client = puka.Client(url, connection_timeout=5)
        try:
            client.wait(client.connect(), timeout=10)
            return client
        except puka.ConnectionBroken:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_promises_fail_promptly_on_restart_and_a_new_client_connects(amqp_url, name):
    client = connect(amqp_url)
    queue = client.wait(client.queue_declare(queue=name, exclusive=True))["queue"]
    consume = client.basic_consume(queue=queue)
    publishes = [client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(100)]
    client.wait_for_all(publishes)
    later = [client.basic_publish(exchange="", routing_key=queue, body=b"late") for _ in range(100)]
    try:
        rabbitmqctl("stop_app")
        outcomes = [client.wait(p, timeout=10, raise_errors=False) for p in later]
        # Every promise resolved: confirmed before the stop, or failed because of it.
        assert all(r is not None for r in outcomes)
        failed = [r for r in outcomes if r.is_error]
        assert all(isinstance(r.exception, (puka.ConnectionBroken, puka.AMQPError)) for r in failed)
        # The consume promise ends too, promptly.
        while True:
            result = client.wait(consume, timeout=10, raise_errors=False)
            assert result is not None, "the consume promise did not end"
            if result.is_error:
                break
        with pytest.raises(puka.ConnectionBroken):
            client.queue_declare(queue="after-stop")
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    fresh = connect(amqp_url)
    try:
        assert fresh.wait(fresh.queue_declare(exclusive=True))["queue"].startswith("amq.gen-")
    finally:
        fresh.wait(fresh.close())
