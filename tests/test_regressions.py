"""Regression tests for behaviours a mutation audit found unguarded.

Each test pins one documented rule that no other test noticed breaking:

* ``close()`` sends the acks deferred by ``basic_ack`` before ``connection.close``
  (docs/reliability.rst, "Settling messages");
* the negotiated ``frame_max`` bounds the frames the client accepts;
* no part of the password (not only the whole of it) shows in reprs, errors or logs;
* a ``basic.nack`` with ``multiple`` fails every publish up to its tag, and no other;
* heartbeats: one is sent after ``N/2`` seconds of sending nothing, and the
  peer is declared dead after two silent intervals -- checked against a
  controllable clock (tests/seam.py), never the wall clock.

Real broker where it can produce the situation; the scripted fake server for
what a real broker will not do on demand (nack, oversized frames, silence
measured on a fake clock).  Only the public API is used, plus tests/seam.py
for the clock.
"""

from __future__ import annotations

import logging
import select
import socket
import time
import traceback
import urllib.parse

import pytest
import seam
from faults import FakeServer, message, method

import puka
from puka.framing import FrameReader
from puka.tracing import FrameLogger, FrameRecorder

pytestmark = pytest.mark.timeout(60)


def run_until(client, condition, ceiling: float = 10.0) -> bool:
    """Drive the client through its public event-loop hooks until ``condition()`` holds.

    Runs no timers (those are ``on_timer``'s), so a fake clock stays in charge
    of them.  ``ceiling`` (real seconds) only bounds a test that would otherwise hang.
    """
    deadline = time.monotonic() + ceiling
    while not condition():
        if time.monotonic() >= deadline:
            return False
        fd = client.fileno()
        readable, writable, _ = select.select([fd], [fd] if client.needs_write() else [], [], 0.01)
        if readable:
            client.on_read()
        if writable:
            client.on_write()
    return True


def result_of(client, promise: int, ceiling: float = 10.0):
    """The promise's result (errors returned, not raised), driving the client as ``run_until`` does."""
    found = []

    def ready() -> bool:
        result = client.wait(promise, timeout=0, raise_errors=False)
        if result is not None:
            found.append(result)
        return bool(found)

    assert run_until(client, ready, ceiling), "promise %d unresolved after %gs" % (promise, ceiling)
    return found[0]


