"""Driving the client: when acks reach the broker, polling, loop_break, waiting on lists, asyncio.

Against the real broker.  Where a test needs "the application crashed now", it
half-closes the client's socket (``socket().shutdown(SHUT_WR)``): what the
client wrote before reaches the broker, nothing after it does, and the broker
then drops the connection and requeues what it still counts as unacknowledged.
Whether an ack was *written* is read from the broker, not from what the client
queued: before the crash, with no further call into the client, the test waits
until the broker counts the queue's unacknowledged messages as the acks written
so far leave them (``rabbitmqctl list_queues``; an ack that was never written
leaves the count where it was until the wait gives up), and afterwards it checks
what a fresh client finds in the queue.  (Waiting first matters: RabbitMQ may
drop an ack that arrives just before the connection's end, under load.)
"""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import time

import pytest
from seam import install_client_clock, unsent_bytes

import puka
import puka.asyncio
from puka.tracing import FrameRecorder

# --- helpers --------------------------------------------------------------------------------------


def connected(amqp_url, recorder=None):
    """A client of its own (no recovery: a crashed one stays crashed)."""
    app = puka.Client(amqp_url, recovery=False, middleware=[recorder] if recorder is not None else [])
    app.wait(app.connect(), timeout=10)
    return app


def publish(client, queue, *bodies):
    for body in bodies:
        client.wait(client.basic_publish(exchange="", routing_key=queue, body=body), timeout=10)


def deliveries_read(recorder):
    return sum(1 for f in recorder.frames if f.direction == "in" and f.name == "basic.deliver")


def read_deliveries(app, recorder, queue, count):
    """Drive ``app`` (round trips on another promise) until ``count`` deliveries were read from its socket.

    The deliveries are then results waiting in the client: neither taken by a wait on
    their consume nor handed to its callback.
    """
    for _ in range(200):
        if deliveries_read(recorder) >= count:
            return
        app.wait(app.queue_declare(queue=queue, passive=True), timeout=10)
    raise AssertionError("only %d of %d deliveries arrived" % (deliveries_read(recorder), count))


