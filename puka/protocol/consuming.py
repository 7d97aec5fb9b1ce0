"""Consuming: consumers, deliveries, qos, cancel, gets and settling.

Theory of operation: a consume promise owns one pooled channel.  On it go one
``basic.qos`` (the per-consumer prefetch window) and one ``basic.consume`` per
queue (:meth:`Consuming.consume`); every ``basic.deliver`` on that channel is
one more result of the promise.  A message delivered with acks on is kept in
the channel's ``unacked`` (delivery tag -> message) until it is settled, and
the promise keeps its channel while it ``held`` any.

* ``basic_qos`` and ``basic_cancel`` of a consume wait for its last
  ``basic.consume-ok`` (RabbitMQ may answer a later method first, and a cancel
  sent before consume-ok crashes the channel).
* The broker cancelling a consumer (queue deleted) fails the consume promise
  with ConsumerCancelled and cancels its sibling consumers.
* Settling: ``basic.ack``/``nack``/``reject`` are checked against ``unacked``
  (a message from another channel, already settled or consumed without acks
  is a ValueError at the call).  A settlement is sent at once, after every
  deferred ack, and ``Port.request_flush`` writes it.  The exception is an ack
  of the lowest unsettled tag while a further delivery of its consume waits in
  the client: it is deferred (``on_ack_deferred`` is told), and the deferred
  acks of a channel go out as one ``basic.ack(multiple)`` every
  :data:`ACK_BATCH` acks, with the next settlement sent at once, or at the
  client's next call (:meth:`Consuming.flush_acks`: every call into the
  client, every write and close flush them).
* ``basic.get`` borrows a pooled channel for one ``get-ok``/``get-empty``.
"""

from __future__ import annotations

from collections import deque

from .. import exceptions, spec
from ..framing import method_frame
from ..promise import Kind, Result
from .publishing import REPLY_TO

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..promise import Callback, Promise
    from .channels import Channel
    from .session import Session

M = spec.METHODS_BY_NAME
BASIC_QOS_OK = M["basic.qos-ok"].method_id
BASIC_CONSUME_OK = M["basic.consume-ok"].method_id
BASIC_CANCEL = M["basic.cancel"].method_id
BASIC_CANCEL_OK = M["basic.cancel-ok"].method_id
BASIC_DELIVER = M["basic.deliver"].method_id
BASIC_GET_OK = M["basic.get-ok"].method_id
BASIC_GET_EMPTY = M["basic.get-empty"].method_id

_encode_ack = M["basic.ack"].encode_args
_encode_nack = M["basic.nack"].encode_args
_encode_reject = M["basic.reject"].encode_args
_encode_qos = M["basic.qos"].encode_args
_encode_cancel = M["basic.cancel"].encode_args

#: Deferred acks of a channel are sent as one basic.ack(multiple) at least this often.
ACK_BATCH = 64


class ConsumeState:
    """What a consume promise remembers: its consumers, ack mode, what waits for its channel."""

    __slots__ = (
        "no_ack",
        "prefetch",
        "consumers",
        "by_tag",
        "cancel_promise",
        "deferred",
        "started",
        "on_message",
        "offsets",
    )

    def __init__(self, no_ack: bool, consumers: list[dict[str, Any]], prefetch: int) -> None:
        #: deliveries go to this function instead of the promise's results (the client's own
        #: consumers: the direct reply-to consumer of rpc_call)
        self.on_message: Callable[[Any], None] | None = None
        #: stream consumers only: consumer tag -> the last offset delivered
        self.offsets: dict[str, int] | None = None
        self.no_ack = no_ack
        self.prefetch = prefetch
        self.consumers = consumers
        #: consumer tag -> queue, for telling which queue a delivery came from
        self.by_tag: dict[str, str] = {consumer["tag"]: consumer["queue"] for consumer in consumers}
        self.cancel_promise: Promise | None = None
        self.deferred: list[Callable[[Channel], None]] = []
        self.started = False

    def queue_of(self, consumer_tag: str | None) -> str | None:
        """The queue a delivery with this consumer tag came from."""
        queue: str | None = self.by_tag.get(consumer_tag)  # type: ignore[arg-type]
        if queue is None and len(self.by_tag) == 1:
            queue = next(iter(self.by_tag.values()))
        return queue


