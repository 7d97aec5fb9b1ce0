"""puka.asyncio: the client on an asyncio loop, against the real broker."""

from __future__ import annotations

import asyncio
import threading

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
            queue = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
            consume = client.basic_consume(queue=queue, no_ack=True)
            assert await client.wait_async(consume, timeout=0.3) is None
            # Still usable after the error and the timeout, and the consume went on: wait again later.
            await client.wait_async(client.basic_publish(exchange="", routing_key=queue, body=b"later"))
            return (await client.wait_async(consume))["body"]

    assert run(main()) == b"later"


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
            queue = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
            consume = client.basic_consume(queue=queue, no_ack=True)
            steps = []

            async def publisher():
                # Only another task publishes what the wait below is waiting for: if waiting blocked
                # the loop, this task would never run and the wait would never end.
                for step in range(10):
                    steps.append(step)
                    await asyncio.sleep(0)
                client.basic_publish(exchange="", routing_key=queue, body=b"from another task")

            task = asyncio.create_task(publisher())
            message = await client.wait_async(consume)
            await task
            return steps, message["body"]

    assert run(main()) == (list(range(10)), b"from another task")


def test_connection_loss_fails_awaiting_promises(proxy):
    async def main():
        client = puka.asyncio.Client(proxy.url, recovery=False)  # fail-fast: the loss fails the promises
        await client.connect_async()
        queue = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
        consume = client.basic_consume(queue=queue, no_ack=True)
        waiter = asyncio.create_task(client.wait_async(consume))
        await asyncio.sleep(0)  # the waiter is waiting
        assert not waiter.done()
        proxy.cut()  # the network fails (RST)
        with pytest.raises(puka.ConnectionBroken, match="connection to 127.0.0.1:%d" % proxy.port):
            await waiter
        # Every later call raises ConnectionBroken at once.
        with pytest.raises(puka.ConnectionBroken):
            client.basic_publish(exchange="", routing_key=queue, body=b"after")
        await client.close_async()  # a no-op on a broken connection

    run(main())
