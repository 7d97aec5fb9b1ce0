"""The test seam: the one place where tests touch puka's internals.

Everything else in ``tests/`` goes through the public API (``puka.Client``,
``puka.spec``, ``puka.framing``, ``puka.tracing``), the fault proxy and the
scripted fake server.  A few tests need more than that:

* a controllable clock for the transport's timers (heartbeats, deadlines), so
  that a rule such as "the peer is dead after two silent heartbeat intervals"
  is checked against the rule, not against the wall clock;
* a sans-IO protocol core fed scripted frames (the fuzz and memory tests).

Those reach in here and only here: when the core's modules move, this file
changes and the tests that use it do not.

What it offers:

* :class:`Core` -- the protocol core (what a Client runs between its socket
  and its promises) with a scripted broker and a recording transport:
  ``open()``, ``answer()``, ``feed()``/``feed_bytes()``, the operations
  (``publish``, ``consume``, ``declare``, ``get``... returning promise
  numbers), and what can be seen (``sent``, ``is_broken``/``error``,
  ``pending()``, ``result()``, ``in_flight_publishes()``...).  Its docstring
  is the reference.
* :class:`FakeClock`, :func:`install_transport_clock` (the transport's timers
  read it) and :func:`install_client_clock` (``Client.on_timer()`` and the
  client's time-outs too).
* small probes of one client: :func:`unsent_bytes`, :func:`record_read_sizes`.
"""

from __future__ import annotations

import time as _real_time
import types

import puka.core as _core_module
import puka.transport as _transport_module
from puka import spec as _spec
from puka.client import OPERATIONS as _OPERATIONS
from puka.exceptions import ConnectionBroken as _ConnectionBroken
from puka.framing import FrameReader as _FrameReader
from puka.protocol.handshake import FRAME_MAX as _FRAME_MAX
from puka.protocol.session import Session as _Session

# --- a sans-IO protocol core, scripted ----------------------------------------------------------------

#: What the scripted broker announces in connection.start unless told otherwise (RabbitMQ's usual set).
BROKER_CAPABILITIES = {
    "publisher_confirms": True,
    "consumer_cancel_notify": True,
    "basic.nack": True,
    "connection.blocked": True,
    "exchange_exchange_bindings": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}

_M = _spec.METHODS_BY_NAME
#: request -> (reply, fields of the reply copied from the request)
_REPLIES = {
    "channel.open": ("channel.open-ok", ()),
    "confirm.select": ("confirm.select-ok", ()),
    "basic.qos": ("basic.qos-ok", ()),
    "basic.consume": ("basic.consume-ok", ("consumer_tag",)),
    "basic.cancel": ("basic.cancel-ok", ("consumer_tag",)),
    "queue.declare": ("queue.declare-ok", ("queue",)),
    "queue.delete": ("queue.delete-ok", ()),
    "queue.bind": ("queue.bind-ok", ()),
    "exchange.declare": ("exchange.declare-ok", ()),
    "channel.close": ("channel.close-ok", ()),
    "connection.close": ("connection.close-ok", ()),
}