@pytest.fixture
def fake_server_factory():
    made = []

    def make(**kwargs) -> FakeServer:
        server = FakeServer(**kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
        assert server.error is None, server.error


# --- 1. close() flushes the deferred acks first ------------------------------------------------------


@pytest.fixture
def own_queue(amqp_url, name):
    """A queue name, deleted after the test by a client of its own (the test's clients close)."""
    yield name
    cleaner = puka.Client(amqp_url)
    cleaner.wait(cleaner.connect(), timeout=10)
    cleaner.wait(cleaner.queue_delete(queue=name), timeout=10)
    cleaner.wait(cleaner.close(), timeout=10)


def test_close_right_after_an_in_order_ack_sends_the_deferred_ack_before_closing(amqp_url, own_queue):
    name = own_queue
    recorder = FrameRecorder()
    client = puka.Client(amqp_url, middleware=[recorder])
    client.wait(client.connect(), timeout=10)
    client.wait(client.queue_declare(queue=name), timeout=10)
    for body in (b"ack me", b"later 1", b"later 2"):
        client.wait(client.basic_publish(exchange="", routing_key=name, body=body), timeout=10)
    consume = client.basic_consume(queue=name, prefetch_count=10)
    # Let all three arrive (nothing taken): two further deliveries then wait in the client.
    assert run_until(client, lambda: recorder.names("in").count("basic.deliver") == 3)
    delivered = client.wait(consume, timeout=10)
    assert delivered["body"] == b"ack me"
    client.basic_ack(delivered)
    # The scenario under test: the ack is in delivery order and further deliveries of the
    # consume wait in the client, so it is deferred (to merge with theirs): nothing on the wire yet.
    assert "basic.ack" not in recorder.names("out"), "the ack was not deferred: the test proves nothing"
    client.wait(client.close(), timeout=10)  # straight away: nothing else flushes in between
    out = recorder.names("out")
    assert "basic.ack" in out, "the deferred ack was never sent: %s" % out
    assert out.index("basic.ack") < out.index("connection.close"), "ack after connection.close: %s" % out

    # The broker took the ack: the message is gone, not requeued.
    checker = puka.Client(amqp_url)
    checker.wait(checker.connect(), timeout=10)
    declared = checker.wait(checker.queue_declare(queue=name, passive=True), timeout=10)
    assert declared["message_count"] == 2, "the acked message was requeued (or the others lost)"
    bodies = {checker.wait(checker.basic_get(queue=name, no_ack=True), timeout=10)["body"] for _ in range(2)}
    assert bodies == {b"later 1", b"later 2"}
    checker.wait(checker.close(), timeout=10)


# --- 2. the negotiated frame_max bounds incoming frames --------------------------------------------------


def frame_sizes(data: bytes) -> list[int]:
    """Whole-frame sizes (header and frame-end included) of the frames in ``data``."""
    return [len(payload) + 8 for _type, _channel, payload in FrameReader(0).feed(data)]


def test_a_frame_over_the_negotiated_frame_max_breaks_the_connection_with_frame_too_large(fake_server_factory):
    server = fake_server_factory(frame_max=8192)
    # Fail-fast (recovery=False): what the oversized frame does to the promises is what is tested.
    client = puka.Client(server.url, recovery=False)  # offers 131072: the smaller, 8192, wins
    client.wait(client.connect(), timeout=10)
    assert client.frame_max == 8192
    tune_ok = [fields for _ch, n, fields in server.received if n == "connection.tune-ok"]
    assert [fields["frame_max"] for fields in tune_ok] == [8192]

    publish = client.basic_publish(exchange="", routing_key="q", body=b"pending")
    consume = client.basic_consume(queue="q", consumer_tag="big")
    assert run_until(client, lambda: server.count("basic.consume") == 1 and server.count("basic.publish") == 1)
    channel = next(ch for ch, n, _fields in server.received if n == "basic.consume")

    def deliver(tag: int, body: bytes, frame_max: int) -> bytes:
        return message(
            channel,
            "basic.deliver",
            body,
            frame_max=frame_max,
            consumer_tag="big",
            delivery_tag=tag,
            exchange="",
            routing_key="q",
        )

    # A body frame of exactly frame_max is within the limit.
    fitting = deliver(1, b"f" * 8184, 8192)
    assert max(frame_sizes(fitting)) == 8192
    server.send(fitting)
    accepted = client.wait(consume, timeout=10)
    assert accepted["body"] == b"f" * 8184

    # A 20,008-byte frame: fine for the 131072 the client offered, not for the 8192 agreed.
    oversized = deliver(2, b"x" * 20000, 131072)
    assert max(frame_sizes(oversized)) == 20008
    server.send(oversized)
    result = client.wait(consume, timeout=10, raise_errors=False)
    assert result is not None, "the connection is still up after a 20,008-byte frame"
    assert result.is_error, "a 20,008-byte frame was accepted after frame_max 8192 was agreed (a %d-byte body)" % len(
        result.get("body", b"")
    )
    assert type(result.exception) is puka.FrameTooLarge, repr(result.exception)
    assert "frame of 20008 bytes exceeds frame_max 8192" in str(result.exception)
    # Every pending promise fails with it; later calls raise at once.
    pending = client.wait(publish, timeout=0, raise_errors=False)
    assert pending is not None and type(pending.exception) is puka.FrameTooLarge, repr(pending)
    assert server.client_closed.wait(10), "the client kept the connection open"
    with pytest.raises(puka.ConnectionBroken):
        client.queue_declare(queue="after")


# --- 3. no part of the password leaks ---------------------------------------------------------------------

#: Characters that must be percent-encoded, no run of three digits (ports cannot look like a piece of it).
PASSWORD = "Kx9#mQ2$vL7pZ4"
QUOTED = urllib.parse.quote(PASSWORD, safe="")


def password_pieces(password: str = PASSWORD, shortest: int = 3) -> set[str]:
    """Every run of ``shortest`` characters of the password, plain or percent-encoded.

    Any longer leak contains one of these, so checking them covers every partial leak.
    """
    forms = {password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password)}
    return {form[i : i + shortest] for form in forms for i in range(len(form) - shortest + 1)}


