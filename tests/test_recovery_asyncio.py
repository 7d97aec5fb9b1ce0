"""Connection recovery with puka.asyncio against the real RabbitMQ: the core scenarios of tests/test_recovery.py.

The asyncio client must follow each new connection (watch its socket, run its timers) while the application
only awaits: every scenario here runs on one event loop, the faults injected while the loop runs (a blocking
``rabbitmqctl`` goes to a thread).  The helpers, the loss check (:class:`test_recovery.Traffic`) and the
assertions are those of tests/test_recovery.py.
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time
import tracemalloc
import uuid
from collections import Counter

import pytest
from faults import Proxy, fd_count, wait_until
from test_recovery import (
    PATIENCE,
    Hooks,
    Results,
    Traffic,
    Watch,
    bindings_to,
    check_consumer_restored,
    check_recovered_once,
    cleaning_up,
    closed_port,
    connection_pids,
    ctl,
    fast,
    queue_exists,
    recoveries_counted,
    stale_settlements,
    telemetry,
)

import puka
import puka.asyncio

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cleanup(amqp_url):
    """Queues and exchanges to delete after the test."""
    yield from cleaning_up(amqp_url)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 100))


#: What reached the event loop's exception handler during the running scenario (an error of puka's callbacks).
LOOP_ERRORS: list = []


def check_loop() -> None:
    if LOOP_ERRORS:
        context = LOOP_ERRORS[0]
        raise AssertionError(
            "an exception escaped into the event loop: %s: %r" % (context.get("message"), context.get("exception"))
        )


async def until(predicate, timeout: float = PATIENCE) -> bool:
    """Let the loop run until ``predicate()``; False when ``timeout`` passes first.

    An exception that escaped into the event loop (from the client's callbacks) fails the test at once.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        check_loop()
        if time.monotonic() >= deadline:
            return False
        for traffic in list(Traffic.running):
            traffic.top_up()
        await asyncio.sleep(0.005)
    return True


async def connect(url: str, name: str, clients: list, recovery=None, **kwargs) -> puka.asyncio.Client:
    client = puka.asyncio.Client(
        url,
        recovery=fast() if recovery is None else recovery,
        client_properties={"connection_name": name},
        **kwargs,
    )
    clients.append(client)
    await asyncio.wait_for(client.connect_async(), PATIENCE)
    return client


async def close_all(clients: list) -> None:
    for client in clients:
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), PATIENCE)
        except Exception:  # noqa: S110 - the test closed or broke it
            pass


def scenario(main):
    """Run ``main(clients)`` on a new loop; every client it made is closed on the way out."""

    async def wrapped():
        clients: list = []
        LOOP_ERRORS.clear()
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: LOOP_ERRORS.append(context))
        try:
            result = await main(clients)
            check_loop()
            return result
        finally:
            await close_all(clients)

    return run(wrapped())


async def setup(traffic: Traffic) -> None:
    for declare in traffic.declarations():
        await traffic.client.wait_async(declare(), timeout=PATIENCE)
    traffic.start_consuming()


async def settle_and_verify(traffic: Traffic, more: int = 100) -> None:
    """Some traffic after the recovery, then everything settled and checked."""
    target = len(traffic.sent) + more
    assert await until(lambda: traffic.confirmed >= target)
    traffic.stop()
    assert await until(traffic.settled), (traffic.confirmed, len(traffic.sent))
    declared = await traffic.client.wait_async(traffic.client.queue_declare(traffic.counted, passive=True))
    traffic.verify(declared["message_count"])


async def restored(queue: str, tag: str, prefetch: int | None = None) -> None:
    await asyncio.to_thread(check_consumer_restored, queue, tag, prefetch)


# --- 1. a TCP cut during pipelined confirmed publishes -------------------------------------------


def test_a_cut_during_pipelined_confirmed_publishes_loses_nothing(proxy, cleanup, name):
    async def main(clients):
        watch = Watch()
        client = await connect(proxy.url, name, clients, middleware=[watch])
        traffic = Traffic(client, name, cleanup, window=200, total=1500)
        await setup(traffic)
        watch.when_lost = traffic.snapshot
        proxy.throttle(20000, "up")
        traffic.start()
        assert await until(lambda: traffic.confirmed >= 20 and traffic.received)
        proxy.cut()
        proxy.throttle(None)
        assert await until(traffic.settled), (traffic.confirmed, len(traffic.sent))
        declared = await client.wait_async(client.queue_declare(traffic.counted, passive=True))
        traffic.verify(declared["message_count"])
        info = check_recovered_once(watch)
        assert 0 < info["republished"] <= traffic.unconfirmed_at_loss
        await restored(traffic.consumed, traffic.tag)
        assert not stale_settlements(watch.frames)

    scenario(main)


