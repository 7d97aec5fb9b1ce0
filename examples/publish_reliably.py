#!/usr/bin/env python
"""Publish until every message is confirmed, with a new connection after each failure.

With ``recovery=False`` puka does not reconnect by itself: when the connection
goes, the publishes in flight fail, and whether the broker got them is unknown.
This loop makes a new client and republishes what was not confirmed, so every
message arrives at least once -- some maybe twice.  (By default, the client
recovers and republishes by itself: see docs/reliability.rst.)

    AMQP_URL=amqp://guest:guest@localhost/ python examples/publish_reliably.py [COUNT [QUEUE]]
"""

import os
import sys
import time

import puka


def publish_reliably(url, queue, bodies):
    """Publish every body to ``queue`` until each one is confirmed; returns the connections it took."""
    pending = list(bodies)
    connections = 0
    while pending:
        client = puka.Client(url, connection_timeout=5, recovery=False)
        connections += 1
        try:
            client.wait(client.connect())
            client.wait(client.queue_declare(queue=queue, durable=True))  # declare again what must exist
            promises = [
                client.basic_publish(exchange="", routing_key=queue, body=body, headers={"delivery_mode": 2})
                for body in pending
            ]
            results = [client.wait(promise, raise_errors=False) for promise in promises]
            pending = [body for body, result in zip(pending, results) if result.is_error]
        except puka.ConnectionBroken:
            time.sleep(1)  # the broker is away: try again a little later
        finally:
            client.wait(client.close())
    return connections


def main(count=10, queue="puka-example-reliable"):
    url = os.environ.get("AMQP_URL") or "amqp:///"
    connections = publish_reliably(url, queue, [b"job %d" % i for i in range(count)])
    print(" [*] %d messages confirmed (%d connection%s)" % (count, connections, "" if connections == 1 else "s"))
    with puka.Client(url) as client:
        deleted = client.wait(client.queue_delete(queue=queue))
    print(" [*] Queue deleted with %d messages in it" % deleted["message_count"])
    return 0


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    queue = sys.argv[2] if len(sys.argv) > 2 else "puka-example-reliable"
    sys.exit(main(count, queue))