def assert_no_piece(text: str, what: str) -> None:
    leaked = sorted(piece for piece in password_pieces() if piece in text)
    assert not leaked, "part of the password (%s) shows in %s: %s" % (", ".join(map(repr, leaked)), what, text)


def assert_exception_has_no_piece(exc: BaseException, what: str) -> None:
    assert_no_piece(str(exc), "str(%s)" % what)
    assert_no_piece(repr(exc), "repr(%s)" % what)
    assert_no_piece("".join(traceback.format_exception(exc)), "the traceback of %s" % what)


def all_log_text(caplog) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


def test_the_piece_checker_sees_a_four_character_prefix_and_passes_the_redacted_url():
    assert "Kx9#" in PASSWORD and "Kx9%23" in QUOTED
    for leak in ("amqp://guest:Kx9#***@localhost/", "amqp://guest:Kx9%23***@localhost/", "...pZ4@host", "<mQ2$>"):
        with pytest.raises(AssertionError):
            assert_no_piece(leak, "a leak")
    assert_no_piece("amqp://guest:***@127.0.0.1:5672/%2F", "the redacted URL")
    assert_no_piece("cannot connect to 127.0.0.1:54321: Connection refused", "a port number")


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:%s@localhost/" % QUOTED,
        "amqps://guest:%s@localhost:5671/vh?heartbeat=5" % QUOTED,
        "amqp://guest:%s@[::1]:5673/%%2f" % QUOTED,
    ],
)
def test_reprs_show_no_part_of_the_password(url):
    params = puka.parse_amqp_url(url)
    assert params.password == PASSWORD
    assert_no_piece(repr(params), "repr(params)")
    assert_no_piece(str(params), "str(params)")
    assert_no_piece(params.redacted_url(), "redacted_url()")
    client = puka.Client(url)
    assert "***@" in repr(client)
    assert_no_piece(repr(client), "repr(Client)")
    assert_no_piece(str(client), "str(Client)")
    assert_no_piece(repr(client.params), "repr(client.params)")


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:%s@localhost:notaport/" % QUOTED,
        "amqp://guest:%s@localhost/vhost#frag" % QUOTED,
        "amqp://guest:%s@localhost/?bogus=1" % QUOTED,
        "amqp://guest:%s@localhost/" % PASSWORD,  # unencoded: '#' cuts the URL inside the password
    ],
    ids=["bad-port", "fragment", "bad-option", "unencoded"],
)
def test_bad_url_errors_show_no_part_of_the_password(url):
    for make in (puka.parse_amqp_url, puka.Client):
        with pytest.raises(ValueError) as info:
            make(url)
        assert_exception_has_no_piece(info.value, "the %s error" % make.__name__)


def test_a_refused_connection_shows_no_part_of_the_password(caplog):
    caplog.set_level(logging.DEBUG, logger="puka")
    # Bound, never listening: connecting to it is refused, and no one else can take the port meanwhile.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        client = puka.Client("amqp://guest:%s@127.0.0.1:%d/" % (QUOTED, port))
        with pytest.raises(puka.ConnectionBroken) as info:
            client.wait(client.connect(), timeout=10)
    assert "127.0.0.1:%d" % port in str(info.value)
    assert_exception_has_no_piece(info.value, "the connect error")
    assert_no_piece(repr(client), "repr(Client)")
    with pytest.raises(puka.ConnectionBroken) as later:
        client.queue_declare(queue="x")
    assert_exception_has_no_piece(later.value, "a later call's error")
    assert_no_piece(all_log_text(caplog), "the log")


def test_a_connect_timeout_error_names_the_url_without_any_part_of_the_password(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="puka")
    clock = seam.install_client_clock(monkeypatch)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody ever answers
        port = silent.getsockname()[1]
        client = puka.Client("amqp://guest:%s@127.0.0.1:%d/" % (QUOTED, port), connection_timeout=5)
        connect = client.connect()
        clock.advance(5.5)
        client.on_timer()
        result = client.wait(connect, timeout=0, raise_errors=False)
    assert result is not None and type(result.exception) is puka.ConnectionBroken, repr(result)
    text = str(result.exception)
    assert "timed out" in text and "amqp://guest:" in text and "@127.0.0.1:%d/" % port in text, text  # the URL
    assert_exception_has_no_piece(result.exception, "the timeout error")
    assert_no_piece(repr(client), "repr(Client)")
    assert_no_piece(all_log_text(caplog), "the log")


