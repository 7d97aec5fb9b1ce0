"""Memory held per publish in flight: its promise and tag bookkeeping, a few hundred bytes, nothing else.

The documented figure (docs/performance.rst, docs/reliability.rst): a pending publish costs its frames
and a few hundred bytes; a hundred thousand in flight cost under 500 bytes each beyond their frames.
"""

from __future__ import annotations

import gc
import select
import sys
import tracemalloc

from seam import Core

import puka
from puka import spec

IN_FLIGHT = 100_000
#: Bytes allowed per in-flight publish beyond its frames.
BUDGET = 500
BODY = b"x" * 100


def traced(fn):
    """Run ``fn()`` under tracemalloc: (its result, bytes allocated and still held when it returns)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        gc.collect()
        return result, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def flush(client):
    """Write everything queued, with the public event-loop calls (reading nothing: no confirm is taken)."""
    fd = client.fileno()
    while client.needs_write():
        _readable, writable, _ = select.select([], [fd], [], 10)
        assert writable, "the broker stopped reading"
        client.on_write()


def test_in_flight_publishes_cost_under_500_bytes_each(amqp_url):
    client = puka.Client(amqp_url)
    client.wait(client.connect())
    try:
        queue = client.wait(client.queue_declare(exclusive=True))["queue"]
        client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"warm-up"))

        def publish_and_write():
            promises = [client.basic_publish(exchange="", routing_key=queue, body=BODY) for _ in range(IN_FLIGHT)]
            flush(client)  # the frames are gone to the socket: what is left is the bookkeeping
            return promises

        # Nothing was read since: every publish is still in flight for the client.
        promises, held = traced(publish_and_write)
        per_publish = (held - sys.getsizeof(promises)) / IN_FLIGHT
        assert per_publish < BUDGET, "%.0f bytes per in-flight publish" % per_publish
        assert all(r == {} for r in client.wait_for_all(promises))
    finally:
        client.wait(client.close())


def test_the_core_keeps_nothing_of_a_publish_once_confirmed():
    """In the protocol core alone: under 500 bytes per publish in flight, and nothing left once confirmed."""
    ack = spec.METHODS_BY_NAME["basic.ack"]
    core = Core()
    connect = core.open()
    assert [number for number, _result in core.take_results()] == [connect]
    core.record = False  # the recording transport would hold the frames
    confirmed = 0

    def publish():
        return [core.publish("q", BODY) for _ in range(IN_FLIGHT)]

    def confirm_and_take():
        nonlocal confirmed
        confirmed += IN_FLIGHT
        core.feed([(1, 1, ack.encode(delivery_tag=confirmed, multiple=True))])  # the default exchange's channel
        return core.take_results()

    gc.collect()
    tracemalloc.start()  # one session: memory freed later counts only if it was allocated under it
    try:
        start = tracemalloc.get_traced_memory()[0]
        numbers = publish()
        per_publish = (tracemalloc.get_traced_memory()[0] - start - sys.getsizeof(numbers)) / IN_FLIGHT
        assert per_publish < BUDGET, "%.0f bytes per in-flight publish" % per_publish
        assert core.pending() == numbers == core.in_flight_publishes()
        results = confirm_and_take()
        assert results == [(number, {}) for number in numbers] and core.pending() == []
        del numbers, results

        # From then on (the promise tables have their size) a round of publishes and confirms keeps nothing.
        gc.collect()
        settled = tracemalloc.get_traced_memory()[0]
        numbers = publish()
        assert [number for number, result in confirm_and_take() if result == {}] == numbers
        del numbers
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - settled
    finally:
        tracemalloc.stop()
    assert kept < IN_FLIGHT, "%d bytes kept after %d publishes were confirmed" % (kept, IN_FLIGHT)
    assert core.pending() == [] and core.in_flight_publishes() == []
