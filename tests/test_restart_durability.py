"""A confirmed persistent message in a durable queue survives a broker restart (docs/reliability.rst).

This test stops the broker application (rabbitmqctl stop_app / start_app): like
the others marked ``broker_restart``, it runs after every other test of the
session (see conftest's ordering), so that no other test sees the gap.
"""

from __future__ import annotations

import subprocess
import time

import pytest

import puka

pytestmark = pytest.mark.broker_restart


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def connect(url: str, patience: float = 60.0) -> puka.Client:
    """A connected client, trying again until the broker answers (or ``patience`` seconds passed)."""
    deadline = time.monotonic() + patience
    while True:
        client = puka.Client(url, connection_timeout=5)
        try:
            client.wait(client.connect())
            return client
        except puka.ConnectionBroken:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the broker is still starting: poll again


def test_a_confirmed_persistent_message_in_a_durable_queue_survives_a_restart(amqp_url, name):
    durable = name + "-durable"
    client = connect(amqp_url)
    try:
        client.wait(client.queue_declare(queue=durable, durable=True))
        publishes = [
            client.basic_publish(exchange="", routing_key=durable, body=b"kept %d" % i, headers={"delivery_mode": 2})
            for i in range(100)
        ]
        assert client.wait_for_all(publishes) == [{}] * 100  # confirmed: the broker took responsibility
    finally:
        client.wait(client.close())
    try:
        rabbitmqctl("stop_app")
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    fresh = connect(amqp_url)  # polls until the broker answers again
    try:
        assert fresh.wait(fresh.queue_declare(queue=durable, durable=True, passive=True))["message_count"] == 100
        consume = fresh.basic_consume(queue=durable, prefetch_count=100)
        messages = [fresh.wait(consume, timeout=30) for _ in range(100)]
        assert all(m is not None for m in messages), "not every message came back"
        assert [m["body"] for m in messages] == [b"kept %d" % i for i in range(100)]
        assert [m["headers"]["delivery_mode"] for m in messages] == [2] * 100
        fresh.basic_ack(messages[-1], multiple=True)
        fresh.wait(fresh.basic_cancel(consume))
    finally:
        fresh.wait(fresh.queue_delete(queue=durable), raise_errors=False)
        fresh.wait(fresh.close())