def test_a_refused_login_shows_no_part_of_the_password_in_errors_frames_or_logs(amqp_url, caplog):
    """The broker's guest user with a wrong password: the client really sends it, the broker refuses."""
    caplog.set_level(logging.DEBUG, logger="puka")
    params = puka.parse_amqp_url(amqp_url)
    assert params.password != PASSWORD
    url = "amqp://%s:%s@%s:%d/%s" % (
        urllib.parse.quote(params.username, safe=""),
        QUOTED,
        "[%s]" % params.host if ":" in params.host else params.host,
        params.port,
        urllib.parse.quote(params.vhost, safe=""),
    )
    recorder = FrameRecorder()
    client = puka.Client(url, middleware=[FrameLogger(), recorder])
    assert_no_piece(repr(client), "repr(Client)")
    with pytest.raises(puka.AccessRefused) as info:
        client.wait(client.connect(), timeout=10)
    assert_exception_has_no_piece(info.value, "the login error")
    assert_no_piece(repr(client), "repr(Client) after the refusal")
    with pytest.raises(puka.ConnectionBroken) as later:
        client.queue_declare(queue="x")
    assert_exception_has_no_piece(later.value, "a later call's error")
    assert "connection.start-ok" in recorder.names("out"), "no credentials were sent: the test proves nothing"
    frames = "\n".join("%r %s" % (frame, frame) for frame in recorder.frames)
    assert_no_piece(frames, "the recorded frames")
    logs = all_log_text(caplog)
    assert "connection.start-ok" in logs, "the frame logger logged nothing: the test proves nothing"
    assert_no_piece(logs, "the log")


# --- 4. basic.nack with multiple ----------------------------------------------------------------------


def test_a_multiple_nack_fails_every_publish_up_to_its_tag_and_no_later_one(fake_server_factory):
    server = fake_server_factory()
    client = puka.Client(server.url)
    client.wait(client.connect(), timeout=10)
    publishes = [client.basic_publish(exchange="", routing_key="q", body=b"m%d" % i) for i in range(1, 6)]
    assert run_until(client, lambda: server.count("basic.publish") == 5)
    assert [p["tag"] for p in server.published] == [1, 2, 3, 4, 5]
    channel = server.published[0]["channel"]

    server.send(method(channel, "basic.nack", delivery_tag=3, multiple=True, requeue=False))
    third = client.wait(publishes[2], timeout=10, raise_errors=False)
    assert third is not None and type(third.exception) is puka.PublishNacked, repr(third)
    # The nack was handled as a whole: 1 and 2 failed with it, 4 and 5 were left alone.
    for tag, number in enumerate(publishes[:3], 1):
        result = client.wait(number, timeout=0, raise_errors=False) if tag < 3 else third
        assert result is not None, "publish %d is still pending after basic.nack(3, multiple)" % tag
        assert type(result.exception) is puka.PublishNacked, (tag, result)
        assert result["delivery_tag"] == tag
    for tag, number in enumerate(publishes[3:], 4):
        assert client.wait(number, timeout=0) is None, "publish %d was settled by basic.nack(3, multiple)" % tag

    server.send(method(channel, "basic.ack", delivery_tag=5, multiple=True))
    assert [client.wait(number, timeout=10) for number in publishes[3:]] == [{}, {}]
    # The connection is healthy.
    assert client.wait(client.queue_declare(queue="after"), timeout=10)["queue"] == "after"
    client.wait(client.close(), timeout=10)


# --- 5. heartbeats, on a controllable clock -----------------------------------------------------------


