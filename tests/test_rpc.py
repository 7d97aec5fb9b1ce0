"""Request/reply over RabbitMQ's direct reply-to, and the graceful stop, against the real broker.

The server side is :class:`Server`: a puka client of its own in a thread of its own (a client is
used by one thread only), answering each request from a queue with ``b"echo:" + body`` through
``rpc_reply``, or holding the requests until the test releases them.  The test's client is the
caller; nothing here reads the clock: time-outs are given to puka and only their outcome is
checked.
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_module
import threading

import pytest

import puka
import puka.asyncio
import puka.tracing

REPLY_TO = "amq.rabbitmq.reply-to"


class Server:
    """An RPC server on ``queue`` in a thread with its own client.  See the module docstring.

    ``received`` gets every request as it arrives (the message dict); with ``hold`` requests are
    kept, unanswered and unacknowledged, until :meth:`release`.
    """

    def __init__(self, url: str, queue: str, hold: bool = False, middleware=(), work=None) -> None:
        self.url = url
        self.queue = queue
        self.hold = hold
        self.middleware = list(middleware)
        self.work = work  # called in the server's callback before it answers (e.g. to start a span)
        self.received: queue_module.Queue = queue_module.Queue()
        self.commands: queue_module.Queue = queue_module.Queue()
        self.held: list = []
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.left: dict | None = None
        self.thread = threading.Thread(target=self._run, name="rpc-server", daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the server did not start"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            client = puka.Client(self.url, middleware=self.middleware)
            client.wait(client.connect())
            client.wait(client.queue_declare(queue=self.queue))
            client.wait(client.basic_qos(client.basic_consume(self.queue, callback=self._on_request), 1000))
            self.client = client
            self.ready.set()
            while not self.stopping.is_set():
                client.loop(timeout=0.05)
                while not self.commands.empty():
                    self.commands.get()()
            self.left = client.shutdown(timeout=10)
        except BaseException as exc:  # kept for the test
            self.error = exc
            self.ready.set()

    def _on_request(self, _promise: int, message) -> None:
        if message.is_error:
            raise message.exception
        self.received.put(message)
        if self.hold:
            self.held.append(message)
        else:
            self._answer(message)

    def _answer(self, message) -> None:
        client = self.client
        if self.work is not None:
            self.work(message)
        client.rpc_reply(message, b"echo:" + message["body"], {"x-served-by": "test"})
        client.basic_ack(message)

    def release(self) -> None:
        """Answer every request held so far (in the server's thread)."""

        def answer() -> None:
            held, self.held = self.held, []
            for message in held:
                self._answer(message)

        self.commands.put(answer)

    def answer_from_now_on(self) -> None:
        def switch() -> None:
            self.hold = False

        self.commands.put(switch)

    def next_request(self):
        return self.received.get(timeout=30)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def server(amqp_url, queue):
    s = Server(amqp_url, queue)
    yield s
    s.stop()


def connect(url: str, **kwargs) -> puka.Client:
    client = puka.Client(url, **kwargs)
    client.wait(client.connect(), timeout=10)
    return client


# --- the low-level pattern ---------------------------------------------------------------------


def test_the_low_level_direct_reply_to_pattern_works_as_written(client, server, queue):
    replies = client.basic_consume(queue=REPLY_TO, no_ack=True)
    published = client.basic_publish(
        exchange="", routing_key=queue, body=b"ping", headers={"reply_to": REPLY_TO, "correlation_id": "low-1"}
    )
    assert client.wait(published) == {}
    request = server.next_request()
    # The broker rewrote reply_to into this consumer's address.
    assert request["headers"]["reply_to"].startswith(REPLY_TO + ".")
    reply = client.wait(replies)
    assert reply["body"] == b"echo:ping"
    assert reply["headers"]["correlation_id"] == "low-1"
    assert reply["headers"]["x-served-by"] == "test"


def test_a_reply_to_publish_without_a_reply_to_consumer_is_refused_at_the_call(client, queue):
    with pytest.raises(ValueError, match="needs a consumer of that pseudo-queue"):
        client.basic_publish(exchange="", routing_key=queue, body=b"lost", headers={"reply_to": REPLY_TO})
    # Nothing went out; the client goes on.
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"plain"))
    assert client.wait(client.queue_declare(queue=queue, passive=True))["message_count"] == 1
    assert client.wait(client.basic_get(queue=queue, no_ack=True))["body"] == b"plain"


# --- rpc_call / rpc_reply ----------------------------------------------------------------------


