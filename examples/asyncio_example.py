#!/usr/bin/env python
"""puka on asyncio: awaitable promises, pipelined publishes, ``async for`` over a consume.

AMQP_URL=amqp://guest:guest@localhost/ python examples/asyncio_example.py
"""

import asyncio
import os
import sys

import puka.asyncio

COUNT = 10


async def main() -> int:
    async with puka.asyncio.Client(os.environ.get("AMQP_URL") or "amqp:///") as client:
        # A server-named, exclusive queue: it goes away with the connection.
        declared = await client.wait_async(client.queue_declare(exclusive=True))
        queue = declared["queue"]

        # Publish everything at once, then await every confirm.
        promises = [client.basic_publish(exchange="", routing_key=queue, body=b"message %d" % i) for i in range(COUNT)]
        await client.wait_all_async(promises)
        print("published %d messages to %s" % (COUNT, queue))

        consume = client.basic_consume(queue=queue, prefetch_count=5)
        received = 0
        async for message in client.messages(consume):
            received += 1
            print("received %r" % (message["body"],))
            client.basic_ack(message)
            if received == COUNT:
                await client.wait_async(client.basic_cancel(consume))  # ends the async for
        print("received all %d messages" % received)
    return 0 if received == COUNT else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