class Get:
    """What a basic_get asks."""

    __slots__ = ("queue", "no_ack", "sent")

    def __init__(self, queue: str, no_ack: bool) -> None:
        self.queue = queue
        self.no_ack = no_ack
        #: written to a connection (without acks, the message may be gone with it)
        self.sent = False

    @property
    def safe_to_repeat(self) -> bool:
        return not (self.sent and self.no_ack)


class Control:
    """A basic_qos (``prefetch`` set) or basic_cancel (``prefetch`` None) of a consume promise."""

    __slots__ = ("consume", "prefetch")

    def __init__(self, consume: Promise, prefetch: int | None) -> None:
        self.consume = consume
        self.prefetch = prefetch


class Consuming:
    """Consumers, gets and settlements of one connection.  See the module docstring."""

    def __init__(self, session: Session) -> None:
        self.session = session
        #: channels with a deferred ack
        self.pending_acks: list[Channel] = []
        #: called when an ack is deferred while none was (the layer above sees that its next call writes it)
        self.on_ack_deferred: Callable[[], None] | None = None
        #: asked when a settlement names a message this connection does not hold (a
        #: message of an earlier connection, after a recovery): True when it dealt with it
        self.on_unknown_settlement: Callable[[Promise | None, Any, bool], bool] | None = None

    # --- consume --------------------------------------------------------------------------------------

    def consume(
        self,
        queues: list[dict[str, Any]],
        prefetch_count: int,
        no_ack: bool,
        callback: Callback | None,
        on_message: Callable[[Any], None] | None = None,
    ) -> int:
        """basic.qos then basic.consume for each queue; every delivery is a result (or goes to ``on_message``)."""
        session = self.session
        _encode_qos(0, prefetch_count, False)  # bad arguments raise here, before anything is sent
        number = session.table.next_number
        consumers = []
        for index, item in enumerate(queues):
            consumer = {
                "queue": item["queue"],
                "no_local": bool(item.get("no_local", False)),
                "exclusive": bool(item.get("exclusive", False)),
                "arguments": item.get("arguments") or {},
                "tag": item.get("consumer_tag") or "puka.%d.%d" % (number, index),
                "index": index,
            }
            _consume_payload(consumer, no_ack)  # bad arguments raise here, before anything is sent
            consumers.append(consumer)
        reply_to = any(consumer["queue"] == REPLY_TO for consumer in consumers)
        if reply_to and session.publishing.reply_publisher is not None:
            raise ValueError(
                "this client already consumes %s (one consumer per client; rpc_call() makes one)" % REPLY_TO
            )
        promise = session.new_promise(callback, Kind.CONSUME)
        state = promise.consume = ConsumeState(no_ack, consumers, prefetch_count)
        state.on_message = on_message
        if any("x-stream-offset" in consumer["arguments"] for consumer in consumers):
            # A stream consumer: its last offset delivered is kept, so a recovery resumes after it.
            state.offsets = {}
        if reply_to:
            session.publishing.expect_reply_channel()
        self.start_consume(promise)
        return promise.number

    def start_consume(
        self, promise: Promise, privileged: bool = False, on_started: Callable[[], None] | None = None
    ) -> None:
        """Start (or, after a recovery, restart) a consume promise's consumers on a channel.

        ``on_started`` is called once the last basic.consume-ok arrived.
        """
        session = self.session
        state: ConsumeState = promise.consume
        state.started = False
        state.deferred = []

        def start(promise: Promise) -> None:
            channel = promise.channel
            if state.on_message is not None:
                channel.handlers[BASIC_DELIVER] = self._deliver_to_hook
            elif state.offsets is not None:
                channel.handlers[BASIC_DELIVER] = self._deliver_stream
            else:
                channel.handlers[BASIC_DELIVER] = self.on_deliver
            channel.handlers[BASIC_CANCEL] = self.on_server_cancel
            session.send(method_frame(channel.number, _encode_qos(0, state.prefetch, False)))
            channel.expect((BASIC_QOS_OK,), _ignore)
            consumers = state.consumers
            for i, consumer in enumerate(consumers):
                session.send(method_frame(channel.number, _consume_payload(consumer, state.no_ack)))
                channel.expect((BASIC_CONSUME_OK,), started if i == len(consumers) - 1 else _ignore)

        def started(channel: Channel, _reply: Any) -> None:
            # RabbitMQ may answer a later method before basic.consume-ok (and a cancel
            # sent before it crashes the channel): qos and cancel wait for this.
            state.started = True
            deferred, state.deferred = state.deferred, []
            for action in deferred:
                action(channel)
            if any(consumer["queue"] == REPLY_TO for consumer in state.consumers):
                session.publishing.attach_reply_channel(channel)
            if on_started is not None:
                on_started()

        session.channels.acquire(promise, start, privileged)

    def _deliver_stream(self, channel: Channel, message: Any) -> None:
        """A delivery of a stream consumer: note its offset (``x-stream-offset``), then as any other."""
        promise = channel.promise
        offset = message["headers"].get("x-stream-offset")
        if promise is not None and isinstance(offset, int):
            promise.consume.offsets[message["consumer_tag"]] = offset
        self.on_deliver(channel, message)

    def _deliver_to_hook(self, channel: Channel, message: Any) -> None:
        """A delivery for the client's own consumer (no_ack): to its on_message, not to results."""
        promise = channel.promise
        if promise is not None and not promise.final:
            promise.consume.on_message(message)

    def on_deliver(self, channel: Channel, message: Any) -> None:
        promise = channel.promise
        if promise is None or promise.final:
            # Deliveries racing a cancel whose promise is gone: hand them back.
            self.session.send(method_frame(channel.number, _encode_reject(message["delivery_tag"], True)))
            return
        message["promise_number"] = promise.number
        if not promise.consume.no_ack:
            tag = message["delivery_tag"]
            channel.unacked[tag] = message
            channel.last_tag = tag
            if not channel.low:
                channel.low = tag
            promise.held += 1
        results = promise.results
        if results is None:
            promise.results = results = deque()
        results.append(message)
        self.session.table.ready.append(promise)

    def on_server_cancel(self, channel: Channel, method: Any) -> None:
        """The broker cancelled one of our consumers (queue deleted...): end the consume promise."""
        session = self.session
        promise = channel.promise
        tag = method["consumer_tag"]
        if not method["no_wait"]:
            session.send(method_frame(channel.number, M["basic.cancel-ok"].encode_args(tag)))
        if promise is None or promise.final:
            return
        state = promise.consume
        for consumer in state.consumers:
            if consumer["tag"] != tag:
                session.send(method_frame(channel.number, _encode_cancel(consumer["tag"], False)))
                channel.expect((BASIC_CANCEL_OK,), _ignore)
        state.consumers = []
        channel.handlers[BASIC_CANCEL] = _ignore
        exc = exceptions.ConsumerCancelled("the broker cancelled consumer %s (queue deleted?)" % tag)
        self._reply_consumer_gone(channel, exc)
        session.table.fail(promise, exc, {"consumer_tag": tag})

    def _reply_consumer_gone(self, channel: Channel, exc: BaseException) -> None:
        """When ``channel`` was the direct reply-to consumer's, publishes on it fail with ``exc``."""
        reply = self.session.publishing.reply_publisher
        if reply is not None and reply.channel is channel:
            self.session.publishing.detach_reply_channel(exc)

    def channel_closed(self, promise: Promise, exc: BaseException) -> None:
        """The consume's channel was closed by the broker: a pending cancel fails with it."""
        cancel = promise.consume.cancel_promise
        if cancel is not None and not cancel.final:
            self.session.table.fail(cancel, exc)
        if promise.channel is not None:
            self._reply_consumer_gone(promise.channel, exc)

    def consume_promise(self, number: int, what: str) -> Promise:
        promise = self.session.table.promises.get(number)
        if promise is None or promise.kind is not Kind.CONSUME:
            raise ValueError("%s: promise %r is not an active basic_consume" % (what, number))
        return promise

    @staticmethod
    def _on_consume_channel(consume: Promise, action: Callable[[Channel], None]) -> None:
        state = consume.consume
        if state.started and consume.channel is not None:
            action(consume.channel)
        else:
            state.deferred.append(action)

    def qos(self, consume_number: int, prefetch_count: int, callback: Callback | None) -> int:
        """Change a consume promise's prefetch window.

        RabbitMQ applies a (per-consumer) basic.qos to consumers started after
        it, so each consumer is cancelled and started again, under the same
        tag, with the new window.  Messages delivered before stay deliverable
        and acknowledgeable; unacknowledged ones do not count against the new
        window.
        """
        session = self.session
        consume = self.consume_promise(consume_number, "basic_qos")
        _encode_qos(0, prefetch_count, False)  # bad arguments raise here, before anything is sent
        promise = session.new_promise(callback, Kind.CONSUME_CONTROL)
        promise.request = Control(consume, prefetch_count)
        self.start_control(promise)
        return promise.number

    def start_control(self, promise: Promise) -> None:
        """Run a basic_qos or basic_cancel (new, or carried over from a lost connection)."""
        control: Control = promise.request
        if control.prefetch is None:
            self._start_cancel(promise, control.consume)
        else:
            self._start_qos(promise, control.consume, control.prefetch)

    def _start_qos(self, promise: Promise, consume: Promise, prefetch_count: int) -> None:
        session = self.session
        state: ConsumeState = consume.consume
        payload = _encode_qos(0, prefetch_count, False)

        def switch(channel: Channel) -> None:
            if consume.final:
                session.table.resolve(promise, Result())
                return
            session.send(method_frame(channel.number, payload))
            replies = [BASIC_QOS_OK]
            for consumer in state.consumers:
                # Same tag: RabbitMQ forgets a tag as it processes basic.cancel.
                session.send(method_frame(channel.number, _encode_cancel(consumer["tag"], False)))
                session.send(method_frame(channel.number, _consume_payload(consumer, state.no_ack)))
                replies += [BASIC_CANCEL_OK, BASIC_CONSUME_OK]
            remaining = [len(replies)]

            def answered(channel: Channel, reply: Any) -> None:
                remaining[0] -= 1
                if not remaining[0]:
                    state.prefetch = prefetch_count
                    session.table.resolve(promise, Result(prefetch_count=prefetch_count))

            for reply in replies:
                channel.expect((reply,), answered)

        self._on_consume_channel(consume, switch)

    def cancel(self, consume_number: int, callback: Callback | None) -> int:
        """basic.cancel every consumer of a consume promise; the consume promise then ends."""
        session = self.session
        consume = self.consume_promise(consume_number, "basic_cancel")
        promise = session.new_promise(callback, Kind.CONSUME_CONTROL)
        promise.request = Control(consume, None)
        self.start_control(promise)
        return promise.number

    def _start_cancel(self, promise: Promise, consume: Promise) -> None:
        session = self.session
        state: ConsumeState = consume.consume
        state.cancel_promise = promise
        table = session.table

        def finish(channel: Channel, reply: Any) -> None:
            table.resolve(promise, reply)
            table.end_quietly(consume)
            self._reply_consumer_gone(channel, exceptions.ConnectionBroken("the reply-to consumer was cancelled"))

        def send_cancels(channel: Channel) -> None:
            consumers, state.consumers = state.consumers, []
            channel.handlers[BASIC_CANCEL] = _ignore
            if not consumers or consume.final:
                finish(channel, Result())
                return
            for i, consumer in enumerate(consumers):
                session.send(method_frame(channel.number, _encode_cancel(consumer["tag"], False)))
                channel.expect((BASIC_CANCEL_OK,), finish if i == len(consumers) - 1 else _ignore)

        if consume.final:
            table.resolve(promise, Result())
        else:
            self._on_consume_channel(consume, send_cancels)

    # --- get ------------------------------------------------------------------------------------------

    def get(self, queue: str, no_ack: bool, callback: Callback | None) -> int:
        """basic.get: a message (held for its ack) or a result with ``empty`` True."""
        session = self.session
        M["basic.get"].encode_args(queue, no_ack)  # bad arguments raise here, before anything is sent
        promise = session.new_promise(callback, Kind.GET)
        promise.request = Get(queue, no_ack)
        self.start_get(promise)
        return promise.number

    def start_get(self, promise: Promise) -> None:
        """Run a basic_get (new, or carried over from a lost connection)."""
        session = self.session
        get: Get = promise.request
        queue, no_ack = get.queue, get.no_ack
        payload = M["basic.get"].encode_args(queue, no_ack)

        def start(promise: Promise) -> None:
            channel = promise.channel
            get.sent = True
            session.send(method_frame(channel.number, payload))
            channel.expect((BASIC_GET_OK, BASIC_GET_EMPTY), got)

        def got(channel: Channel, reply: Any) -> None:
            if reply.method_id == BASIC_GET_EMPTY:
                session.table.resolve(promise, Result(empty=True))
                return
            reply["promise_number"] = promise.number
            if not no_ack:
                tag = reply["delivery_tag"]
                channel.unacked[tag] = reply
                channel.last_tag = tag
                if not channel.low:
                    channel.low = tag
                promise.held = 1
            session.table.resolve(promise, reply)

        session.channels.acquire(promise, start)

    # --- settling -------------------------------------------------------------------------------------

    def settle(
        self,
        message: Any,
        verb: str,
        requeue: bool = True,
        multiple: bool = False,
        before_send: Callable[[Any, list[int]], None] | None = None,
    ) -> None:
        """basic.ack / basic.nack / basic.reject a delivered message (no promise: no reply).

        ``before_send(message, tags)`` is called once the settlement is known
        valid, with every delivery tag it settles, just before it is sent.
        """
        session = self.session
        if session.error is not None:
            raise session.broken_error()
        try:
            number = message["promise_number"]
            tag = message["delivery_tag"]
        except (KeyError, TypeError):
            raise ValueError("basic_%s takes a message delivered by basic_consume or basic_get" % verb) from None
        promise = session.table.promises.get(number)
        channel = promise.channel if promise is not None else None
        if channel is None or channel.unacked.get(tag) is not message:
            if self.on_unknown_settlement is not None and self.on_unknown_settlement(promise, message, multiple):
                return
            raise ValueError(
                "basic_%s: message (delivery tag %r) is not awaiting an acknowledgement from this client: "
                "already settled, consumed with no_ack, from a channel that closed, or from another client"
                % (verb, tag)
            )
        unacked = channel.unacked
        settled = [t for t in unacked if t <= tag] if multiple else [tag]
        if before_send is not None:
            before_send(message, settled)
        for t in settled:
            del unacked[t]
        low = channel.low
        last = channel.last_tag
        while low <= last and low not in unacked:
            low += 1
        channel.low = low
        if verb == "ack" and tag < low:
            # Every tag up to this one is settled: one basic.ack(multiple) stands for this
            # ack and the others deferred on the channel.  Deferred only while a further
            # delivery of the consume waits in the client: the application will call in for
            # it, and every call writes the deferred acks first (the client's flush points).
            count = channel.pending_count + len(settled)
            if promise.results and count < ACK_BATCH:  # type: ignore[union-attr]
                if not channel.pending_ack:
                    pending = self.pending_acks
                    pending.append(channel)
                    if len(pending) == 1 and self.on_ack_deferred is not None:
                        self.on_ack_deferred()
                channel.pending_ack = tag
                channel.pending_count = count
            else:
                if not channel.pending_ack:
                    self.pending_acks.append(channel)
                channel.pending_ack = tag
                self.flush_acks()
                session.port.request_flush()  # nothing deferred: write now
        else:
            if self.pending_acks:
                self.flush_acks()  # the deferred acks first: the broker sees them in order
            if verb == "ack":
                payload = _encode_ack(tag, multiple)
            elif verb == "nack":
                payload = _encode_nack(tag, multiple, requeue)
            else:
                payload = _encode_reject(tag, requeue)
            session.send(method_frame(channel.number, payload))
            session.port.request_flush()  # nothing deferred: write now
        promise.held -= len(settled)  # type: ignore[union-attr]
        if promise.final and not promise.results and not promise.held:  # type: ignore[union-attr]
            session.table.forget(promise)  # type: ignore[arg-type]

    def send_pending_ack(self, channel: Channel) -> None:
        tag = channel.pending_ack
        channel.pending_ack = 0
        channel.pending_count = 0
        if channel.is_open and self.session.channels.by_number.get(channel.number) is channel:
            self.session.send(method_frame(channel.number, _encode_ack(tag, True)))

    def flush_acks(self) -> None:
        """Send the acks deferred by ``settle`` (every call into the client, and before writing or closing)."""
        channels, self.pending_acks = self.pending_acks, []
        for channel in channels:
            if channel.pending_ack:
                self.send_pending_ack(channel)


def _ignore(channel: Channel, method: Any) -> None:
    pass


def _consume_payload(consumer: dict[str, Any], no_ack: bool) -> bytes:
    return M["basic.consume"].encode_args(
        consumer["queue"],
        consumer["tag"],
        consumer["no_local"],
        no_ack,
        consumer["exclusive"],
        False,
        consumer["arguments"],
    )
