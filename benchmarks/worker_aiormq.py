"""Benchmark worker for aiormq (asyncio) on a channel with publisher confirms.

Pipelining is ``asyncio.gather`` over the coroutines.  aiormq sends one
synchronous method at a time per channel, so scenario e's declares (gathered
on one channel) are serialized by the library; the result says so.
"""

from __future__ import annotations

import asyncio

import aiormq
import bench_common
import raw_amqp
from aiormq.abc import DeliveredMessage

args = bench_common.parse_args()


async def connect(scenario: str) -> tuple[aiormq.Connection, aiormq.Channel, str]:
    connection = await aiormq.connect(args.url)
    channel = await connection.channel(publisher_confirms=True)
    queue = bench_common.queue_name("aiormq", scenario)
    await channel.queue_declare(queue)
    await channel.queue_purge(queue)
    return connection, channel, queue


async def delete_queue(connection: aiormq.Connection, channel: aiormq.Channel, queue: str) -> None:
    await channel.queue_delete(queue)
    await connection.close()


async def publish_pipelined(channel: aiormq.Channel, queue: str, body: bytes, n: int) -> None:
    confirms = await asyncio.gather(*(channel.basic_publish(body, routing_key=queue) for _ in range(n)))
    assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirms)


async def consume(channel: aiormq.Channel, queue: str, n: int, prefetch: int) -> int:
    """Take ``n`` messages with an ack each; returns the size of the last body."""
    done = asyncio.get_running_loop().create_future()
    received = [0, -1]

    async def on_message(message: DeliveredMessage) -> None:
        await channel.basic_ack(message.delivery_tag)
        received[0] += 1
        received[1] = len(message.body)
        if received[0] == n and not done.done():
            done.set_result(None)

    await channel.basic_qos(prefetch_count=prefetch)
    ok = await channel.basic_consume(queue, on_message)
    await done
    await channel.basic_cancel(ok.consumer_tag)
    return received[1]


async def scenario_a(args, timer):
    connection, channel, queue = await connect("a")
    with timer:
        await publish_pipelined(channel, queue, b"x" * args.size, args.n)
    await delete_queue(connection, channel, queue)
    return {"count": args.n}


async def scenario_b(args, timer):
    connection, channel, queue = await connect("b")
    raw_amqp.fill(args.url, queue, args.size, args.n)
    with timer:
        size = await consume(channel, queue, args.n, args.prefetch)
    assert size == args.size, size
    await delete_queue(connection, channel, queue)
    return {"count": args.n}


async def scenario_c(args, timer):
    connection, channel, queue = await connect("c")
    body = b"x" * args.size
    with timer:
        for _ in range(args.n):
            await channel.basic_publish(body, routing_key=queue)
    await delete_queue(connection, channel, queue)
    return {"count": args.n}


async def scenario_d(args, timer):
    connection, channel, queue = await connect("d")
    with timer:
        await publish_pipelined(channel, queue, b"x" * args.size, args.n)
        size = await consume(channel, queue, args.n, args.prefetch)
    assert size == args.size, size
    await delete_queue(connection, channel, queue)
    return {"count": args.n}


async def scenario_e(args, timer):
    connection = await aiormq.connect(args.url)
    channel = await connection.channel()
    with timer:
        oks = await asyncio.gather(*(channel.queue_declare("", exclusive=True) for _ in range(args.n)))
    assert len({ok.queue for ok in oks}) == args.n
    await connection.close()
    return {"count": args.n, "note": "gathered on one channel: aiormq serializes them"}


def run(func):
    return lambda args, timer: asyncio.run(func(args, timer))


bench_common.main(
    "aiormq",
    {
        name: run(func)
        for name, func in {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e}.items()
    },
    args,
    versions={"aiormq": bench_common.dist_version("aiormq"), "pamqp": bench_common.dist_version("pamqp")},
)