# --- 2. a stall, noticed by heartbeats -------------------------------------------------------------


def test_a_stall_noticed_by_heartbeats_is_recovered(proxy, cleanup, name):
    async def main(clients):
        watch = Watch()
        client = await connect(proxy.url, name, clients, heartbeat=1, middleware=[watch])
        traffic = Traffic(client, name, cleanup, window=50)
        await setup(traffic)

        def lost():
            traffic.snapshot()
            proxy.resume()

        watch.when_lost = lost
        traffic.start()
        assert await until(lambda: traffic.confirmed >= 50 and traffic.received)
        proxy.stall()
        assert await until(lambda: watch.lost)
        assert "heartbeat" in str(watch.lost[0])
        # The first attempt is immediate and the proxy lets it through: 5 s is plenty.
        assert await until(lambda: watch.recovered, timeout=5), "no attempt after the loss: %d" % proxy.accepted
        await settle_and_verify(traffic)
        check_recovered_once(watch)
        await restored(traffic.consumed, traffic.tag)
        assert not stale_settlements(watch.frames)

    scenario(main)


# --- 3. rabbitmqctl close_connection ---------------------------------------------------------------------


def test_a_connection_closed_by_the_broker_is_recovered(amqp_url, cleanup, name):
    async def main(clients):
        watch = Watch()
        client = await connect(amqp_url, name, clients, middleware=[watch])
        traffic = Traffic(client, name, cleanup, window=20)
        await setup(traffic)
        watch.when_lost = traffic.snapshot
        traffic.start()
        assert await until(lambda: traffic.confirmed >= 20 and traffic.received)
        [pid] = await asyncio.to_thread(connection_pids, name)
        await asyncio.to_thread(ctl, "close_connection", pid, "recovery test: go away")
        assert await until(lambda: watch.recovered)
        exc = watch.lost[0]
        assert getattr(exc, "reply_code", None) == 320 and "recovery test: go away" in str(exc), exc
        await settle_and_verify(traffic)
        check_recovered_once(watch)
        await restored(traffic.consumed, traffic.tag)
        assert not stale_settlements(watch.frames)

    scenario(main)


# --- 4. rabbitmqctl close_all_connections, many clients ---------------------------------------------


def test_every_client_recovers_when_the_broker_closes_all_connections(amqp_url, cleanup, name):
    count = 20

    async def main(clients):
        states = []  # (client, hooks, results, queue, consume, publishes before the close)
        for i in range(count):
            hooks, results, queue = Hooks(), Results(), "%s-%d" % (name, i)
            cleanup.queues.append(queue)
            client = await connect(amqp_url, queue, clients, middleware=[hooks])
            await client.wait_async(client.queue_declare(queue), timeout=PATIENCE)
            consume = client.basic_consume(queue, callback=results)
            before = [client.basic_publish("", queue, b"before %d" % j, callback=results) for j in range(10)]
            states.append((client, hooks, results, queue, consume, before))
        assert len(await asyncio.to_thread(connection_pids, name + "-", True)) == count
        await asyncio.to_thread(ctl, "close_all_connections", "-p", "/", "recovery test: everybody out")
        assert await until(lambda: all(hooks.recovered for _c, hooks, *_ in states)), [len(s[1].events) for s in states]
        wanted = {b"before %d" % j for j in range(10)} | {b"after"}
        afters = [
            client.basic_publish("", queue, b"after", callback=results) for client, _h, results, queue, *_ in states
        ]

        def done():
            return all(
                {m["body"] for m in results.messages(consume)} >= wanted and results.has(*before, after)
                for (_c, _h, results, _q, consume, before), after in zip(states, afters)
            )

        assert await until(done)
        for (_client, hooks, results, _queue, consume, before), after in zip(states, afters):
            for promise in [*before, after]:
                results.ok(promise)
            assert not results.errors(consume)
            check_recovered_once(hooks)
            assert getattr(hooks.lost[0], "reply_code", None) == 320

        def all_connected():
            return len(connection_pids(name + "-", prefix=True)) == count

        assert await asyncio.to_thread(wait_until, all_connected, PATIENCE, 0.2)

    scenario(main)