def test_heartbeat_sent_after_half_an_interval_and_peer_dead_after_two_silent_intervals(
    monkeypatch, fake_server_factory
):
    clock = seam.install_client_clock(monkeypatch)
    server = fake_server_factory(heartbeat=10)
    client = puka.Client(server.url, heartbeat=10, recovery=False)  # fail-fast: the dead peer fails the promise
    result_of(client, client.connect())
    tune_ok = [fields for _ch, n, fields in server.received if n == "connection.tune-ok"]
    assert [fields["heartbeat"] for fields in tune_ok] == [10]
    # A promise the fake server never settles (it does not confirm publishes by itself).
    publish = client.basic_publish(exchange="", routing_key="q", body=b"in flight")
    assert run_until(client, lambda: server.count("basic.publish") == 1)
    assert server.count("heartbeat") == 0
    # From here on, the client sends and receives nothing but what the timers do.

    # Sending: a heartbeat once nothing was sent for N/2 = 5 s, not before.  What on_timer()
    # returns (when it wants to run again, on the fake clock) tells whether it just sent one.
    clock.advance(4.9)
    assert client.on_timer() == pytest.approx(0.1), "a heartbeat went out before N/2 without sending"
    clock.advance(0.2)
    assert client.on_timer() == pytest.approx(5.0), "no heartbeat went out after N/2 without sending"
    assert server.wait_for("heartbeat", 1, timeout=10)
    # A marker: whatever the client wrote before it has reached the server by then.
    marker = client.queue_declare(queue="marker")
    assert result_of(client, marker)["queue"] == "marker"
    names = server.names()
    assert names[: names.index("queue.declare")].count("heartbeat") == 1, names

    # Receiving: the declare-ok was the last thing read.  Just under two intervals of silence...
    clock.advance(19.9)
    assert client.on_timer() == pytest.approx(0.1)  # ...the next check is due when 2N is up
    assert client.wait(publish, timeout=0) is None, "the connection broke before two silent intervals"
    assert server.wait_for("heartbeat", 2, timeout=10)  # still alive: it kept sending heartbeats

    # ...and past two intervals: the peer is presumed dead.
    clock.advance(0.2)
    client.on_timer()
    result = client.wait(publish, timeout=0, raise_errors=False)
    assert result is not None, "the connection survived more than two silent heartbeat intervals"
    assert type(result.exception) is puka.ConnectionBroken, repr(result.exception)
    assert "peer presumed dead" in str(result.exception)
    assert "heartbeat 10s" in str(result.exception)
    assert server.client_closed.wait(10), "the client kept the connection open"
    with pytest.raises(puka.ConnectionBroken):
        client.basic_publish(exchange="", routing_key="q", body=b"after")


# --- 6. basic_consume(consumer_tag=...) is the tag used -------------------------------------------------


def test_basic_consume_with_a_consumer_tag_consumes_under_that_tag(amqp_url, own_queue):
    name = own_queue
    recorder = FrameRecorder()
    client = puka.Client(amqp_url, middleware=[recorder])
    client.wait(client.connect(), timeout=10)
    client.wait(client.queue_declare(queue=name), timeout=10)
    client.wait(client.basic_publish(exchange="", routing_key=name, body=b"tagged"), timeout=10)
    consume = client.basic_consume(queue=name, consumer_tag="my-tag")
    delivered = client.wait(consume, timeout=10)
    assert delivered["body"] == b"tagged"
    assert delivered["consumer_tag"] == "my-tag"  # the broker delivers under the tag the consume asked for
    # On the wire: the one basic.consume carried it, and the broker confirmed it.
    out = [frame.method for frame in recorder.frames if frame.direction == "out" and frame.name == "basic.consume"]
    assert [(m["queue"], m["consumer_tag"]) for m in out] == [(name, "my-tag")]
    ok = [frame.method for frame in recorder.frames if frame.direction == "in" and frame.name == "basic.consume-ok"]
    assert [m["consumer_tag"] for m in ok] == ["my-tag"]
    client.basic_ack(delivered)
    client.wait(client.basic_cancel(consume), timeout=10)
    client.wait(client.close(), timeout=10)


# --- 7. connection.blocked / connection.unblocked -------------------------------------------------------


def test_connection_unblocked_clears_blocked_and_tells_on_blocked(fake_server_factory):
    """RabbitMQ blocks only under a resource alarm (tests/test_blocked.py trips one): the fake server says it here."""
    server = fake_server_factory()
    client = puka.Client(server.url)
    client.wait(client.connect(), timeout=10)
    events: list = []
    client.on_blocked = events.append
    assert client.blocked is None

    server.send(method(0, "connection.blocked", reason="low on memory"))
    assert run_until(client, lambda: len(events) == 1)
    assert events == ["low on memory"]
    assert client.blocked == "low on memory"

    server.send(method(0, "connection.unblocked"))
    assert run_until(client, lambda: len(events) == 2)
    assert events == ["low on memory", None]
    assert client.blocked is None
    client.wait(client.close(), timeout=10)


