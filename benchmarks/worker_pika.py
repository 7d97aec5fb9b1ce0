"""Benchmark worker for pika's BlockingConnection with publisher confirms (``confirm_delivery``).

pika's blocking channel waits for each confirm inside ``basic_publish``, so
scenario a cannot be pipelined (it is scenario c again), and it sends one
synchronous method at a time, so scenario e declares sequentially.  The results
say so in their ``note``.
"""

from __future__ import annotations

import bench_common
import pika
import raw_amqp

args = bench_common.parse_args()


def connect() -> tuple[pika.BlockingConnection, pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    return connection, channel


def fresh_queue(channel, scenario: str) -> str:
    queue = bench_common.queue_name("pika", scenario)
    channel.queue_declare(queue=queue)
    channel.queue_purge(queue=queue)
    return queue


def delete_queue(connection, channel, queue: str) -> None:
    channel.queue_delete(queue=queue)
    connection.close()


def publish_confirmed(channel, queue: str, body: bytes, n: int) -> None:
    for _ in range(n):
        channel.basic_publish(exchange="", routing_key=queue, body=body)


def consume(connection, channel, queue: str, n: int, prefetch: int) -> int:
    """Take ``n`` messages with an ack each; returns the size of the last body."""
    received = [0, -1]

    def on_message(ch, method, _properties, body):
        ch.basic_ack(method.delivery_tag)
        received[0] += 1
        received[1] = len(body)
        if received[0] == n:
            ch.stop_consuming()

    channel.basic_qos(prefetch_count=prefetch)
    channel.basic_consume(queue=queue, on_message_callback=on_message)
    channel.start_consuming()
    return received[1]


def scenario_a(args, timer):
    connection, channel = connect()
    channel.confirm_delivery()
    queue = fresh_queue(channel, "a")
    with timer:
        publish_confirmed(channel, queue, b"x" * args.size, args.n)
    delete_queue(connection, channel, queue)
    return {"count": args.n, "note": "not pipelined: basic_publish waits for its confirm"}


def scenario_b(args, timer):
    connection, channel = connect()
    queue = fresh_queue(channel, "b")
    raw_amqp.fill(args.url, queue, args.size, args.n)
    with timer:
        size = consume(connection, channel, queue, args.n, args.prefetch)
    assert size == args.size, size
    delete_queue(connection, channel, queue)
    return {"count": args.n}


def scenario_c(args, timer):
    connection, channel = connect()
    channel.confirm_delivery()
    queue = fresh_queue(channel, "c")
    with timer:
        publish_confirmed(channel, queue, b"x" * args.size, args.n)
    delete_queue(connection, channel, queue)
    return {"count": args.n}


def scenario_d(args, timer):
    connection, channel = connect()
    channel.confirm_delivery()
    queue = fresh_queue(channel, "d")
    with timer:
        publish_confirmed(channel, queue, b"x" * args.size, args.n)
        size = consume(connection, channel, queue, args.n, args.prefetch)
    assert size == args.size, size
    delete_queue(connection, channel, queue)
    return {"count": args.n, "note": "publishes not pipelined"}


def scenario_e(args, timer):
    connection, channel = connect()
    with timer:
        names = {channel.queue_declare(queue="", exclusive=True).method.queue for _ in range(args.n)}
    assert len(names) == args.n
    connection.close()
    return {"count": args.n, "note": "sequential: pika cannot pipeline declares"}


bench_common.main(
    "pika",
    {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e},
    args,
    versions={"pika": bench_common.dist_version("pika")},
)
