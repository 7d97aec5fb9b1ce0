"""Many queues, consumers and operations at once: the behaviours the scaling work keeps.

What each test checks is a result, never a duration: the costs themselves are measured by hand with
``benchmarks/bench_scaling.py`` (docs/performance.rst, "Scaling").
"""

from __future__ import annotations

import pytest
from seam import Core

import puka
from puka.tracing import Middleware

pytestmark = pytest.mark.timeout(180)

PATIENCE = 30


class QueueWatcher(Middleware):
    """Records, for each delivery, the queue the middleware is told and the queue it came from."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str]] = []

    def on_deliver(self, delivery):
        self.seen.append((delivery.queue, delivery.message["routing_key"]))


def take_and_ack(client, consume, count):
    """Take ``count`` messages of ``consume``, acking each; their bodies."""
    bodies = []
    for _ in range(count):
        message = client.wait(consume, timeout=PATIENCE)
        assert message is not None
        bodies.append(message["body"])
        client.basic_ack(message)
    return bodies


def test_the_middleware_is_told_the_queue_of_each_delivery_among_hundreds_of_consumers(amqp_url):
    watcher = QueueWatcher()
    client = puka.Client(amqp_url, middleware=[watcher])
    client.wait(client.connect(), timeout=PATIENCE)
    try:
        declares = [client.queue_declare(exclusive=True, auto_delete=True) for _ in range(300)]
        queues = [result["queue"] for result in client.wait_for_all(declares)]
        consume = client.basic_consume_multi(queues, prefetch_count=5)
        client.wait(client.basic_qos(consume, prefetch_count=5), timeout=PATIENCE)  # every consumer started
        # Two messages per queue, in an order that is not the consumers' order.
        order = queues[::-1] + queues[1::2] + queues[::2]
        client.wait_for_all([client.basic_publish("", queue, queue.encode()) for queue in order])
        bodies = take_and_ack(client, consume, len(order))
        assert sorted(bodies) == sorted(queue.encode() for queue in order)
        assert len(watcher.seen) == len(order)
        wrong = [(told, came) for told, came in watcher.seen if told != came]
        assert not wrong, wrong[:5]
        client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    finally:
        client.wait(client.close(), timeout=PATIENCE)


def test_thousands_of_declares_issued_together_each_get_their_own_answer(client):
    declares = [client.queue_declare(exclusive=True, auto_delete=True) for _ in range(2000)]
    queues = [result["queue"] for result in client.wait_for_all(declares)]
    assert len(set(queues)) == len(queues) == 2000
    deleted = client.wait_for_all([client.queue_delete(queue) for queue in queues])
    assert [result["message_count"] for result in deleted] == [0] * 2000


def test_a_consume_waiting_behind_declares_gets_the_channel_they_cannot_take():
    """Declares hold every call slot and wait for more; a consume waits behind them for a channel number.
    A consume's channel given back is for the waiting consume: the declares may hold no more channels."""
    core = Core()
    core.open(channel_max=66)  # numbers 2..66: one consume and 64 declares take them all
    first = core.consume("first")
    core.answer("channel.open")
    core.answer("basic.qos", "basic.consume")
    declares = [core.declare("") for _ in range(70)]  # 64 get a channel, 6 wait for a call slot
    core.answer("channel.open")
    core.clear_sent()
    second = core.consume("second")  # no number left: waits behind the 6 declares
    assert [name for _channel, name, _method in core.sent] == []

    core.cancel(first)
    core.answer("basic.cancel")  # the first consume ends: its channel is given back
    sent = core.sent
    assert [name for _channel, name, method in sent if name == "basic.consume"] == ["basic.consume"]
    assert [method["queue"] for _channel, name, method in sent if name == "basic.consume"] == ["second"]
    assert "queue.declare" not in [name for _channel, name, _method in sent]

    # The declares all get their answer once the others are answered.
    core.answer("basic.qos", "basic.consume")
    for _ in range(3):
        core.answer("queue.declare")
    assert all(
        core.result(number) == {"queue": "amq.gen-seam", "message_count": 0, "consumer_count": 0} for number in declares
    )
    assert second in core.pending()


class Recoveries(QueueWatcher):
    def __init__(self) -> None:
        super().__init__()
        self.recovered: list[dict] = []

    def on_recovered(self, client, info):
        self.recovered.append(info)


def test_many_server_named_queues_recovered_twice_keep_their_consumers_and_old_names(proxy):
    """Every queue of one consume is renamed by each recovery: the consumers follow, and a publish to the
    name the application got first reaches the queue's latest incarnation."""
    watch = Recoveries()
    client = puka.Client(proxy.url, middleware=[watch])
    client.wait(client.connect(), timeout=PATIENCE)
    try:
        declares = [client.queue_declare(exclusive=True, auto_delete=True) for _ in range(60)]
        first = [result["queue"] for result in client.wait_for_all(declares)]
        consume = client.basic_consume_multi(first, prefetch_count=2)
        client.wait(client.basic_qos(consume, prefetch_count=2), timeout=PATIENCE)
        latest = {queue: queue for queue in first}
        for outage in (1, 2):
            proxy.cut()
            # Gated until the recovery is done: confirmed once the queues and consumers are back.
            client.wait(client.basic_publish("", "puka-test-nowhere", b"after"), timeout=PATIENCE)
            assert len(watch.recovered) == outage
            renamed = watch.recovered[-1]["renamed"]
            assert sorted(renamed) == sorted(latest.values())
            latest = {queue: renamed[now] for queue, now in latest.items()}
        client.wait_for_all([client.basic_publish("", queue, queue.encode()) for queue in first])
        bodies = take_and_ack(client, consume, len(first))
        assert sorted(bodies) == sorted(queue.encode() for queue in first)
        assert sorted(told for told, _came in watch.seen) == sorted(latest.values())
        assert all(told == came for told, came in watch.seen), watch.seen[:5]
        client.wait(client.basic_cancel(consume), timeout=PATIENCE)
    finally:
        client.wait(client.close(), timeout=PATIENCE)