# --- 8. the broker's connection.close is answered with close-ok ------------------------------------------


def test_a_connection_close_from_the_broker_fails_pending_promises_and_is_answered_with_close_ok(
    fake_server_factory,
):
    server = fake_server_factory()
    # This test is about the close-ok answer and what the promises fail with: fail-fast
    # (recovery=False), so that the client does not reconnect to the fake server after the 320
    # (by default a 320 CONNECTION_FORCED starts a recovery, docs/reliability.rst).
    client = puka.Client(server.url, recovery=False)
    client.wait(client.connect(), timeout=10)
    publish = client.basic_publish(exchange="", routing_key="q", body=b"unconfirmed")  # never acked here
    consume = client.basic_consume(queue="q")  # consume-ok, then nothing delivered
    assert run_until(client, lambda: server.count("basic.publish") == 1 and server.count("basic.consume") == 1)
    assert client.wait([publish, consume], timeout=0) is None

    server.send(method(0, "connection.close", reply_code=320, reply_text="bye", class_id=0, method_id=0))
    for number in (publish, consume):
        result = client.wait(number, timeout=10, raise_errors=False)
        assert result is not None, "promise %d still pending after the broker's connection.close" % number
        assert type(result.exception) is puka.ConnectionForced, repr(result.exception)
        assert result.exception.reply_code == 320
        assert result.exception.reply_text == "bye"
    assert server.wait_for("connection.close-ok"), "the client never answered connection.close: %s" % server.names()
    assert server.count("connection.close-ok") == 1


def test_the_brokers_connection_close_is_what_promises_fail_with_even_when_a_reset_follows_it(
    fake_server_factory,
):
    """What a broker shutdown (rabbitmqctl stop_app) looks like: connection.close 320, then the socket is gone.

    docs/reliability.rst: every pending promise fails "with the broker's error when it gave one".
    """
    server = fake_server_factory()
    client = puka.Client(server.url, recovery=False)  # fail-fast, no reconnection: see the test above
    client.wait(client.connect(), timeout=10)
    consume = client.basic_consume(queue="q")
    assert run_until(client, lambda: server.count("basic.consume") == 1)
    server.send(method(0, "connection.close", reply_code=320, reply_text="bye", class_id=0, method_id=0))
    server.close()  # and resets the connection: the close frame is already in the client's socket buffer
    result = client.wait(consume, timeout=10, raise_errors=False)
    assert result is not None, "the consume promise is still pending after the broker closed the connection"
    assert type(result.exception) is puka.ConnectionForced, repr(result.exception)
    assert result.exception.reply_code == 320
    assert result.exception.reply_text == "bye"


def test_the_brokers_connection_close_is_what_promises_fail_with_even_when_a_write_fails_on_the_reset(
    fake_server_factory,
):
    """As above, with publishes waiting to be written when the close and the reset arrive."""
    server = fake_server_factory()
    client = puka.Client(server.url, recovery=False)  # fail-fast, no reconnection: see the test above
    client.wait(client.connect(), timeout=10)
    consume = client.basic_consume(queue="q")
    assert run_until(client, lambda: server.count("basic.consume") == 1)
    server.send(method(0, "connection.close", reply_code=320, reply_text="bye", class_id=0, method_id=0))
    server.close()  # and resets the connection: the close frame is already in the client's socket buffer
    readable, _, _ = select.select([client.fileno()], [], [], 10)
    assert readable, "the broker's connection.close never reached the client's socket"
    # The client has not read it yet, and has something to write.
    publishes = [client.basic_publish(exchange="", routing_key="q", body=b"after the close") for _ in range(3)]
    for number in [consume, *publishes]:
        result = client.wait(number, timeout=10, raise_errors=False)
        assert result is not None, "promise %d is still pending after the broker closed the connection" % number
        assert type(result.exception) is puka.ConnectionForced, repr(result.exception)
        assert result.exception.reply_code == 320
        assert result.exception.reply_text == "bye"