# --- 6. a second fault during the replay -------------------------------------------------------------


def test_a_second_cut_during_the_replay_restores_each_consumer_and_binding_once(proxy, cleanup, name):
    async def main(clients):
        watch = Watch()
        client = await connect(proxy.url, name, clients, middleware=[watch])
        traffic = Traffic(client, name, cleanup, window=50)
        await setup(traffic)
        watch.when_lost = traffic.snapshot
        second_cuts = []

        def cut_during_replay(frame):
            if frame.direction == "out" and frame.name == "basic.consume" and watch.in_outage and not second_cuts:
                second_cuts.append(frame)
                proxy.cut()

        watch.when_frame = cut_during_replay
        traffic.start()
        assert await until(lambda: traffic.confirmed >= 50 and traffic.received)
        proxy.cut()
        assert await until(lambda: watch.recovered)
        assert second_cuts
        await settle_and_verify(traffic)
        check_recovered_once(watch)
        assert watch.recovered[0]["attempts"] >= 2
        await restored(traffic.consumed, traffic.tag)
        assert await asyncio.to_thread(bindings_to, traffic.consumed, traffic.counted) == sorted(
            [(traffic.consumed, traffic.exchange, ""), (traffic.counted, traffic.exchange, "")]
        )
        assert not stale_settlements(watch.frames)
        last = watch.connection_starts()[-1]
        assert len(watch.out("queue.bind", last)) == 2 and len(watch.out("basic.consume", last)) == 1

    scenario(main)


# --- 7. a queue deleted by another client during the outage --------------------------------------------


def test_a_queue_deleted_by_another_client_during_the_outage_fails_only_its_consume(proxy, amqp_url, cleanup, name):
    foreign, own = name + "-foreign", name + "-own"
    cleanup.queues += [foreign, own]
    with puka.Client(amqp_url) as other:
        other.wait(other.queue_declare(foreign), timeout=PATIENCE)

    async def main(clients):
        watch, results = Watch(), Results()
        client = await connect(proxy.url, name, clients, middleware=[watch])
        await client.wait_async(client.queue_declare(own), timeout=PATIENCE)
        lost_consume = client.basic_consume(foreign, callback=results)
        kept_consume = client.basic_consume(own, callback=results)
        for queue in (foreign, own):
            await client.wait_async(client.basic_publish("", queue, b"before"), timeout=PATIENCE)
        assert await until(lambda: results.messages(lost_consume) and results.messages(kept_consume))
        for consume in (lost_consume, kept_consume):
            client.basic_ack(results.messages(consume)[0])
        await client.wait_async(client.queue_declare(own, passive=True), timeout=PATIENCE)
        proxy.stall()
        proxy.cut()
        with puka.Client(amqp_url) as other:  # blocks the loop: the client does nothing meanwhile
            other.wait(other.queue_delete(foreign), timeout=PATIENCE)
        during = client.basic_publish("", own, b"during", callback=results)
        proxy.resume()
        assert await until(lambda: watch.recovered and results.errors(lost_consume) and results.has(during))
        assert await until(lambda: any(m["body"] == b"during" for m in results.messages(kept_consume)))
        [error] = results.errors(lost_consume)
        assert isinstance(error, puka.NotFound), error
        results.ok(during)
        check_recovered_once(watch)
        await restored(own, results.messages(kept_consume)[0]["consumer_tag"])
        assert not results.errors(kept_consume)

    scenario(main)
    assert not queue_exists(amqp_url, foreign)


# --- 8. an outage longer than the deadline -----------------------------------------------------------------


@pytest.mark.parametrize("outage", ["refused", "stalled"])
def test_an_outage_longer_than_the_deadline_fails_every_promise_and_closes_the_client(proxy, cleanup, name, outage):
    queue = name
    cleanup.queues.append(queue)

    async def main(clients):
        watch, results = Watch(), Results()
        client = await connect(proxy.url, name, clients, recovery=fast(deadline=1.0), middleware=[watch])
        await client.wait_async(client.queue_declare(queue), timeout=PATIENCE)
        consume = client.basic_consume(queue, callback=results)
        proxy.stall()
        publishes = [client.basic_publish("", queue, b"%d" % i, callback=results) for i in range(20)]
        await asyncio.sleep(0.05)
        if outage == "refused":
            proxy.close()  # no one listens any more
        else:
            proxy.cut()  # new connections get through TCP and hang
        during = client.queue_declare(name + "-never", callback=results)
        pending = [consume, *publishes, during]
        assert await until(lambda: results.has(*pending))
        for promise in pending:
            error = results.error(promise)
            assert type(error) is puka.ConnectionBroken, error
            assert "127.0.0.1:%d" % proxy.port in str(error) and re.search(r"\d+(\.\d+)?s", str(error)), error
        assert [kind for kind, _ in watch.events] == ["lost"]
        assert watch.closed == 1
        with pytest.raises(puka.ConnectionBroken):
            client.queue_declare(name + "-after")

    scenario(main)


