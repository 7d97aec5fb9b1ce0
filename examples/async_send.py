#!/usr/bin/env python
"""Callbacks and client.loop(): the original puka's asynchronous style (send_async.py).

Every operation takes a ``callback(promise, result)``; ``loop()`` runs until a
callback calls ``loop_break()``.  Here: connect, declare a queue, publish ten
messages at once (the broker confirms each), check the queue holds them, delete it.

    AMQP_URL=amqp://guest:guest@localhost/ python examples/async_send.py
"""

import os
import sys

import puka

QUEUE = "puka-example-async-%d" % os.getpid()
COUNT = 10

client = puka.Client(os.environ.get("AMQP_URL") or "amqp:///")
confirmed = []


def on_connection(promise, result):
    client.queue_declare(queue=QUEUE, callback=on_queue_declare)


def on_queue_declare(promise, result):
    for i in range(COUNT):
        client.basic_publish(exchange="", routing_key=QUEUE, body=b"Hello world! %d" % i, callback=on_basic_publish)


def on_basic_publish(promise, result):
    confirmed.append(promise)
    if len(confirmed) == COUNT:
        print(" [*] %d messages sent" % COUNT)
        client.queue_delete(queue=QUEUE, callback=on_queue_delete)


def on_queue_delete(promise, result):
    print(" [*] Queue deleted with %d messages in it" % result["message_count"])
    client.loop_break()


def main() -> int:
    client.connect(callback=on_connection)
    client.loop()
    client.wait(client.close())
    return 0 if len(confirmed) == COUNT else 1


if __name__ == "__main__":
    sys.exit(main())
