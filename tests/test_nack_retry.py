"""``Recovery(nack_retry=...)``: a nacked publish is sent again on a new connection, for a bounded time.

On a cluster, RabbitMQ nacks publishes to a quorum queue that has no leader yet (a node was just killed),
and a channel that began publishing to it then keeps being nacked; tests/test_cluster.py and the chaos soak
show the failover.  Here the broker nacks for a reason a test controls: a queue of one message at most that
refuses the rest (``x-overflow: reject-publish``), on the system broker, with connections of the test's own.
"""

from __future__ import annotations

import pytest
from faults import wait_until

import puka
from puka.tracing import Middleware

pytestmark = pytest.mark.timeout(120)

FULL = {"x-max-length": 1, "x-overflow": "reject-publish"}


class Losses(Middleware):
    def __init__(self) -> None:
        super().__init__()
        self.lost: list[str] = []
        self.recovered = 0

    def on_connection_lost(self, client, exc) -> None:
        self.lost.append(str(exc))

    def on_recovered(self, client, info) -> None:
        self.recovered += 1


def settings(nack_retry: float) -> puka.Recovery:
    return puka.Recovery(initial_delay=0.01, max_delay=0.05, deadline=60.0, nack_retry=nack_retry)


@pytest.fixture
def full_queue(client, name):
    """A queue holding one message, which refuses (nacks) every further publish."""
    client.wait(client.queue_declare(name, arguments=FULL))
    client.wait(client.basic_publish("", name, b"first"))
    yield name
    client.wait(client.queue_delete(name), raise_errors=False)


def pump(client, promise: int, until, timeout: float = 30.0) -> None:
    """Run the client (without taking ``promise``'s result) until ``until()``."""
    assert wait_until(lambda: client.wait(promise, timeout=0.02, raise_errors=False) is not None or until(), timeout)


def test_a_nacked_publish_is_sent_again_until_the_broker_takes_it(amqp_url, client, full_queue):
    losses = Losses()
    retrying = puka.Client(amqp_url, recovery=settings(30.0), middleware=[losses])
    try:
        retrying.wait(retrying.connect(), timeout=10)
        results = []
        retrying.basic_publish("", full_queue, b"second", callback=lambda n, r: results.append(r))
        # Nacked (the queue is full): the client goes to a new connection to send it again, and again.
        assert wait_until(lambda: retrying.loop(timeout=0.01) or len(losses.lost) >= 2, 30)
        assert not results
        assert "nacked" in losses.lost[0]
        # Room in the queue: the next try is confirmed.
        first = client.wait(client.basic_get(full_queue))
        assert first["body"] == b"first"
        client.basic_ack(first)
        assert wait_until(lambda: retrying.loop(timeout=0.01) or results, 30)
        assert len(results) == 1 and not results[0].is_error, results
        second = client.wait(client.basic_get(full_queue, no_ack=True))
        assert second["body"] == b"second"
        assert client.wait(client.queue_declare(full_queue, passive=True))["message_count"] == 0  # one copy
    finally:
        retrying.wait(retrying.close(), timeout=10)


def test_a_publish_nacked_for_longer_than_nack_retry_fails(amqp_url, full_queue):
    losses = Losses()
    retrying = puka.Client(amqp_url, recovery=settings(0.5), middleware=[losses])
    try:
        retrying.wait(retrying.connect(), timeout=10)
        result = retrying.wait(retrying.basic_publish("", full_queue, b"second"), timeout=30, raise_errors=False)
        assert result is not None and result.is_error and isinstance(result.exception, puka.PublishNacked)
        assert losses.lost  # it was tried again before failing
        # The client goes on: it is connected, and a later operation works.
        ok = retrying.wait(retrying.queue_declare(full_queue, passive=True), timeout=30)
        assert ok["message_count"] == 1
    finally:
        retrying.wait(retrying.close(), timeout=10)


def test_without_nack_retry_a_nack_fails_the_publish_at_once(amqp_url, full_queue):
    losses = Losses()
    with puka.Client(amqp_url, middleware=[losses]) as plain:
        result = plain.wait(plain.basic_publish("", full_queue, b"second"), timeout=30, raise_errors=False)
        assert result.is_error and isinstance(result.exception, puka.PublishNacked)
        assert not losses.lost


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf")])
def test_nack_retry_must_be_a_finite_number_of_seconds(value):
    with pytest.raises(ValueError):
        puka.Recovery(nack_retry=value)
    assert puka.Recovery().nack_retry == 0.0