def test_rpc_call_resolves_to_the_reply_message(client, server, queue):
    call = client.rpc_call("", queue, b"ping", headers={"x-request": "r1", "content_type": "text/plain"})
    reply = client.wait(call)
    request = server.next_request()
    assert request["body"] == b"ping"
    assert request["headers"]["x-request"] == "r1"
    assert request["headers"]["content_type"] == "text/plain"
    assert request["headers"]["reply_to"].startswith(REPLY_TO + ".")
    correlation_id = request["headers"]["correlation_id"]
    # A delivery's shape: the reply's body, properties and headers together, where it came from.
    assert reply["body"] == b"echo:ping"
    assert reply["headers"]["correlation_id"] == correlation_id
    assert reply["headers"]["x-served-by"] == "test"
    assert reply["exchange"] == ""
    assert reply["routing_key"] == request["headers"]["reply_to"]
    assert reply["redelivered"] is False
    assert not reply.is_error


def test_rpc_call_sets_its_own_reply_to_and_correlation_id(client, server, queue):
    reply = client.wait(client.rpc_call("", queue, b"x", headers={"correlation_id": "mine", "reply_to": "elsewhere"}))
    request = server.next_request()
    assert request["headers"]["reply_to"].startswith(REPLY_TO + ".")
    assert request["headers"]["correlation_id"] != "mine"
    assert reply["headers"]["correlation_id"] == request["headers"]["correlation_id"]


def test_rpc_call_runs_its_callback_with_the_reply(client, server, queue):
    got = []
    call = client.rpc_call("", queue, b"cb", callback=lambda number, reply: got.append((number, reply["body"])))
    client.wait(call)
    assert got == [(call, b"echo:cb")]


def test_five_hundred_calls_in_flight_are_each_matched_to_their_reply(client, server, queue):
    calls = [client.rpc_call("", queue, b"%d" % i) for i in range(500)]
    replies = [client.wait(call) for call in calls]
    assert [reply["body"] for reply in replies] == [b"echo:%d" % i for i in range(500)]
    ids = [reply["headers"]["correlation_id"] for reply in replies]
    assert len(set(ids)) == 500
    requests = [server.next_request() for _ in range(500)]
    assert sorted(r["body"] for r in requests) == sorted(b"%d" % i for i in range(500))


def test_an_unroutable_request_fails_with_no_route(client, name):
    call = client.rpc_call("", name + "-nobody-listens", b"lost")
    with pytest.raises(puka.NoRoute) as raised:
        client.wait(call)
    assert type(raised.value) is puka.NoRoute
    # The client goes on, with the same reply consumer.
    with pytest.raises(puka.NoRoute):
        client.wait(client.rpc_call("", name + "-nobody-listens", b"again"))


def test_an_unknown_exchange_fails_the_call_with_the_channel_error(client, server, queue, name):
    with pytest.raises(puka.NotFound):
        client.wait(client.rpc_call(name + "-no-such-exchange", queue, b"lost"))


def test_calls_after_a_channel_error_still_work(client, server, queue, name):
    with pytest.raises(puka.NotFound):
        client.wait(client.rpc_call(name + "-no-such-exchange", queue, b"lost"))
    assert client.wait(client.rpc_call("", queue, b"after"))["body"] == b"echo:after"


def test_a_timeout_fails_with_reply_timeout_and_the_late_reply_is_dropped_and_logged(amqp_url, client, queue, caplog):
    caplog.set_level(logging.INFO, logger="puka")
    server = Server(amqp_url, queue, hold=True)
    try:
        late = client.rpc_call("", queue, b"slow", timeout=0.2)
        with pytest.raises(puka.ReplyTimeout) as raised:
            client.wait(late)
        assert type(raised.value) is puka.ReplyTimeout
        request = server.next_request()
        late_id = request["headers"]["correlation_id"]
        assert late_id in str(raised.value)
        server.release()  # the late reply is on its way
        server.answer_from_now_on()
        # Replies come back in order: by the time this one is in, the late one was seen and dropped.
        after = client.wait(client.rpc_call("", queue, b"next", timeout=30))
        assert after["body"] == b"echo:next"
        dropped = [
            r
            for r in caplog.records
            if r.name == "puka" and r.levelno == logging.INFO and "nobody waits for" in r.getMessage()
        ]
        assert len(dropped) == 1
        assert repr(late_id) in dropped[0].getMessage()
        with pytest.raises(ValueError):
            client.wait(late)  # finished: its one result was handed out
    finally:
        server.stop()


