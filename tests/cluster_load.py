"""Traffic on a RabbitMQ cluster for the failover tests and the chaos soak: clients in threads, and the checks.

Each :class:`Publisher` and :class:`Consumer` is one ``puka.Client`` driven by its own thread (the
synchronous client is used from that thread only).  A publisher keeps ``window`` confirmed publishes in
flight at most ``rate`` a second, to a quorum queue; a consumer acks each message from its callback.
Bodies name the publisher and an index, so the consumers' tally tells what arrived and how often.

:func:`check` stops the traffic in order (publishers first, until every publish has its outcome; then the
consumers, once they have received every confirmed message) and asserts the contract:

* every publish promise resolved exactly once, and none failed;
* every confirmed message was consumed at least once (delivered, redelivered or not);
* duplicates -- a message delivered more than once *as new* (``redelivered`` unset: a publish sent again by
  recovery) -- at most the publishes unconfirmed when a publisher lost its connection (``unconfirmed_at_fault``);
  redeliveries (``redelivered`` set: a consumer's connection went before its ack) are counted apart;
* the broker has exactly one consumer per consuming client on the queue (``rabbitmqctl list_consumers``).

Only the public API: the clients are watched through middleware hooks and callbacks.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from typing import Any

import puka
from puka.tracing import Middleware

#: Seconds to wait for anything a cluster or a recovery does: a ceiling, never a measure of speed.
PATIENCE = 120.0

QUORUM = {"x-queue-type": "quorum"}


def recovery(deadline: float = 300.0, nack_retry: float = 60.0) -> puka.Recovery:
    """The clients' settings: quick retries, a deadline past any fault's outage, nacks retried (quorum queues)."""
    return puka.Recovery(initial_delay=0.05, max_delay=1.0, deadline=deadline, locked_retry=30.0, nack_retry=nack_retry)


def wait_for(what: str, predicate, timeout: float = PATIENCE, interval: float = 0.05) -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


class Hooks(Middleware):
    """Connection lost / recovered, as the client tells its middleware (called on the client's thread)."""

    def __init__(self, owner: Worker) -> None:
        super().__init__()
        self.owner = owner

    def on_connection_lost(self, client: Any, exc: BaseException) -> None:
        self.owner.lost(exc)

    def on_recovered(self, client: Any, info: dict[str, Any]) -> None:
        self.owner.recovered(info)


class Worker(threading.Thread):
    """One client on its own thread.  ``port``: the broker port it is connected to now (None in an outage).

    ``want_port``: connect until the connection lands on that port (clients take the hosts in turn, so a few
    tries reach any node); the clients that land elsewhere are closed at once.
    """

    kind = "worker"

    def __init__(
        self,
        url: str | list[str],
        queue: str,
        name: str,
        want_port: int | None = None,
        heartbeat: int = 0,
        deadline: float = 300.0,
        nack_retry: float = 60.0,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.nack_retry = nack_retry
        self.url = url
        self.queue = queue
        self.want_port = want_port
        self.heartbeat = heartbeat
        self.deadline = deadline
        self.client: puka.Client | None = None
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.port: int | None = None
        self.in_outage = False
        self.losses: list[tuple[float, str]] = []  # (when, error) of each loss
        self.outages: list[float] = []  # outage_seconds of each recovery
        self.recovered_at: list[float] = []

    # --- the thread ---

    def run(self) -> None:
        try:
            self.client = self._connect()
            self.setup()
            self.ready.set()
            while not self.stopping.is_set():
                self.step()
                self.client.loop(timeout=0.05)
                self._note_port()
            self.finish()
        except BaseException as exc:  # kept for the test to see
            self.error = exc
            self.ready.set()
        finally:
            if self.client is not None:
                try:
                    self.client.wait(self.client.close(), timeout=30)
                except Exception:
                    pass
            self.done.set()

    def _connect(self) -> puka.Client:
        for _ in range(10):
            client = puka.Client(
                self.url,
                recovery=recovery(self.deadline, self.nack_retry),
                heartbeat=self.heartbeat,
                middleware=[Hooks(self)],
                client_properties={"connection_name": self.name},
            )
            client.wait(client.connect(), timeout=PATIENCE)
            port = client.socket().getpeername()[1]
            if self.want_port is None or port == self.want_port:
                self.port = port
                return client
            client.wait(client.close(), timeout=30)
        raise AssertionError("%s: no connection landed on port %s" % (self.name, self.want_port))

    def _note_port(self) -> None:
        if self.in_outage:
            self.port = None
            return
        try:
            self.port = self.client.socket().getpeername()[1]  # type: ignore[union-attr]
        except (OSError, AttributeError):
            self.port = None

    def lost(self, exc: BaseException) -> None:
        self.in_outage = True
        self.losses.append((time.monotonic(), str(exc)))

    def recovered(self, info: dict[str, Any]) -> None:
        self.in_outage = False
        self.outages.append(float(info["outage_seconds"]))
        self.recovered_at.append(time.monotonic())

    def declare(self) -> None:
        assert self.client is not None
        self.client.wait(self.client.queue_declare(self.queue, durable=True, arguments=QUORUM), timeout=PATIENCE)

    # --- overridden ---

    def setup(self) -> None:
        self.declare()

    def step(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def stop(self, timeout: float = PATIENCE) -> None:
        self.stopping.set()
        if not self.done.wait(timeout):
            raise AssertionError("%s did not stop within %.0fs" % (self.name, timeout))
        if self.error is not None:
            raise AssertionError("%s failed: %r" % (self.name, self.error)) from self.error


class Publisher(Worker):
    """Confirmed publishes to the queue: ``window`` in flight, at most ``rate`` a second."""

    kind = "publisher"

    def __init__(self, *args: Any, window: int = 20, rate: float = 100.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window = window
        self.rate = rate
        # Keyed by the message's index, never by the promise number, and results are not kept: the soak
        # measures the memory allocated by puka that is still alive, and both are puka's allocations.
        self.sent = 0  # publishes made
        self.outcomes: dict[int, int] = {}  # index -> how many results its promise had
        self.confirmed_indexes: set[int] = set()
        self.confirmed = 0
        self.failed: list[BaseException] = []
        self.unconfirmed_at_fault = 0
        self.started = 0.0
        self.publishing = False
        self.last_confirm = 0.0

    @property
    def unconfirmed(self) -> int:
        return self.sent - len(self.outcomes)

    def lost(self, exc: BaseException) -> None:
        self.unconfirmed_at_fault += self.unconfirmed
        super().lost(exc)

    def setup(self) -> None:
        super().setup()
        self.started = time.monotonic()
        self.publishing = True

    def step(self) -> None:
        client = self.client
        assert client is not None
        due = self.rate * (time.monotonic() - self.started)
        while self.publishing and self.unconfirmed < self.window and self.sent < due:
            index = self.sent
            body = b"%s %d" % (self.name.encode(), index)
            client.basic_publish("", self.queue, body, callback=functools.partial(self.on_confirm, index))
            self.sent = index + 1

    def on_confirm(self, index: int, number: int, result: Any) -> None:
        self.outcomes[index] = self.outcomes.get(index, 0) + 1
        if result.is_error:
            self.failed.append(result.exception)
        else:
            self.confirmed_indexes.add(index)
            self.confirmed += 1
            self.last_confirm = time.monotonic()

    def finish(self) -> None:
        """Publish no more; run until every publish has its outcome (or the patience ends)."""
        self.publishing = False
        client = self.client
        assert client is not None
        deadline = time.monotonic() + PATIENCE
        while self.unconfirmed and time.monotonic() < deadline:
            client.loop(timeout=0.1)

    def confirmed_keys(self) -> set[tuple[str, int]]:
        return {(self.name, index) for index in self.confirmed_indexes}


class Consumer(Worker):
    """Consumes the queue (``prefetch``), acks each message from the callback, tallies what arrives."""

    kind = "consumer"

    def __init__(self, *args: Any, prefetch: int = 50, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefetch = prefetch
        self.fresh: Counter[tuple[str, int]] = Counter()  # deliveries with redelivered unset
        self.seen: set[tuple[str, int]] = set()  # every message delivered, redelivered or not
        self.redelivered = 0
        self.deliveries = 0
        self.tags: set[str] = set()
        self.consume_errors: list[BaseException] = []
        self.consume: int | None = None
        self.last_delivery = 0.0

    def setup(self) -> None:
        super().setup()
        assert self.client is not None
        self.consume = self.client.basic_consume(self.queue, prefetch_count=self.prefetch, callback=self.on_message)

    def on_message(self, number: int, message: Any) -> None:
        if message.is_error:
            self.consume_errors.append(message.exception)
            return
        name, index = message["body"].rsplit(b" ", 1)
        key = (name.decode(), int(index))
        self.seen.add(key)
        self.deliveries += 1
        self.last_delivery = time.monotonic()
        if message["redelivered"]:
            self.redelivered += 1
        else:
            self.fresh[key] += 1
        self.tags.add(message["consumer_tag"])
        assert self.client is not None
        self.client.basic_ack(message)


class Load:
    """``publishers`` and ``consumers`` on one quorum queue of a cluster; started by :meth:`start`."""

    def __init__(self, cluster: Any, queue: str, workers: list[Worker]) -> None:
        self.cluster = cluster
        self.queue = queue
        self.workers = workers

    @property
    def publishers(self) -> list[Publisher]:
        return [w for w in self.workers if isinstance(w, Publisher)]

    @property
    def consumers(self) -> list[Consumer]:
        return [w for w in self.workers if isinstance(w, Consumer)]

    def start(self) -> Load:
        # One at a time: the first declares the queue before the others use it.
        for worker in self.workers:
            worker.start()
            if not worker.ready.wait(PATIENCE):
                raise AssertionError("%s did not start" % worker.name)
            if worker.error is not None:
                raise AssertionError("%s failed to start: %r" % (worker.name, worker.error)) from worker.error
        return self

    def confirmed(self) -> int:
        return sum(p.confirmed for p in self.publishers)

    def wait_confirms(self, more: int = 50, timeout: float = PATIENCE) -> None:
        """Until every publisher has had ``more`` further confirms."""
        marks = [(p, p.confirmed) for p in self.publishers]
        wait_for(
            "%d more confirms per publisher" % more, lambda: all(p.confirmed >= m + more for p, m in marks), timeout
        )

    def wait_flowing(self, timeout: float = PATIENCE) -> None:
        """Until no client is in an outage and every publisher and consumer has made progress since now."""
        pubs = [(p, p.confirmed) for p in self.publishers]
        cons = [(c, c.deliveries) for c in self.consumers]
        wait_for(
            "traffic flowing again",
            lambda: (
                not any(w.in_outage for w in self.workers)
                and all(p.confirmed > m for p, m in pubs)
                and all(c.deliveries > m for c, m in cons)
            ),
            timeout,
        )

    def kill_switch(self) -> None:
        """Stop every worker without checks (a failing test's cleanup)."""
        for worker in self.workers:
            worker.stopping.set()
        for worker in self.workers:
            worker.done.wait(30)

    def consumers_on_queue(self) -> list[dict[str, Any]]:
        return [c for c in self.cluster.list_consumers() if c.get("queue_name") == self.queue]

    def check(self) -> dict[str, Any]:
        """Stop the traffic and assert the contract (see the module docstring); returns the figures."""
        for publisher in self.publishers:
            publisher.stop()
        for publisher in self.publishers:
            assert publisher.unconfirmed == 0, "%s: %d publishes never resolved" % (
                publisher.name,
                publisher.unconfirmed,
            )
            multiple = {n: count for n, count in publisher.outcomes.items() if count != 1}
            assert not multiple, "%s: promises resolved more than once: %r" % (publisher.name, multiple)
            assert not publisher.failed, "%s: publishes failed: %r" % (publisher.name, publisher.failed[:5])
        confirmed: set[tuple[str, int]] = set()
        for publisher in self.publishers:
            confirmed |= publisher.confirmed_keys()

        def received() -> set[tuple[str, int]]:
            keys: set[tuple[str, int]] = set()
            for consumer in self.consumers:
                keys |= consumer.seen
            return keys

        try:
            wait_for("every confirmed message consumed", lambda: confirmed <= received())
        except AssertionError:
            missing = sorted(confirmed - received())
            raise AssertionError(
                "%d confirmed messages never consumed, e.g. %r" % (len(missing), missing[:10])
            ) from None
        # One consumer per consuming client, as the broker sees it.
        expected = len(self.consumers)
        wait_for(
            "%d consumers on %s" % (expected, self.queue),
            lambda: len(self.consumers_on_queue()) == expected,
            60,
            0.5,
        )
        on_queue = self.consumers_on_queue()
        tags = set()
        for consumer in self.consumers:
            tags |= consumer.tags
            assert not consumer.consume_errors, "%s: consume errors %r" % (consumer.name, consumer.consume_errors)
        assert {c["consumer_tag"] for c in on_queue} <= tags, (on_queue, tags)
        for consumer in self.consumers:
            consumer.stop()
        fresh: Counter[tuple[str, int]] = Counter()
        for consumer in self.consumers:
            fresh.update(consumer.fresh)
        duplicated = sum(n - 1 for n in fresh.values() if n > 1)
        allowed = sum(p.unconfirmed_at_fault for p in self.publishers)
        assert duplicated <= allowed, "%d duplicates, more than the %d publishes unconfirmed at faults" % (
            duplicated,
            allowed,
        )
        consumed: set[tuple[str, int]] = set()
        for consumer in self.consumers:
            consumed |= consumer.seen
        unexpected = consumed - {(p.name, i) for p in self.publishers for i in range(p.sent)}
        assert not unexpected, "messages nobody published: %r" % sorted(unexpected)[:10]
        outages = [o for w in self.workers for o in w.outages]
        return {
            "published": sum(p.sent for p in self.publishers),
            "confirmed": len(confirmed),
            "consumed": len(consumed),
            "duplicated": duplicated,
            "unconfirmed_at_faults": allowed,
            "redelivered": sum(c.redelivered for c in self.consumers),
            "connection_losses": sum(len(w.losses) for w in self.workers),
            "recoveries": len(outages),
            "longest_outage": max(outages, default=0.0),
        }