# --- 9. credentials revoked during the outage --------------------------------------------------------------


def test_credentials_revoked_during_the_outage_end_the_recovery_with_access_refused(amqp_url, cleanup, name):
    """The password changes (tests/test_recovery.py deletes the user instead)."""
    user, password = "puka-recovery-%s" % uuid.uuid4().hex[:8], uuid.uuid4().hex
    queue = name
    cleanup.queues.append(queue)
    ctl("add_user", user, password)
    try:
        ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        params = puka.parse_amqp_url(amqp_url)
        with Proxy((params.host, params.port), "/", user, password) as proxy:

            async def main(clients):
                watch, results = Watch(), Results()
                client = await connect(proxy.url, name, clients, middleware=[watch])
                await client.wait_async(client.queue_declare(queue), timeout=PATIENCE)
                consume = client.basic_consume(queue, callback=results)
                proxy.stall()
                publishes = [client.basic_publish("", queue, b"%d" % i, callback=results) for i in range(10)]
                await asyncio.sleep(0.05)
                proxy.cut()
                await asyncio.to_thread(ctl, "change_password", user, "not-" + password)
                proxy.resume()
                pending = [consume, *publishes]
                assert await until(lambda: results.has(*pending))
                for promise in pending:
                    assert type(results.error(promise)) is puka.AccessRefused, results.error(promise)
                assert [kind for kind, _ in watch.events] == ["lost"]
                attempts = proxy.accepted
                await asyncio.sleep(0.2)
                assert proxy.accepted == attempts

            scenario(main)
    finally:
        ctl("delete_user", user, check=False)


# --- 10. many recoveries in a row ---------------------------------------------------------------------------


def test_fifty_recoveries_in_a_row_leak_no_descriptor_thread_or_memory(proxy, cleanup, name):
    queue = name
    cleanup.queues.append(queue)

    async def main(clients):
        hooks, results = Hooks(), Results()
        client = await connect(proxy.url, name, clients, middleware=[hooks])
        await client.wait_async(client.queue_declare(queue), timeout=PATIENCE)
        bodies: Counter = Counter()

        def on_message(number, message):
            if not message.is_error:
                bodies[message["body"]] += 1
                client.basic_ack(message)

        consume = client.basic_consume(queue, prefetch_count=10, callback=on_message)

        async def round_trip_then_cut(i):
            body = b"%d" % i
            publish = client.basic_publish("", queue, body, callback=results)
            assert await until(lambda: results.has(publish) and bodies[body])
            results.ok(publish)
            outages = len(hooks.recovered)
            proxy.cut()
            assert await until(lambda: len(hooks.recovered) == outages + 1), "recovery %d did not end" % i

        tracemalloc.start()
        try:
            for i in range(3):
                await round_trip_then_cut(i)
            gc.collect()
            fds, threads = fd_count(), threading.active_count()
            memory = tracemalloc.get_traced_memory()[0]
            for i in range(3, 53):
                await round_trip_then_cut(i)
            publish = client.basic_publish("", queue, b"last", callback=results)
            assert await until(lambda: results.has(publish) and bodies[b"last"])
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - memory
        finally:
            tracemalloc.stop()
        assert len(hooks.recovered) == 53 and len(hooks.lost) == 53
        # none left open; fewer if older sockets closed meanwhile
        assert await until(lambda: fd_count() <= fds), (fd_count(), fds)
        assert threading.active_count() == threads
        assert growth < 1024 * 1024, "memory grew by %d bytes over 50 recoveries" % growth
        assert not results.errors(consume)

    scenario(main)


# --- 11. a server-named queue gets a new name -------------------------------------------------------------