def test_rpc_reply_needs_a_request_with_reply_to(client, queue):
    client.wait(client.basic_publish(exchange="", routing_key=queue, body=b"no reply_to"))
    message = client.wait(client.basic_get(queue=queue))
    with pytest.raises(ValueError, match="no reply_to"):
        client.rpc_reply(message, b"answer")
    client.basic_ack(message)
    with pytest.raises(ValueError):
        client.rpc_reply({"body": b"not a delivery"}, b"answer")


def test_a_second_reply_to_consumer_on_one_client_is_refused(client, server, queue):
    client.wait(client.rpc_call("", queue, b"first"))
    with pytest.raises(ValueError, match="already consumes"):
        client.basic_consume(queue=REPLY_TO, no_ack=True)
    assert client.wait(client.rpc_call("", queue, b"still"))["body"] == b"echo:still"


def test_rpc_call_on_a_client_that_consumes_reply_to_itself_is_refused(client):
    client.basic_consume(queue=REPLY_TO, no_ack=True)
    with pytest.raises(ValueError, match="already consumes"):
        client.basic_consume(queue=REPLY_TO, no_ack=True)
    with pytest.raises(ValueError, match="already consumes"):
        client.rpc_call("", "anywhere", b"x")


# --- with recovery -----------------------------------------------------------------------------


def test_a_request_unconfirmed_when_the_connection_is_cut_is_sent_again_and_answered(proxy, server, queue):
    caller = connect(proxy.url)
    try:
        assert caller.wait(caller.rpc_call("", queue, b"before"))["body"] == b"echo:before"
        assert server.next_request()["body"] == b"before"
        proxy.stall()  # the proxy reads nothing more: the request cannot reach the broker
        call = caller.rpc_call("", queue, b"during")
        assert caller.wait(call, timeout=0) is None  # written to the socket, unconfirmed
        proxy.cut()
        proxy.resume()
        reply = caller.wait(call)
        assert reply["body"] == b"echo:during"
        assert proxy.accepted == 2  # answered through the new connection
        request = server.next_request()
        assert request["body"] == b"during"
        assert request["redelivered"] is False
        assert server.received.empty()  # the server got it once
        assert reply["headers"]["correlation_id"] == request["headers"]["correlation_id"]
        assert caller.wait(caller.rpc_call("", queue, b"after"))["body"] == b"echo:after"
    finally:
        caller.wait(caller.close(), timeout=10)


# --- shutdown ----------------------------------------------------------------------------------


def fill(client: puka.Client, queue: str, n: int) -> None:
    client.wait_for_all([client.basic_publish(exchange="", routing_key=queue, body=b"%d" % i) for i in range(n)])


def drain(amqp_url: str, queue: str) -> list:
    """Every message left in ``queue``, taken by another client (acknowledged)."""
    messages = []
    with puka.Client(amqp_url) as other:
        while True:
            message = other.wait(other.basic_get(queue=queue))
            if message.get("empty"):
                return messages
            other.basic_ack(message)
            messages.append(message)


def test_shutdown_cancels_consumes_settles_held_messages_confirms_publishes_then_closes(amqp_url, client, queue, name):
    results = name + "-results"
    client.wait(client.queue_declare(queue=results))
    try:
        fill(client, queue, 200)
        worker = connect(amqp_url)
        processed = []
        acked = []

        def on_request(_promise, message):
            processed.append(message["body"])

            def on_published(_number, result):
                assert not result.is_error
                worker.basic_ack(message)  # the request is settled once its result is safe
                acked.append(message["body"])

            worker.basic_publish(
                exchange="", routing_key=results, body=b"done " + message["body"], callback=on_published
            )
            if len(processed) == 20:
                worker.loop_break()

        consume = worker.basic_consume(queue=queue, prefetch_count=50, callback=on_request)
        worker.loop()
        assert len(processed) == 20 and len(acked) < 20  # messages held, publishes unconfirmed
        left = worker.shutdown(timeout=30)
        assert left == {"unsettled": 0, "pending": 0}
        assert sorted(acked) == sorted(processed)  # every message handed out was settled...
        with pytest.raises(ValueError):
            worker.wait(consume)  # the consume ended
        with pytest.raises(puka.ConnectionBroken):
            worker.queue_declare(queue=queue, passive=True)  # ...and the client is closed
        outputs = drain(amqp_url, results)
        left_over = drain(amqp_url, queue)
        # Every request was processed exactly once or is still in the queue.
        assert sorted(m["body"] for m in outputs) == sorted(b"done " + body for body in processed)
        assert sorted(processed + [m["body"] for m in left_over]) == sorted(b"%d" % i for i in range(200))
    finally:
        client.wait(client.queue_delete(queue=results))