def unacked_at_broker(queue):
    """How many of ``queue``'s messages the broker counts as delivered and not yet acknowledged."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for line in listed.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == queue:
            return int(fields[1])
    raise AssertionError("queue %s not listed by rabbitmqctl" % queue)


def acks_reached_broker(queue, unacked):
    """Wait -- calling nothing of the client -- until the broker counts ``unacked`` unacknowledged."""
    deadline = time.monotonic() + 30
    while True:
        found = unacked_at_broker(queue)
        if found == unacked:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                "the broker still counts %d unacknowledged, not %d: an ack was not written" % (found, unacked)
            )
        time.sleep(0.05)


def crash(app):
    """The application dies here: nothing more is written (what was written reaches the broker)."""
    app.socket().shutdown(socket.SHUT_WR)


def left_in_queue(client, queue):
    """The bodies the broker still holds in ``queue`` once the crashed consumer is gone, oldest first."""
    for _ in range(3000):
        if client.wait(client.queue_declare(queue=queue, passive=True), timeout=10)["consumer_count"] == 0:
            break
        time.sleep(0.01)  # the broker notices the closed connection (a busy broker takes a while)
    else:
        raise AssertionError("the crashed client's consumer is still registered")
    bodies = []
    while True:
        got = client.wait(client.basic_get(queue=queue, no_ack=True), timeout=10)
        if got.get("empty"):
            return bodies
        bodies.append(got["body"])


# --- item 4: acks are not held back while the application works -----------------------------------------


def test_an_ack_with_no_further_delivery_waiting_is_written_at_once(amqp_url, client, queue):
    publish(client, queue, b"only")
    app = connected(amqp_url)
    try:
        consume = app.basic_consume(queue=queue, prefetch_count=10)
        message = app.wait(consume, timeout=10)
        app.basic_ack(message)
        acks_reached_broker(queue, 0)  # the application's own work: no further call into the client
        crash(app)
        assert left_in_queue(client, queue) == []
    finally:
        app.socket().close()


def test_an_ack_given_while_a_delivery_waits_is_written_before_wait_hands_that_one_over(amqp_url, client, queue):
    # The scenario: m1 = wait(); basic_ack(m1); wait() returns a buffered m2; the application
    # works on m2 and crashes: m1 must not come back.
    publish(client, queue, b"m1", b"m2")
    recorder = FrameRecorder()
    app = connected(amqp_url, recorder)
    try:
        consume = app.basic_consume(queue=queue, prefetch_count=10)
        m1 = app.wait(consume, timeout=10)
        read_deliveries(app, recorder, queue, 2)  # m2 waits in the client
        app.basic_ack(m1)
        assert app.wait(consume, timeout=10)["body"] == b"m2"
        acks_reached_broker(queue, 1)  # working on m2: m1's ack went out before wait() handed m2 over
        crash(app)
        assert left_in_queue(client, queue) == [b"m2"]
    finally:
        app.socket().close()


@pytest.mark.parametrize("call", ["queue_declare", "basic_publish", "basic_get", "run_any_callbacks", "wait"])
def test_every_call_into_the_client_writes_the_acks_given_before(amqp_url, client, queue, name, call):
    publish(client, queue, b"m1", b"m2")
    recorder = FrameRecorder()
    app = connected(amqp_url, recorder)
    try:
        consume = app.basic_consume(queue=queue, prefetch_count=10)
        m1 = app.wait(consume, timeout=10)
        read_deliveries(app, recorder, queue, 2)
        app.basic_ack(m1)  # deferred: m2 waits in the client, so a later ack may merge with it
        if call == "queue_declare":
            app.queue_declare(queue=name + "-other")
        elif call == "basic_publish":
            app.basic_publish(exchange="", routing_key=name + "-nowhere", body=b"x")
        elif call == "basic_get":
            app.basic_get(queue=name + "-missing")
        elif call == "run_any_callbacks":
            app.run_any_callbacks()  # (drops m2: a promise without a callback)
        else:
            other = app.queue_declare(queue=queue, passive=True)
            assert app.wait(other, timeout=10)["queue"] == queue
        acks_reached_broker(queue, 1)  # m2 is still unacknowledged, m1 is not
        crash(app)
        assert b"m1" not in left_in_queue(client, queue)
    finally:
        app.socket().close()


def test_acks_given_in_a_callback_are_written_before_the_next_callback_runs(amqp_url, client, queue):
    publish(client, queue, b"m1", b"m2")
    recorder = FrameRecorder()
    app = connected(amqp_url, recorder)
    seen = []

    def on_message(promise, message):
        seen.append(message["body"])
        if message["body"] == b"m1":
            app.basic_ack(message)
        else:
            acks_reached_broker(queue, 1)  # m1's ack went out before this callback ran
            crash(app)  # working on m2, the application dies
            app.loop_break()

    try:
        app.basic_consume(queue=queue, prefetch_count=10, callback=on_message)
        read_deliveries(app, recorder, queue, 2)  # both wait for their callback
        app.loop(timeout=10)
        assert seen == [b"m1", b"m2"]
        assert left_in_queue(client, queue) == [b"m2"]
    finally:
        app.socket().close()


def test_acks_given_between_two_calls_merge_into_one_multiple_ack(amqp_url, client, queue):
    publish(client, queue, b"1", b"2", b"3", b"4")
    recorder = FrameRecorder()
    app = connected(amqp_url, recorder)
    try:
        consume = app.basic_consume(queue=queue, prefetch_count=10)
        read_deliveries(app, recorder, queue, 4)
        first, second, third = (app.wait(consume, timeout=10) for _ in range(3))
        for message in (first, second, third):
            app.basic_ack(message)  # the 4th still waits in the client: deferred, merged
        assert app.wait(consume, timeout=10)["body"] == b"4"
        acks = [f.method for f in recorder.frames if f.direction == "out" and f.name == "basic.ack"]
        assert [(a["delivery_tag"], a["multiple"]) for a in acks] == [(third["delivery_tag"], True)]
    finally:
        app.wait(app.close(), timeout=10)


def test_close_writes_the_deferred_acks(amqp_url, client, queue):
    publish(client, queue, b"m1", b"m2")
    recorder = FrameRecorder()
    app = connected(amqp_url, recorder)
    consume = app.basic_consume(queue=queue, prefetch_count=10)
    m1 = app.wait(consume, timeout=10)
    read_deliveries(app, recorder, queue, 2)
    app.basic_ack(m1)  # deferred
    app.wait(app.close(), timeout=10)
    assert left_in_queue(client, queue) == [b"m2"]


# --- item 9: timeout=0 polls ---------------------------------------------------------------------------


def readable(client):
    select.select([client.fileno()], [], [], 1.0)


def test_wait_with_timeout_0_polls_the_network_once(client, queue):
    declare = client.queue_declare(queue=queue, passive=True)
    for _ in range(100):
        result = client.wait(declare, timeout=0)  # never blocks; writes the declare, reads its answer
        if result is not None:
            break
        readable(client)
    else:
        raise AssertionError("polling with wait(timeout=0) never read the answer")
    assert result["queue"] == queue


def test_loop_with_timeout_0_polls_the_network_once_and_runs_the_ready_callbacks(client, queue):
    answers = []
    client.queue_declare(queue=queue, passive=True, callback=lambda promise, result: answers.append(result))
    for _ in range(100):
        client.loop(timeout=0)
        if answers:
            break
        readable(client)
    assert [answer["queue"] for answer in answers] == [queue]


# --- item 10: loop_break ends loop() after that callback ---------------------------------------------------


def test_loop_break_returns_after_the_callback_that_called_it(amqp_url, client, queue):
    publish(client, queue, b"1", b"2", b"3")
    recorder = FrameRecorder()
    app = connected(amqp_url, recorder)
    seen = []

    def on_message(promise, message):
        seen.append(message["body"])
        app.basic_ack(message)
        app.loop_break()

    try:
        app.basic_consume(queue=queue, prefetch_count=10, callback=on_message)
        read_deliveries(app, recorder, queue, 3)  # three callbacks ready to run
        app.loop(timeout=10)
        assert seen == [b"1"]
        app.loop(timeout=10)
        assert seen == [b"1", b"2"]  # the others waited for the next loop()
        app.run_any_callbacks()  # runs every ready callback (loop_break is loop()'s)
        assert seen == [b"1", b"2", b"3"]
    finally:
        app.wait(app.close(), timeout=10)


# --- item 11: wait() on a list costs what wait() on one promise costs ------------------------------------


def test_wait_on_a_list_hands_over_a_waiting_result_without_writing(amqp_url, client, queue):
    publish(client, queue, b"1", b"2")
    recorder = FrameRecorder()
    app = connected(amqp_url, recorder)
    try:
        idle = app.wait(app.queue_declare(exclusive=True), timeout=10)["queue"]
        never = app.basic_consume(queue=idle, no_ack=True)
        consume = app.basic_consume(queue=queue, no_ack=True)
        read_deliveries(app, recorder, queue, 2)
        app.basic_publish(exchange="", routing_key=idle, body=b"queued")  # waits in the send buffer
        assert unsent_bytes(app) > 0
        assert app.wait(consume, timeout=10)["body"] == b"1"
        assert unsent_bytes(app) > 0  # a result was waiting: handed over, nothing else done
        assert app.wait([never, consume], timeout=10)["body"] == b"2"
        assert unsent_bytes(app) > 0  # the same for a list
    finally:
        app.wait(app.close(), timeout=10)


# --- item 12: asyncio heartbeats from the agreed interval --------------------------------------------------


def test_asyncio_client_sends_heartbeats_at_the_agreed_interval_from_the_start(amqp_url, monkeypatch):
    clock = install_client_clock(monkeypatch)
    recorder = FrameRecorder()

    def heartbeats_sent():
        return recorder.names("out").count("heartbeat")

    async def a_few_loop_turns():
        for _ in range(10):
            await asyncio.sleep(0)  # one loop turn: the timers due run

    async def main():
        asyncio.get_running_loop().time = clock.monotonic  # the loop's timers follow the fake clock too
        client = puka.asyncio.Client(amqp_url, heartbeat=1, middleware=[recorder])
        await client.connect_async()  # its first timer was the connection timeout, 10 s away
        try:
            # Idle from here (the fake clock stands still; anything read would run the timers too).
            await client.wait_async(client.queue_declare(exclusive=True))
            assert heartbeats_sent() == 0
            clock.advance(0.6)  # past half the agreed interval with nothing sent: only a timer can notice
            await a_few_loop_turns()
            assert heartbeats_sent() == 1
            clock.advance(0.6)
            await a_few_loop_turns()
            assert heartbeats_sent() == 2
        finally:
            await client.close_async()

    asyncio.run(main())


# --- item 13: cancelling the awaiting task loses no message ------------------------------------------------


async def cancelled_as_its_message_arrives(client, recorder, queue, consume, waiters):
    """Start ``waiters`` tasks awaiting ``consume``; publish one message; cancel the first waiter
    after the message was read and handed over, before that task resumes.  Returns the other tasks."""
    tasks = [asyncio.create_task(client.wait_async(consume)) for _ in range(waiters)]
    await asyncio.sleep(0)  # they await the consume, the first one first
    loop = asyncio.get_running_loop()

    def cancel_once_delivered():
        # Runs every loop turn, ahead of the turn's I/O: the turn after the delivery was
        # read and handed over, it cancels the first task before that task resumes.
        if deliveries_read(recorder):
            tasks[0].cancel()
        else:
            loop.call_soon(cancel_once_delivered)

    loop.call_soon(cancel_once_delivered)
    client.basic_publish(exchange="", routing_key=queue, body=b"one")
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    return tasks[1:]


def test_cancelling_the_task_awaiting_a_consume_as_its_message_arrives_loses_nothing(amqp_url):
    async def main():
        recorder = FrameRecorder()
        async with puka.asyncio.Client(amqp_url, middleware=[recorder]) as client:
            queue = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
            consume = client.basic_consume(queue=queue, prefetch_count=10)
            await cancelled_as_its_message_arrives(client, recorder, queue, consume, 1)
            client.basic_publish(exchange="", routing_key=queue, body=b"two")
            first = await client.wait_async(consume)  # the next call gets it
            assert first["body"] == b"one"
            second = await client.wait_async(consume)
            client.basic_ack(second, multiple=True)
            return second["body"]

    assert asyncio.run(asyncio.wait_for(main(), 60)) == b"two"


def test_a_message_whose_woken_task_was_cancelled_goes_to_the_next_waiting_task(amqp_url):
    async def main():
        recorder = FrameRecorder()
        async with puka.asyncio.Client(amqp_url, middleware=[recorder]) as client:
            queue = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
            consume = client.basic_consume(queue=queue, prefetch_count=10)
            (other,) = await cancelled_as_its_message_arrives(client, recorder, queue, consume, 2)
            for _ in range(10):  # a few loop turns, no I/O needed: the message is in the client
                if other.done():
                    break
                await asyncio.sleep(0)
            assert other.done(), "the other waiting task was not given the message"
            message = other.result()
            client.basic_ack(message)
            return message["body"]

    assert asyncio.run(asyncio.wait_for(main(), 60)) == b"one"
