#!/usr/bin/env python
"""Drive puka from your own select() loop: no wait(), no loop().

The client tells what it needs -- ``fileno()`` to watch, ``needs_write()`` for
writability, ``on_timer()`` for how long it may sleep (heartbeats, timeouts) --
and is told what happened: ``on_read()``, ``on_write()``.  ``run_any_callbacks()``
then runs the callbacks of every promise that has a result.  Any event loop can do
the same.  The steps: connect, declare a queue, publish, consume, cancel, close --
each started by the callback of the one before.

    AMQP_URL=amqp://guest:guest@localhost/ python examples/select_loop.py
"""

import os
import select
import sys

import puka

COUNT = 5

client = puka.Client(os.environ.get("AMQP_URL") or "amqp:///", heartbeat=10)
state = {"queue": None, "published": 0, "received": 0, "consume": None, "done": False}


def on_connected(promise, result):
    print("connected")
    client.queue_declare(exclusive=True, callback=on_declared)


def on_declared(promise, result):
    state["queue"] = result["queue"]
    print("declared %s" % result["queue"])
    for i in range(COUNT):
        client.basic_publish(exchange="", routing_key=state["queue"], body=b"tick %d" % i, callback=on_published)


def on_published(promise, result):
    state["published"] += 1
    if state["published"] == COUNT:
        print("published %d messages" % COUNT)
        state["consume"] = client.basic_consume(queue=state["queue"], callback=on_message)


def on_message(promise, message):
    state["received"] += 1
    print("received %r" % (message["body"],))
    client.basic_ack(message)
    if state["received"] == COUNT:
        client.basic_cancel(state["consume"], callback=on_cancelled)


def on_cancelled(promise, result):
    client.close(callback=on_closed)


def on_closed(promise, result):
    print("closed")
    state["done"] = True


def main() -> int:
    client.connect(callback=on_connected)
    while not state["done"]:
        timeout = client.on_timer()  # seconds until heartbeats/timeouts need attention (None: never)
        writers = [client] if client.needs_write() else []  # select takes objects with fileno()
        readable, writable, _ = select.select([client], writers, [], timeout)
        if readable:
            client.on_read()
        if writable:
            client.on_write()
        client.run_any_callbacks()
    return 0 if state["received"] == COUNT else 1


if __name__ == "__main__":
    sys.exit(main())