def test_shutdown_at_the_deadline_fails_what_is_pending_and_unacked_messages_are_redelivered(
    amqp_url, client, queue, proxy, name
):
    results = name + "-results"
    client.wait(client.queue_declare(queue=results))
    try:
        fill(client, queue, 30)
        worker = connect(proxy.url)
        held = []

        def on_request(_promise, message):
            held.append(message)  # never settled
            if len(held) == 5:
                worker.loop_break()

        worker.basic_consume(queue=queue, prefetch_count=5, callback=on_request)
        worker.loop()
        proxy.stall()  # from now on the broker hears nothing from the worker, and says nothing to it
        publish = worker.basic_publish(exchange="", routing_key=results, body=b"never confirmed")
        left = worker.shutdown(timeout=0.5)
        # Held: the five messages.  Pending: the publish, the consume and its cancel (never answered).
        assert left == {"unsettled": 5, "pending": 3}
        with pytest.raises(puka.ConnectionBroken, match="still pending when the client shut down"):
            worker.wait(publish)
        with pytest.raises(puka.ConnectionBroken):
            worker.basic_ack(held[0])
        proxy.cut()  # the broker sees the connection go
        # It hands the unacknowledged messages to the next consumer; nothing confirmed was lost.
        messages = drain(amqp_url, queue)
        assert sorted(m["body"] for m in messages) == sorted(b"%d" % i for i in range(30))
        redelivered = sorted(m["body"] for m in messages if m["redelivered"])
        assert redelivered == sorted(m["body"] for m in held)
    finally:
        client.wait(client.queue_delete(queue=results))


def test_shutdown_right_after_rpc_call_ends_the_call_before_the_deadline(amqp_url, client, name):
    nobody = name + "-nobody-answers"
    client.wait(client.queue_declare(queue=nobody))
    worker = connect(amqp_url)
    try:
        worker.rpc_call("", nobody, b"unanswered", timeout=0.5)
        # The call ends within its own timeout (or as its consumer is cancelled): nothing is left at the deadline.
        assert worker.shutdown(timeout=5) == {"unsettled": 0, "pending": 0}
    finally:
        client.wait(client.queue_delete(queue=nobody))


def test_shutdown_lets_calls_in_flight_get_their_replies(amqp_url, queue, name):
    idle = name + "-idle"
    other_cancelled = threading.Event()

    class CancelOkWatcher(puka.tracing.Middleware):
        def on_frame(self, frame) -> None:
            method = frame.method
            if frame.direction == "in" and method is not None and method.name == "basic.cancel-ok":
                if method["consumer_tag"] == "idle-consumer":
                    other_cancelled.set()

    server = Server(amqp_url, queue, hold=True)
    caller = connect(amqp_url, middleware=[CancelOkWatcher()])
    try:
        with pytest.raises(puka.NoRoute):
            caller.wait(caller.rpc_call("", idle, b"starts the reply consumer"))
        caller.wait(caller.queue_declare(queue=idle, exclusive=True))
        caller.basic_consume(queue=idle, consumer_tag="idle-consumer")
        call = caller.rpc_call("", queue, b"in flight")
        while server.received.empty():
            assert caller.wait(call, timeout=0.05) is None
        server.next_request()

        def release_once_shutdown_has_begun() -> None:
            if other_cancelled.wait(30):
                server.release()

        releaser = threading.Thread(target=release_once_shutdown_has_begun)
        releaser.start()
        # shutdown cancels the idle consumer; its cancel-ok releases the answer.
        left = caller.shutdown(timeout=5)
        releaser.join(30)
        assert left == {"unsettled": 0, "pending": 0}
        assert caller.wait(call)["body"] == b"echo:in flight"
    finally:
        server.stop()


# --- asyncio -----------------------------------------------------------------------------------


def test_asyncio_client_awaits_rpc_calls(amqp_url, server, queue):
    async def main():
        async with puka.asyncio.Client(amqp_url) as client:
            one = await client.wait_async(client.rpc_call("", queue, b"one"))
            many = await asyncio.gather(*(client.wait_async(client.rpc_call("", queue, b"%d" % i)) for i in range(100)))
            with pytest.raises(puka.NoRoute):
                await client.wait_async(client.rpc_call("", queue + "-nobody", b"lost"))
            return one, many

    one, many = asyncio.run(asyncio.wait_for(main(), 60))
    assert one["body"] == b"echo:one"
    assert [reply["body"] for reply in many] == [b"echo:%d" % i for i in range(100)]


