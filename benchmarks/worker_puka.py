"""Benchmark worker for the puka API: this project's puka, or the original puka 0.0.8.

Both have the same package name and the same API, so one script drives both;
what differs is the interpreter that runs it:

* ``--impl puka``: the dev venv's python; this repository's ``puka`` is put first on ``sys.path``;
* ``--impl puka008``: the python of a venv holding ``puka==0.0.8`` and ``future``
  (``tools/bench.py`` makes ``.peers/venv-puka008``); the repository is kept off ``sys.path``.

* ``--impl puka --repo DIR``: the puka of another checkout (``tools/bench.py --baseline``), for A/B
  comparisons run by this very script.

The import is checked against the expected location, so the wrong puka can never be measured.
Bodies are sent as bytes by both; 0.0.8 hands them back decoded to ``str``.
"""

from __future__ import annotations

import os
import sys

import bench_common  # benchmarks/ is sys.path[0]: the script's own directory
import raw_amqp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
args = bench_common.parse_args(
    extra={"--impl": {"choices": ["puka", "puka008"], "default": "puka"}, "--repo": {"default": None}}
)
if args.repo:
    ROOT = os.path.abspath(args.repo)
if args.impl == "puka":
    sys.path.insert(0, ROOT)
else:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != ROOT]

import puka  # noqa: E402  (which one depends on --impl)

_in_repo = os.path.abspath(puka.__file__).startswith(os.path.join(ROOT, "puka") + os.sep)
if _in_repo != (args.impl == "puka"):
    raise SystemExit("worker_puka: --impl %s imported the wrong puka: %s" % (args.impl, puka.__file__))


def connect() -> puka.Client:
    client = puka.Client(args.url)
    client.wait(client.connect())
    return client


def fresh_queue(client: puka.Client, scenario: str) -> str:
    queue = bench_common.queue_name(args.impl, scenario)
    client.wait(client.queue_declare(queue=queue))
    client.wait(client.queue_purge(queue=queue))
    return queue


def delete_queue(client: puka.Client, queue: str) -> None:
    client.wait(client.queue_delete(queue=queue))
    client.wait(client.close())


def publish_pipelined(client: puka.Client, queue: str, body: bytes, n: int) -> None:
    promises = [client.basic_publish(exchange="", routing_key=queue, body=body) for _ in range(n)]
    for promise in promises:
        client.wait(promise)


def consume(client: puka.Client, queue: str, n: int, prefetch: int) -> int:
    """Take ``n`` messages with an ack each; returns the size of the last body."""
    consume_promise = client.basic_consume(queue=queue, prefetch_count=prefetch)
    size = -1
    for _ in range(n):
        message = client.wait(consume_promise)
        client.basic_ack(message)
        size = len(message["body"])
    client.wait(client.basic_cancel(consume_promise))
    return size


def scenario_a(args, timer):
    client = connect()
    queue = fresh_queue(client, "a")
    body = b"x" * args.size
    with timer:
        publish_pipelined(client, queue, body, args.n)
    delete_queue(client, queue)
    return {"count": args.n}


def scenario_b(args, timer):
    client = connect()
    queue = fresh_queue(client, "b")
    raw_amqp.fill(args.url, queue, args.size, args.n)
    with timer:
        size = consume(client, queue, args.n, args.prefetch)
    assert size == args.size, size
    delete_queue(client, queue)
    return {"count": args.n}


def scenario_c(args, timer):
    client = connect()
    queue = fresh_queue(client, "c")
    body = b"x" * args.size
    with timer:
        for _ in range(args.n):
            client.wait(client.basic_publish(exchange="", routing_key=queue, body=body))
    delete_queue(client, queue)
    return {"count": args.n}


def scenario_d(args, timer):
    client = connect()
    queue = fresh_queue(client, "d")
    body = b"x" * args.size
    with timer:
        publish_pipelined(client, queue, body, args.n)
        size = consume(client, queue, args.n, args.prefetch)
    assert size == args.size, size
    delete_queue(client, queue)
    return {"count": args.n}


def scenario_e(args, timer):
    client = connect()
    with timer:
        promises = [client.queue_declare(queue="", exclusive=True) for _ in range(args.n)]
        names = {client.wait(promise)["queue"] for promise in promises}
    assert len(names) == args.n
    client.wait(client.close())  # the exclusive queues go with the connection
    return {"count": args.n, "note": "pipelined on hidden channels"}


bench_common.main(
    args.impl,
    {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e},
    args,
    versions={"puka": getattr(puka, "__version__", None) or bench_common.dist_version("puka")},
)