class Core:
    """puka's sans-IO protocol core with a scripted broker and a recording transport.

    The core is what a :class:`puka.Client` runs between its socket and its
    promises: it is fed frames and says what to send.  Here nothing touches a
    socket: what the core sends is recorded, what the broker says is fed by
    the test.  Each operation returns its promise number, as the client does.

    Scripting the broker:

    ``open(capabilities=..., server_properties=..., channel_max=, frame_max=, heartbeat=)``
        runs the handshake (start, tune, open-ok) and opens the default
        exchange's publish channel (channel.open-ok, confirm.select-ok);
        returns the connect promise's number.
    ``answer(*requests)``
        feeds the plain reply (``channel.open`` -> ``channel.open-ok``,
        ``basic.consume`` -> ``basic.consume-ok`` with its tag...) to every
        request of those names sent and not answered yet, in the order sent.
    ``feed(frames)``
        ``(frame_type, channel, payload)`` tuples, straight to the core.
    ``feed_bytes(data)``
        received bytes, as the transport handles them: framed, heartbeats
        taken out, a framing error (``puka.spec.DecodeError``) or a heartbeat
        off channel 0 breaks the connection.  Any other exception is the
        core's and propagates.  Returns False once the connection is over.
    ``lose_connection(reason)``
        the socket is gone (reset, EOF), as the transport reports it.

    The client's side: ``publish(routing_key, body, exchange=, headers=,
    mandatory=)``, ``consume(queue, prefetch_count=, no_ack=,
    consumer_tag=)``, ``cancel(consume)``, ``qos(consume, prefetch_count)``,
    ``declare(queue)`` (queue.declare), ``get(queue, no_ack=)``,
    ``close()``: promise numbers; ``take_results()``: every result waiting,
    as ``(promise number, result)`` in arrival order (what ``wait`` and the
    callbacks hand out); ``ack(message)``: basic_ack of a delivered message.
    Errors are raised at the call as the client raises them (``ValueError``,
    ``ConnectionBroken`` once the connection is over...).

    What can be seen:

    ``sent``
        every method frame sent, decoded: ``(channel, name, method)``;
        ``sent_bytes()`` all the bytes (protocol header first);
        ``sent_size`` how many; ``clear_sent()`` forgets them.
    ``is_broken`` / ``error``
        the connection is over (the next call raises ConnectionBroken), and
        the error promises failed with -- whether the peer broke it or the
        client closed it.
    ``pending()``
        numbers of the promises whose final result has not come (a consume
        promise stays pending while it consumes).
    ``result(number)`` / ``resolutions(number)``
        a promise's final result (None while pending), and how many final
        results it was given (never more than one).
    ``promises_made()``
        every promise number handed out so far.
    ``in_flight_publishes()``
        numbers of the publishes the core still tracks as unconfirmed:
        written and awaiting the broker's confirm, or queued for their
        channel.

    ``Core(record=False)`` (or ``core.record = False`` at any time, e.g.
    after ``open()``) keeps nothing from then on -- neither what is sent
    (``sent_size`` still counts it) nor the results (``result()`` and
    ``resolutions()`` raise): for measuring the core's own memory.
    """

    def __init__(
        self,
        *,
        pubacks: bool | None = None,
        max_message_size: int | None = None,
        heartbeat: float = 0,
        record: bool = True,
    ) -> None:
        options = {} if max_message_size is None else {"max_message_size": max_message_size}
        #: keep what is sent and the results promises get (False: only count the bytes sent); may change any time
        self.record = record
        self._sent: list = []
        self.sent_size = 0
        self._decoder = _FrameReader(0)
        self._decoded = 0  # buffers of _sent already decoded into _methods
        self._methods: list = []
        self._answered = 0  # entries of _methods that answer() has looked at
        self._unanswered: list = []
        self._transport_error: BaseException | None = None
        self._reader = _FrameReader(_FRAME_MAX)
        self._results: dict[int, list] = {}
        self._observer = self._observe
        self._session = _Session(self, pubacks=pubacks, heartbeat=heartbeat, **options)

    # --- the recording transport (the session's Port)

    def set_heartbeat(self, interval: float) -> None:
        pass

    def set_deadline(self, when, why: str) -> None:
        pass

    def request_flush(self) -> None:
        pass

    def send(self, data) -> None:
        self._send(data)

    def send_many(self, buffers) -> None:
        self._send_many(buffers)

    def set_frame_max(self, frame_max: int) -> None:
        self._set_frame_max(frame_max)

    def close_transport(self, exc, flush: bool) -> None:
        self._close_transport(exc, flush)

    def _send(self, data) -> None:
        if self._transport_error is not None:
            raise self._transport_error
        self.sent_size += len(data)
        if self.record:
            self._sent.append(bytes(data))

    def _send_many(self, buffers) -> None:
        for data in buffers:
            self._send(data)

    def _set_frame_max(self, frame_max: int) -> None:
        self._reader.frame_max = frame_max

    def _close_transport(self, exc, flush: bool = False) -> None:
        if self._transport_error is None:
            self._transport_error = exc

    def _observe(self, promise, result) -> None:
        if self.record:
            self._results.setdefault(promise.number, []).append(result)

    def _track(self, promise_or_number) -> int:
        session = self._session
        if isinstance(promise_or_number, int):
            promise = session.table.promises.get(promise_or_number)
            number = promise_or_number
        else:
            promise, number = promise_or_number, promise_or_number.number
        if promise is not None:
            promise.observer = self._observer
            if promise.final and number not in self._results:  # resolved at the call
                self._results[number] = [promise.results[-1]]
        return number

    # --- scripting the broker

    def open(
        self,
        *,
        capabilities: dict | None = None,
        server_properties: dict | None = None,
        channel_max: int = 2047,
        frame_max: int = _FRAME_MAX,
        heartbeat: int = 0,
    ) -> int:
        number = self._track(self._session.start())
        if server_properties is None:
            server_properties = {"product": "seam", "capabilities": dict(BROKER_CAPABILITIES, **(capabilities or {}))}
        self.feed(
            [
                _method(
                    0,
                    "connection.start",
                    version_major=0,
                    version_minor=9,
                    server_properties=server_properties,
                    mechanisms="PLAIN",
                    locales="en_US",
                )
            ]
        )
        self.feed([_method(0, "connection.tune", channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat)])
        self.feed([_method(0, "connection.open-ok")])
        self.answer("channel.open", "confirm.select")
        return number

    def answer(self, *requests: str) -> list[int]:
        """Reply to the requests of these names not answered yet; returns the channels answered."""
        for name in requests:
            if name not in _REPLIES:
                raise ValueError("no plain reply known for %r" % name)
        methods = self.sent
        self._unanswered.extend(methods[self._answered :])
        self._answered = len(methods)
        frames, channels, kept = [], [], []
        for channel, name, method in self._unanswered:
            if name in requests:
                reply, copied = _REPLIES[name]
                fields = {field: method[field] for field in copied}
                if reply == "queue.declare-ok" and not fields["queue"]:
                    fields["queue"] = "amq.gen-seam"
                frames.append(_method(channel, reply, **fields))
                channels.append(channel)
            else:
                kept.append((channel, name, method))
        self._unanswered = kept
        if frames:
            self.feed(frames)
        return channels

    def feed(self, frames) -> None:
        self._session.on_frames(list(frames))

    def feed_bytes(self, data) -> bool:
        if self.is_broken:
            return False
        try:
            frames = self._reader.feed(data)
        except _spec.DecodeError as exc:
            return self._broken("protocol violation: %s" % exc)
        payload = []
        for frame in frames:
            if frame[0] == _spec.FRAME_HEARTBEAT:
                if frame[1] != 0:
                    return self._broken("heartbeat on channel %d" % frame[1])
                continue
            payload.append(frame)
        if payload:
            self._session.on_frames(payload)
        return not self.is_broken

    def lose_connection(self, reason: str = "connection lost") -> None:
        """The socket is gone (reset, EOF): what the transport tells the core."""
        self._broken(reason)

    def _broken(self, message: str) -> bool:
        exc = _ConnectionBroken(message)
        self._close_transport(exc)
        self._session.on_broken(exc)
        return False

    # --- the client's side

    def publish(self, routing_key: str, body, *, exchange: str = "", headers=None, mandatory: bool = False) -> int:
        return self._track(self._session.publishing.publish(exchange, routing_key, body, headers, mandatory, None))

    def consume(self, queue: str, *, prefetch_count: int = 0, no_ack: bool = False, consumer_tag=None) -> int:
        item = {"queue": queue, "consumer_tag": consumer_tag}
        return self._track(self._session.consuming.consume([item], prefetch_count, no_ack, None))

    def cancel(self, consume: int) -> int:
        return self._track(self._session.consuming.cancel(consume, None))

    def qos(self, consume: int, prefetch_count: int) -> int:
        return self._track(self._session.consuming.qos(consume, prefetch_count, None))

    def declare(self, queue: str) -> int:
        operation = _OPERATIONS["queue_declare"]
        args = (queue, False, False, False, False, False, {})
        return self._track(self._session.call(operation.request, operation.reply_ids, args, None))

    def get(self, queue: str, *, no_ack: bool = False) -> int:
        return self._track(self._session.consuming.get(queue, no_ack, None))

    def close(self) -> int:
        return self._track(self._session.close())

    def ack(self, message) -> None:
        self._session.consuming.settle(message, "ack")

    def take_results(self) -> list:
        table = self._session.table
        ready = table.ready
        taken = []
        while ready:
            promise = ready.popleft()
            if promise.results:
                taken.append((promise.number, table.take(promise)))
        return taken

    # --- what can be seen

    @property
    def sent(self) -> list:
        """Every method frame sent so far (since ``clear_sent()``), decoded: ``(channel, name, method)``."""
        sent = self._sent
        for data in sent[self._decoded :]:
            if data == _spec.PROTOCOL_HEADER:
                continue
            for frame_type, channel, payload in self._decoder.feed(data):
                if frame_type == 1:
                    method, _end = _spec.decode_method(payload)
                    self._methods.append((channel, method.name, method))
        self._decoded = len(sent)
        return list(self._methods)

    def sent_bytes(self) -> bytes:
        return b"".join(self._sent)

    def clear_sent(self) -> None:
        """Forget what was sent (answer() still knows the requests not answered yet)."""
        methods = self.sent
        self._unanswered.extend(methods[self._answered :])
        self._sent, self._decoded, self._methods, self._answered = [], 0, [], 0

    @property
    def is_broken(self) -> bool:
        return self._session.error is not None

    @property
    def error(self) -> BaseException | None:
        return self._session.error

    def pending(self) -> list[int]:
        return sorted(number for number, promise in self._session.table.promises.items() if not promise.final)

    def _recorded(self) -> dict:
        if not self.record:
            raise RuntimeError("this Core does not record results (record=False)")
        return self._results

    def result(self, number: int):
        results = self._recorded().get(number)
        return results[0] if results else None

    def resolutions(self, number: int) -> int:
        return len(self._recorded().get(number, ()))

    def promises_made(self) -> range:
        return range(1, self._session.table.next_number)

    def in_flight_publishes(self) -> list[int]:
        numbers = set()
        for publisher in self._session.publishing.publishers.values():
            numbers.update(promise.number for promise in publisher.inflight.values())
            numbers.update(entry[0].number for entry in publisher.backlog)
        return sorted(numbers)


