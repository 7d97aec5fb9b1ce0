"""puka.asyncio: the client on an asyncio loop, against the real broker."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import puka
import puka.asyncio


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_awaitable_promises_and_pipelined_publishes(amqp_url):
    async def main():
        threads = threading.active_count()
        client = puka.asyncio.Client(amqp_url)
        await client.connect_async()
        queue = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
        promises = [client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(2000)]
        results = await client.wait_all_async(promises)
        declared = await client.wait_async(client.queue_declare(queue=queue, passive=True))
        assert threading.active_count() == threads  # no threads
        await client.close_async()
        return results, declared

    results, declared = run(main())
    assert all(r == {} for r in results)
    assert declared["message_count"] == 2000


def test_async_iteration_over_a_consume_ends_with_cancel(amqp_url):
    async def main():
        async with puka.asyncio.Client(amqp_url) as client:
            queue = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
            for i in range(50):
                client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i)
            consume = client.basic_consume(queue=queue, prefetch_count=10)
            bodies = []
            async for message in client.messages(consume):
                bodies.append(message["body"])
                client.basic_ack(message)
                if len(bodies) == 50:
                    await client.wait_async(client.basic_cancel(consume))
            return bodies

    assert run(main()) == [b"%d" % i for i in range(50)]


def test_errors_raise_from_wait_async_and_can_be_returned(amqp_url, name):
    async def main():
        async with puka.asyncio.Client(amqp_url) as client:
            with pytest.raises(puka.NotFound):
                await client.wait_async(client.queue_declare(queue=name, passive=True))
            result = await client.wait_async(client.queue_declare(queue=name, passive=True), raise_errors=False)
            assert result.is_error and isinstance(result.exception, puka.NotFound)
            consume = client.basic_consume(queue="amq.rabbitmq.reply-to", no_ack=True)
            started = time.monotonic()
            assert await client.wait_async(consume, timeout=0.3) is None
            assert time.monotonic() - started < 2
            # Still usable after the error and the timeout.
            return (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]

    assert run(main()).startswith("amq.gen-")


def test_callbacks_run_on_the_loop(amqp_url):
    async def main():
        async with puka.asyncio.Client(amqp_url) as client:
            loop_thread = threading.get_ident()
            queue = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
            done = asyncio.get_running_loop().create_future()
            seen = []

            def on_message(promise, message):
                seen.append((threading.get_ident(), message["body"]))
                client.basic_ack(message)
                if len(seen) == 5 and not done.done():
                    done.set_result(None)

            client.basic_consume(queue=queue, callback=on_message)
            for i in range(5):
                client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i)
            await asyncio.wait_for(done, 10)
            return loop_thread, seen

    loop_thread, seen = run(main())
    assert [body for _, body in seen] == [b"%d" % i for i in range(5)]
    assert all(thread == loop_thread for thread, _ in seen)


def test_other_tasks_run_while_waiting(amqp_url):
    async def main():
        async with puka.asyncio.Client(amqp_url) as client:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            consume = client.basic_consume(queue="amq.rabbitmq.reply-to", no_ack=True)
            await client.wait_async(consume, timeout=0.5)
            task.cancel()
            return ticks

    assert run(main()) >= 10


def test_connection_loss_fails_awaiting_promises(amqp_url, name):
    async def main():
        client = puka.asyncio.Client(amqp_url, client_properties={"connection_name": name})
        await client.connect_async()
        consume = client.basic_consume(queue="amq.rabbitmq.reply-to", no_ack=True)
        waiter = asyncio.create_task(client.wait_async(consume))
        await asyncio.sleep(0.1)
        client._conn.fail(puka.ConnectionBroken("cut by the test"))
        client._after_io()
        with pytest.raises(puka.ConnectionBroken):
            await asyncio.wait_for(waiter, 5)

    run(main())
