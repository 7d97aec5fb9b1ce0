#!/usr/bin/env python
"""Receive COUNT messages from the queue sync_send.py fills, then delete it (the original puka's receive.py).

    AMQP_URL=amqp://guest:guest@localhost/ python examples/sync_receive.py [COUNT [QUEUE]]

Waits at most 30 seconds for each message.
"""

import os
import sys

import puka

QUEUE = "puka-example-hello"  # or the second argument
QUEUE_ARGUMENTS = {"x-expires": 60000}


def main(count: int = 3, queue: str = QUEUE) -> int:
    client = puka.Client(os.environ.get("AMQP_URL") or "amqp:///")
    promise = client.connect()
    client.wait(promise)

    promise = client.queue_declare(queue=queue, arguments=QUEUE_ARGUMENTS)
    client.wait(promise)

    print(" [*] Waiting for %d messages." % count)
    consume_promise = client.basic_consume(queue=queue, prefetch_count=10)
    for _ in range(count):
        message = client.wait(consume_promise, timeout=30)
        if message is None:
            print(" [!] No message for 30 seconds: did sync_send.py run?", file=sys.stderr)
            return 1
        print(" [x] Received message %r" % (message["body"],))
        client.basic_ack(message)

    client.wait(client.basic_cancel(consume_promise))
    client.wait(client.queue_delete(queue=queue))
    client.wait(client.close())
    return 0


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    queue = sys.argv[2] if len(sys.argv) > 2 else QUEUE
    sys.exit(main(count, queue))