def _method(channel: int, name: str, **fields) -> tuple[int, int, bytes]:
    return (1, channel, _M[name].encode(**fields))


# --- a controllable clock --------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = _real_time.monotonic() if start is None else start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def install_transport_clock(monkeypatch) -> FakeClock:
    """Make the transport (socket, heartbeats, deadlines) read a FakeClock.

    Only the transport's module sees the fake time: the fake server, the proxy
    and pytest keep the real clock.
    """
    clock = FakeClock()
    names = [name for name in dir(_real_time) if not name.startswith("__")]
    shim = types.SimpleNamespace(**{name: getattr(_real_time, name) for name in names})
    shim.monotonic = clock.monotonic
    monkeypatch.setattr(_transport_module, "time", shim)
    return clock


def install_client_clock(monkeypatch) -> FakeClock:
    """Like :func:`install_transport_clock`, and ``Client.on_timer()`` reads the same FakeClock.

    ``on_timer()`` takes the time it hands to the transport's timers in the
    client's module; without this it would hold the real clock against the
    fake one.  The client's own time-outs follow the fake clock too
    (``wait(timeout=...)``, ``loop(timeout=...)``, the connect and close
    deadlines): ``wait(promise, timeout=0)`` still returns at once.
    """
    import puka.client as _client_module

    clock = install_transport_clock(monkeypatch)
    monkeypatch.setattr(_client_module, "time", _transport_module.time)
    monkeypatch.setattr(_core_module, "time", _transport_module.time)
    return clock


def unsent_bytes(client) -> int:
    """What ``PUBLISH_HIGH_WATER`` bounds: bytes queued for the socket plus publishes waiting for their channel."""
    return client._core.backlog


def record_read_sizes(client) -> list[int]:
    """From now on, append to the returned list the size of every chunk the client reads from its socket.

    Call it before ``connect()``.
    """
    from puka.framing import FrameReader

    class CountingReader(FrameReader):
        __slots__ = ("sizes",)

        def feed(self, data):
            self.sizes.append(len(data))
            return FrameReader.feed(self, data)

    transport = client._core.transport
    reader = CountingReader(transport.reader.frame_max)
    reader.sizes = []
    transport.reader = reader
    return reader.sizes
