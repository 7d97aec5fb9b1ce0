#!/usr/bin/env python
"""Send a few messages to a queue, the blocking way (the original puka's send.py).

    AMQP_URL=amqp://guest:guest@localhost/ python examples/sync_send.py [COUNT [QUEUE]]

Run sync_receive.py afterwards to take them (and delete the queue).  The queue
expires by itself a minute after it was last used, so nothing is left behind
when nobody receives.
"""

import os
import sys

import puka

QUEUE = "puka-example-hello"  # or the second argument
#: Both scripts declare the queue with the same arguments (else: PreconditionFailed).
QUEUE_ARGUMENTS = {"x-expires": 60000}


def main(count: int = 3, queue: str = QUEUE) -> int:
    client = puka.Client(os.environ.get("AMQP_URL") or "amqp:///")
    promise = client.connect()
    client.wait(promise)

    promise = client.queue_declare(queue=queue, arguments=QUEUE_ARGUMENTS)
    client.wait(promise)

    for i in range(count):
        promise = client.basic_publish(exchange="", routing_key=queue, body=b"Hello world! %d" % i)
        client.wait(promise)  # returns once the broker confirmed the message
        print(" [*] Message %d sent" % i)

    promise = client.close()
    client.wait(promise)
    return 0


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    queue = sys.argv[2] if len(sys.argv) > 2 else QUEUE
    sys.exit(main(count, queue))
