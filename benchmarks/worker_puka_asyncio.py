"""Benchmark worker for puka.asyncio: the same scenarios as aiormq's worker, on an asyncio loop.

Publishing is pipelined the puka way: issue every publish (each returns a
promise number at once), then await them all.
"""

from __future__ import annotations

import asyncio
import os
import sys

import bench_common  # benchmarks/ is sys.path[0]: the script's own directory
import raw_amqp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import puka.asyncio  # noqa: E402  (this repository's)

args = bench_common.parse_args()


async def connect(scenario: str) -> tuple[puka.asyncio.Client, str]:
    client = puka.asyncio.Client(args.url)
    await client.connect_async()
    queue = bench_common.queue_name("puka-asyncio", scenario)
    await client.wait_async(client.queue_declare(queue=queue))
    await client.wait_async(client.queue_purge(queue=queue))
    return client, queue


async def delete_queue(client: puka.asyncio.Client, queue: str) -> None:
    await client.wait_async(client.queue_delete(queue=queue))
    await client.close_async()


async def publish_pipelined(client: puka.asyncio.Client, queue: str, body: bytes, n: int) -> None:
    promises = [client.basic_publish(exchange="", routing_key=queue, body=body) for _ in range(n)]
    results = await client.wait_all_async(promises)
    assert all(not r.is_error for r in results)


async def consume(client: puka.asyncio.Client, queue: str, n: int, prefetch: int) -> int:
    consume_promise = client.basic_consume(queue=queue, prefetch_count=prefetch)
    size = -1
    count = 0
    async for message in client.messages(consume_promise):
        client.basic_ack(message)
        size = len(message["body"])
        count += 1
        if count == n:
            await client.wait_async(client.basic_cancel(consume_promise))
    return size


async def scenario_a(args, timer):
    client, queue = await connect("a")
    with timer:
        await publish_pipelined(client, queue, b"x" * args.size, args.n)
    await delete_queue(client, queue)
    return {"count": args.n}


async def scenario_b(args, timer):
    client, queue = await connect("b")
    raw_amqp.fill(args.url, queue, args.size, args.n)
    with timer:
        size = await consume(client, queue, args.n, args.prefetch)
    assert size == args.size, size
    await delete_queue(client, queue)
    return {"count": args.n}


async def scenario_c(args, timer):
    client, queue = await connect("c")
    body = b"x" * args.size
    with timer:
        for _ in range(args.n):
            await client.wait_async(client.basic_publish(exchange="", routing_key=queue, body=body))
    await delete_queue(client, queue)
    return {"count": args.n}


def run(func):
    return lambda args, timer: asyncio.run(func(args, timer))


bench_common.main(
    "puka-asyncio",
    {name: run(func) for name, func in {"a": scenario_a, "b": scenario_b, "c": scenario_c}.items()},
    args,
    versions={"puka": bench_common.dist_version("puka")},
)
