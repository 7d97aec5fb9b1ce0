"""The ceiling: scenarios a, b and c with :class:`raw_amqp.RawClient` (d and e are skipped)."""

from __future__ import annotations

import sys

import bench_common
from raw_amqp import RawClient, fill


def scenario_a(args, timer):
    client = RawClient(args.url)
    queue = bench_common.queue_name("ceiling", "a")
    client.declare(queue)
    message = client.encode_publish(queue, b"x" * args.size)
    with timer:
        client.publish_pipelined(message, args.n)
    client.delete(queue)
    client.close()
    return {"count": args.n}


def scenario_b(args, timer):
    client = RawClient(args.url)
    queue = bench_common.queue_name("ceiling", "b")
    client.declare(queue)
    fill(args.url, queue, args.size, args.n)
    with timer:
        size = client.consume(queue, args.n, args.prefetch)
    assert size == args.size, size
    client.delete(queue)
    client.close()
    return {"count": args.n}


def scenario_c(args, timer):
    client = RawClient(args.url)
    queue = bench_common.queue_name("ceiling", "c")
    client.declare(queue)
    message = client.encode_publish(queue, b"x" * args.size)
    with timer:
        for _ in range(args.n):
            client.publish_one(message)
    client.delete(queue)
    client.close()
    return {"count": args.n}


if __name__ == "__main__":
    bench_common.main(
        "ceiling",
        {"a": scenario_a, "b": scenario_b, "c": scenario_c},
        bench_common.parse_args(),
        versions={"python": sys.version.split()[0]},
    )