def test_asyncio_client_rpc_timeout(amqp_url, queue):
    server = Server(amqp_url, queue, hold=True)

    async def main():
        async with puka.asyncio.Client(amqp_url) as client:
            with pytest.raises(puka.ReplyTimeout):
                await client.wait_async(client.rpc_call("", queue, b"slow", timeout=0.2))

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        server.stop()


# --- tracing -----------------------------------------------------------------------------------

try:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from puka.tracing import OpenTelemetryMiddleware
except ImportError as exc:  # the test extra brings the otel extra: a missing SDK is a broken set-up, not a skip
    raise ImportError("tests/test_rpc.py needs the OpenTelemetry SDK: pip install -e '.[test]'") from exc


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def related(span, other) -> bool:
    """``span``'s parent is ``other``, or ``span`` links to it."""
    ids = {link.context.span_id for link in span.links}
    if span.parent is not None:
        ids.add(span.parent.span_id)
    return other.context.span_id in ids


def one(found: list, what: str):
    assert len(found) == 1, "expected one %s span, got %r" % (what, found)
    return found[0]


def round_trip(amqp_url, queue, provider):
    """One traced call: the caller's ``call`` span around rpc_call, the server's ``serve`` span around its work."""
    tracer = provider.get_tracer("tests")
    server = Server(
        amqp_url,
        queue,
        middleware=[OpenTelemetryMiddleware(provider)],
        work=lambda message: tracer.start_span("serve").end(),
    )
    caller = connect(amqp_url, middleware=[OpenTelemetryMiddleware(provider)])
    with tracer.start_as_current_span("call"):
        call = caller.rpc_call("", queue, b"traced")
    reply = caller.wait(call)
    assert reply["body"] == b"echo:traced"
    return server, caller


def test_one_trace_shows_the_round_trip(amqp_url, queue, spans):
    provider, exporter = spans
    server, caller = round_trip(amqp_url, queue, provider)
    server.stop()
    caller.wait(caller.close(), timeout=10)
    finished = exporter.get_finished_spans()
    call = one([s for s in finished if s.name == "call"], "call")
    request = one([s for s in finished if s.name == "publish " + queue], "request publish")
    process = one([s for s in finished if s.name == "process " + queue], "server process")
    serve = one([s for s in finished if s.name == "serve"], "serve")
    reply = one([s for s in finished if s.name == "publish (anonymous)"], "reply publish")
    handled = one([s for s in finished if s.name == "process (anonymous)"], "caller's reply process")
    assert request.kind is SpanKind.PRODUCER and request.parent.span_id == call.context.span_id
    assert process.kind is SpanKind.CONSUMER and related(process, request)
    assert serve.parent.span_id == process.context.span_id  # the server's work runs in its process span
    assert reply.kind is SpanKind.PRODUCER and reply.parent.span_id == process.context.span_id
    assert handled.kind is SpanKind.CONSUMER and related(handled, reply)
    assert {s.context.trace_id for s in finished} == {call.context.trace_id}


def test_the_callers_process_span_of_a_reply_ends_when_wait_hands_it_out(amqp_url, queue, spans):
    provider, exporter = spans
    server, caller = round_trip(amqp_url, queue, provider)
    try:
        handled = [s for s in exporter.get_finished_spans() if s.name == "process (anonymous)"]
        assert len(handled) == 1
    finally:
        server.stop()
        caller.wait(caller.close(), timeout=10)


def test_a_reply_handled_in_a_callback_is_traced_inside_the_callback(amqp_url, queue, spans):
    provider, exporter = spans
    tracer = provider.get_tracer("tests")
    server = Server(amqp_url, queue, middleware=[OpenTelemetryMiddleware(provider)])
    caller = connect(amqp_url, middleware=[OpenTelemetryMiddleware(provider)])
    try:

        def on_reply(_number, reply):
            tracer.start_span("use reply").end()

        caller.wait(caller.rpc_call("", queue, b"cb", callback=on_reply))
        server.stop()  # its reply publish span ends with the broker's confirm
        finished = exporter.get_finished_spans()
        reply = one([s for s in finished if s.name == "publish (anonymous)"], "reply publish")
        handled = one([s for s in finished if s.name == "process (anonymous)"], "caller's reply process")
        use = one([s for s in finished if s.name == "use reply"], "use reply")
        assert related(handled, reply)
        assert use.parent.span_id == handled.context.span_id
        assert use.context.trace_id == reply.context.trace_id
    finally:
        server.stop()
        caller.wait(caller.close(), timeout=10)
