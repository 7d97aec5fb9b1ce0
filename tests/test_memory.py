"""Memory held per publish in flight: promise, tag bookkeeping, nothing else."""

from __future__ import annotations

import gc
import tracemalloc

import puka

IN_FLIGHT = 100_000
#: Bytes allowed per in-flight publish beyond the body itself.
BUDGET = 500


def test_in_flight_publishes_cost_under_500_bytes_each(amqp_url):
    client = puka.Client(amqp_url)
    client.wait(client.connect())
    try:
        queue = client.wait(client.queue_declare(exclusive=True))["queue"]
        client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"warm-up"))
        body = b"x" * 100
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            promises = [client.basic_publish(exchange="", routing_key=queue, body=body) for _ in range(IN_FLIGHT)]
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        # Nothing was waited on: every publish is still in flight for the client.
        publisher = client._session.publishers[""]
        assert len(publisher.inflight) + len(publisher.backlog) == IN_FLIGHT
        unsent = client._conn.backlog  # frames not yet written (they contain the bodies)
        per_publish = (after - before - unsent) / IN_FLIGHT
        assert per_publish < BUDGET, "%.0f bytes per in-flight publish" % per_publish
        assert all(r == {} for r in client.wait_for_all(promises))
    finally:
        client.wait(client.close())