def test_a_server_named_queue_comes_back_renamed_and_its_old_name_still_routes(proxy, cleanup, name):
    async def main(clients):
        watch, results = Watch(), Results()
        client = await connect(proxy.url, name, clients, middleware=[watch])
        old = (await client.wait_async(client.queue_declare("", exclusive=True), timeout=PATIENCE))["queue"]
        consume = client.basic_consume(old, callback=results)
        await client.wait_async(client.basic_publish("", old, b"before"), timeout=PATIENCE)
        assert await until(lambda: results.messages(consume))
        tag = results.messages(consume)[0]["consumer_tag"]
        proxy.cut()
        assert await until(lambda: watch.recovered)
        info = check_recovered_once(watch)
        new = info["renamed"].get(old)
        assert info["renamed"] == {old: new} and new and new != old, info
        await restored(new, tag)
        await client.wait_async(client.basic_publish("", old, b"to the old name"), timeout=PATIENCE)
        assert await until(lambda: len(results.messages(consume)) == 2)
        assert results.messages(consume)[1]["body"] == b"to the old name"
        assert results.messages(consume)[1]["routing_key"] == new
        assert not results.errors(consume)

    scenario(main)


# --- 12. operations in flight, during the outage; the prefetch ------------------------------------------


def test_operations_in_flight_are_rerun_or_interrupted_and_those_of_the_outage_run_after_it(proxy, cleanup, name):
    purged, declared, during_queue, consumed = (name + s for s in ("-purged", "-declared", "-during", "-consumed"))
    cleanup.queues += [purged, declared, during_queue, consumed]

    async def main(clients):
        watch, results = Watch(), Results()
        client = await connect(proxy.url, name, clients, middleware=[watch])
        await client.wait_all_async(
            [
                client.queue_declare(purged),
                client.queue_declare(consumed),
                client.exchange_declare("amq.fanout", "fanout", passive=True),
            ]
        )
        consume = client.basic_consume(consumed, prefetch_count=2, callback=results)
        await client.wait_async(client.basic_qos(consume, prefetch_count=5), timeout=PATIENCE)
        tag = watch.out("basic.consume")[-1].method["consumer_tag"]
        proxy.stall()
        mark = len(watch.frames)
        purge = client.queue_purge(purged, callback=results)
        declare = client.queue_declare(declared, callback=results)
        assert await until(lambda: watch.out("queue.purge", mark) and watch.out("queue.declare", mark))
        await asyncio.sleep(0.05)
        proxy.cut()
        assert await until(lambda: watch.lost)
        assert not watch.recovered
        during = client.queue_declare(during_queue, callback=results)
        proxy.resume()
        assert await until(lambda: results.has(purge, declare, during))
        assert isinstance(results.error(purge), puka.OperationInterrupted)
        assert results.ok(declare)["queue"] == declared
        assert results.ok(during)["queue"] == during_queue
        check_recovered_once(watch)
        restarted = watch.out("basic.consume", watch.connection_starts()[-1])
        assert [f.method["consumer_tag"] for f in restarted] == [tag]
        await restored(consumed, tag, 5)

    scenario(main)


# --- 13. stale settlements -------------------------------------------------------------------------------


def test_settling_a_message_of_the_lost_connection_sends_nothing_and_it_comes_again(proxy, cleanup, name):
    queue = name
    cleanup.queues.append(queue)

    async def main(clients):
        watch = Watch()
        client = await connect(proxy.url, name, clients, middleware=[watch])
        await client.wait_async(client.queue_declare(queue), timeout=PATIENCE)
        consume = client.basic_consume(queue, prefetch_count=10)
        await client.wait_all_async([client.basic_publish("", queue, b"%d" % i) for i in range(3)])
        old = [await client.wait_async(consume, timeout=PATIENCE) for _ in range(3)]
        proxy.cut()
        await client.wait_async(client.basic_publish("", queue, b"after"), timeout=PATIENCE)
        check_recovered_once(watch)
        start = watch.connection_starts()[-1]
        client.basic_ack(old[0])
        client.basic_ack(old[2], multiple=True)
        await client.wait_async(client.queue_declare(queue, passive=True), timeout=PATIENCE)
        assert not watch.out("basic.ack", start), "a stale ack went out"
        again = [await client.wait_async(consume, timeout=PATIENCE) for _ in range(4)]
        assert sorted(m["body"] for m in again) == [b"0", b"1", b"2", b"after"]
        assert all(m["redelivered"] for m in again if m["body"] != b"after")
        for message in again:
            client.basic_ack(message)
        declared = await client.wait_async(client.queue_declare(queue, passive=True), timeout=PATIENCE)
        assert watch.out("basic.ack", start)
        assert not stale_settlements(watch.frames)
        assert declared["message_count"] == 0

    scenario(main)


# --- 14. middleware hooks and OpenTelemetry ------------------------------------------------------------------


def test_the_hooks_and_opentelemetry_see_each_outage_once(proxy, cleanup, name):
    middleware, exporter, reader = telemetry()

    async def main(clients):
        hooks = Hooks()
        client = await connect(proxy.url, name, clients, middleware=[middleware, hooks])
        for outage in (1, 2):
            proxy.cut()
            await client.wait_async(client.queue_declare("", exclusive=True), timeout=PATIENCE)
            assert await until(lambda n=outage: len(hooks.recovered) == n)
        assert [kind for kind, _ in hooks.events] == ["lost", "recovered", "lost", "recovered"]
        for info in hooks.recovered:
            assert set(info) == {"host", "outage_seconds", "attempts", "republished", "renamed"}
            assert str(proxy.port) in info["host"] and "guest:guest" not in info["host"]
        spans = [s for s in exporter.get_finished_spans() if s.name == "puka recovery"]
        assert len(spans) == 2
        assert recoveries_counted(reader) == 2

    scenario(main)


# --- 15. recovery=False -------------------------------------------------------------------------------------


def test_without_recovery_a_cut_fails_every_promise(proxy, cleanup, name):
    queue = name
    cleanup.queues.append(queue)

    async def main(clients):
        results = Results()
        client = await connect(proxy.url, name, clients, recovery=False)
        await client.wait_async(client.queue_declare(queue), timeout=PATIENCE)
        consume = client.basic_consume(queue, callback=results)
        proxy.stall()
        publishes = [client.basic_publish("", queue, b"%d" % i, callback=results) for i in range(10)]
        await asyncio.sleep(0.05)
        proxy.cut()
        pending = [consume, *publishes]
        assert await until(lambda: results.has(*pending))
        for promise in pending:
            assert isinstance(results.error(promise), puka.ConnectionBroken)
        with pytest.raises(puka.ConnectionBroken):
            client.queue_declare(queue)
        assert proxy.accepted == 1

    scenario(main)


# --- 16. several hosts -------------------------------------------------------------------------------------


def test_the_first_connect_tries_each_host_and_fails_fast_when_none_answers(amqp_url):
    params = puka.parse_amqp_url(amqp_url)
    dead, other = closed_port(), closed_port()

    async def main(clients):
        client = puka.asyncio.Client("amqp://guest:guest@127.0.0.1:%d,127.0.0.1:%d/" % (dead, other))
        clients.append(client)
        connecting = asyncio.ensure_future(client.connect_async())
        assert await until(connecting.done)
        with pytest.raises(puka.ConnectionBroken):
            connecting.result()
        for _ in range(4):  # each client takes the hosts in an order of its own
            client = puka.asyncio.Client("amqp://guest:guest@127.0.0.1:%d,%s:%d/" % (dead, params.host, params.port))
            clients.append(client)
            await asyncio.wait_for(client.connect_async(), PATIENCE)
            assert (await client.wait_async(client.queue_declare("", exclusive=True)))["queue"]

    scenario(main)


# --- a cut while output waits to be written -------------------------------------------------------------


def test_a_cut_while_publishes_wait_to_be_written_is_recovered(proxy, cleanup, name):
    queue = name
    cleanup.queues.append(queue)

    async def main(clients):
        hooks, results = Hooks(), Results()
        client = await connect(proxy.url, name, clients, middleware=[hooks])
        await client.wait_async(client.queue_declare(queue), timeout=PATIENCE)
        proxy.stall()
        body = b"x" * (1 << 20)
        publishes = [client.basic_publish("", queue, body, callback=results) for _ in range(16)]
        await asyncio.sleep(0.2)
        assert client.needs_write()  # the premise: the socket takes no more, the client waits to write
        proxy.cut()
        proxy.resume()
        assert await until(lambda: results.has(*publishes))
        for promise in publishes:
            results.ok(promise)
        check_recovered_once(hooks)
        declared = await client.wait_async(client.queue_declare(queue, passive=True), timeout=PATIENCE)
        assert 16 <= declared["message_count"] <= 32

    scenario(main)
