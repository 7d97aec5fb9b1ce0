"""Consuming: consumers, deliveries, qos, cancel, gets and settling.

Theory of operation: a consume promise owns one pooled channel.  On it go one
``basic.qos`` (the per-consumer prefetch window) and one ``basic.consume`` per
queue (:meth:`Consuming.consume`); every ``basic.deliver`` on that channel is
one more result of the promise.  A message delivered with acks on is kept in
the channel's ``unacked`` (delivery tag -> message) until it is settled, and
the promise keeps its channel while it ``held`` any.

* ``basic_qos`` and ``basic_cancel`` of a consume wait for its last
  ``basic.consume-ok`` (RabbitMQ may answer a later method first, and a cancel
  sent before consume-ok crashes the channel), and for each other, in order.
  When the consume's channel goes, those waiting fail with it.
* ``basic_qos`` replaces the consumers: a new consumer per queue under a fresh
  tag (``<first tag>.q<n>``) with the new window, then the old one is
  cancelled -- the queue never lacks a consumer, and acks of earlier messages
  never credit the new one.  Until the messages held from before are settled,
  the client keeps the window itself (:class:`Window`: deliveries wait in the
  client while their queue's held messages fill it); the promise resolves
  once the held messages fit it.  See :meth:`Consuming._start_qos`.
* Consumer tags given twice in one consume are a ValueError at the call (the
  broker would close the connection); a generated tag steps aside for a given one.
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
from struct import Struct

from .. import exceptions, spec
from ..framing import method_frame
from ..promise import Kind, Result
from .channels import ChannelState
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
_OPEN = ChannelState.OPEN

#: Deferred acks of a channel are sent as one basic.ack(multiple) at least this often.
ACK_BATCH = 64

#: A whole basic.ack(multiple) frame: frame type, channel, size, class and method ids, the delivery
#: tag, the multiple bit, the frame end (what ``_encode_ack(tag, True)`` in a method frame is).
_pack_ack_multiple_frame = Struct(">BHIHHQBB").pack
_ACK_ID = M["basic.ack"].class_id, M["basic.ack"].method_id & 0xFFFF


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
        "generation",
        "switching",
        "qos_waiting",
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
        #: qos and cancel actions waiting for ``started``, oldest first
        self.deferred: list[tuple[Promise, Callable[[Channel], None]]] = []
        #: every consume-ok (and, during a basic_qos switch, every reply of it) arrived
        self.started = False
        #: basic_qos switches made so far (numbers the fresh consumer tags)
        self.generation = 0
        #: the basic_qos whose switch is in flight
        self.switching: Promise | None = None
        #: basic_qos promises switched, waiting for the held messages to fit their window
        self.qos_waiting: list[tuple[Promise, int]] = []

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


class Window:
    """A consume's prefetch window, kept by the client while a basic_qos takes effect.

    See :meth:`Consuming._start_qos`.  Per queue of the consume: how many of its
    messages are held (delivered to the promise, not settled) and the
    deliveries waiting in the client for room.
    """

    __slots__ = ("limit", "held", "waiting", "buffered", "old", "current")

    def __init__(self, limit: int) -> None:
        #: the window: messages of one queue the consume may hold
        self.limit = limit
        #: queue -> messages held
        self.held: dict[str | None, int] = {}
        #: queue -> deliveries waiting in the client, oldest first
        self.waiting: dict[str | None, deque[Any]] = {}
        #: deliveries waiting, all queues together
        self.buffered = 0
        #: messages held that earlier consumers delivered (the broker's window does not count them)
        self.old = 0
        #: the tags of the current consumers
        self.current: set[str] = set()


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
        given = [item.get("consumer_tag") for item in queues]
        chosen = [tag for tag in given if tag]
        if len(set(chosen)) != len(chosen):
            twice = sorted({tag for tag in chosen if chosen.count(tag) > 1})
            raise ValueError(
                "basic_consume_multi: consumer tag %s given more than once; the tags of one consume must "
                "differ (the broker would close the whole connection: 530 NOT_ALLOWED)" % ", ".join(map(repr, twice))
            )
        consumers = []
        for index, item in enumerate(queues):
            tag = given[index] or _unused("puka.%d.%d" % (number, index), chosen)
            consumer = {
                "queue": item["queue"],
                "no_local": bool(item.get("no_local", False)),
                "exclusive": bool(item.get("exclusive", False)),
                "arguments": item.get("arguments") or {},
                "tag": tag,
                "index": index,
                "base": tag,
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
        state.switching = None
        state.qos_waiting = []

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
            self._run_deferred(state, channel)
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
        self._close_window(channel, promise)
        exc = exceptions.ConsumerCancelled("the broker cancelled consumer %s (queue deleted?)" % tag)
        self._reply_consumer_gone(channel, exc)
        session.table.fail(promise, exc, {"consumer_tag": tag})

    def _reply_consumer_gone(self, channel: Channel, exc: BaseException) -> None:
        """When ``channel`` was the direct reply-to consumer's, publishes on it fail with ``exc``."""
        reply = self.session.publishing.reply_publisher
        if reply is not None and reply.channel is channel:
            self.session.publishing.detach_reply_channel(exc)

    def channel_closed(self, promise: Promise, exc: BaseException) -> None:
        """The consume's channel was closed by the broker (or it got none): a pending cancel or basic_qos
        fails with it."""
        state: ConsumeState = promise.consume
        table = self.session.table
        controls = [state.cancel_promise, state.switching, *(qos for qos, _prefetch in state.qos_waiting)]
        controls += [control for control, _action in state.deferred]
        state.switching = None
        state.qos_waiting = []
        state.deferred = []
        for control in controls:
            if control is not None and not control.final:
                table.fail(control, exc)
        if promise.channel is not None:
            self._reply_consumer_gone(promise.channel, exc)
        elif self.session.publishing.reply_publisher is not None and any(
            consumer["queue"] == REPLY_TO for consumer in state.consumers
        ):
            self.session.publishing.detach_reply_channel(exc)  # the reply-to consumer got no channel

    def consume_promise(self, number: int, what: str) -> Promise:
        promise = self.session.table.promises.get(number)
        if promise is None or promise.kind is not Kind.CONSUME:
            raise ValueError("%s: promise %r is not an active basic_consume" % (what, number))
        return promise

    @staticmethod
    def _on_consume_channel(consume: Promise, control: Promise, action: Callable[[Channel], None]) -> None:
        """Run a qos or cancel action once the consume is started and no switch is in flight, in order."""
        state = consume.consume
        if state.started and consume.channel is not None and not state.deferred:
            action(consume.channel)
        else:
            state.deferred.append((control, action))

    @staticmethod
    def _run_deferred(state: ConsumeState, channel: Channel) -> None:
        """Run the waiting actions, oldest first, until one starts a switch (it resumes them when done)."""
        deferred = state.deferred
        while state.started and deferred:
            deferred.pop(0)[1](channel)

    def qos(self, consume_number: int, prefetch_count: int, callback: Callback | None) -> int:
        """Change a consume promise's prefetch window (see :meth:`_start_qos`)."""
        session = self.session
        consume = self.consume_promise(consume_number, "basic_qos")
        _encode_qos(0, prefetch_count, False)  # bad arguments raise here, before anything is sent
        exclusive = [c["queue"] for c in consume.consume.consumers if c["exclusive"]]
        if exclusive and not consume.consume.no_ack:
            raise ValueError(
                "basic_qos: the consume has an exclusive consumer (queue %r); a new window needs a new "
                "consumer beside the old one, which an exclusive consumer forbids, and a moment without "
                "one would delete an auto-delete queue.  Cancel the consume and consume again with the "
                "new prefetch_count" % exclusive[0]
            )
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
        """Change the window of a running consume: new consumers under fresh tags, then the old ones go.

        RabbitMQ applies a per-consumer basic.qos only to consumers started
        after it (a channel-wide one applies at once, but quorum queues refuse
        it).  So, on the consume's channel, in this order: basic.qos with the
        new window, one basic.consume per queue under a fresh tag, and a
        basic.cancel of each old consumer.  The queue is never without a
        consumer (an auto-delete queue is not deleted), and an ack of a
        message delivered before credits its own, cancelled, consumer -- never
        the new one.

        The broker counts only the new consumers' deliveries against their
        window, not the messages held from before.  So the client keeps the
        window itself (:class:`Window`) until those are settled: a delivery
        reaches the promise only while fewer than ``prefetch_count`` messages
        of its queue are held, the others wait in the client, in order.  The
        basic_qos promise resolves once every reply arrived and the held
        messages fit the new window; from then on the consume never holds more.
        """
        session = self.session
        table = session.table
        payload = _encode_qos(0, prefetch_count, False)

        def switch(channel: Channel) -> None:
            state: ConsumeState = consume.consume
            if consume.final or not state.consumers:  # ended, or its cancel is on the way
                table.resolve(promise, Result())
                return
            if state.no_ack:
                # No window without acks (RabbitMQ ignores it); kept for a restart after a recovery.
                state.prefetch = prefetch_count
                table.resolve(promise, Result(prefetch_count=prefetch_count))
                return
            if prefetch_count == state.prefetch:
                # The consumers have this window already: resolve once the held messages fit it.
                state.qos_waiting.append((promise, prefetch_count))
                self._window_progress(channel, consume)
                return
            for earlier, window in state.qos_waiting:
                table.resolve(earlier, Result(prefetch_count=window))  # superseded by this one
            state.qos_waiting = []
            old = state.consumers
            state.generation += 1
            taken = set(state.by_tag)
            new = []
            for consumer in old:
                tag = _fresh_tag(consumer, consume.number, state.generation, taken)
                taken.add(tag)
                new.append(dict(consumer, tag=tag))
            self._forget_tags(channel, consume, {consumer["tag"] for consumer in old})
            state.consumers = new
            for consumer in new:
                state.by_tag[consumer["tag"]] = consumer["queue"]
            state.prefetch = prefetch_count
            state.started = False  # other controls wait for the switch
            state.switching = promise
            if prefetch_count:
                self._open_window(channel, consume, prefetch_count)
            else:
                self._close_window(channel, consume, hand_over=True)  # no window: hand everything over
            number = channel.number
            session.send(method_frame(number, payload))
            replies = [BASIC_QOS_OK]
            for consumer in new:
                session.send(method_frame(number, _consume_payload(consumer, False)))
                replies.append(BASIC_CONSUME_OK)
            for consumer in old:
                session.send(method_frame(number, _encode_cancel(consumer["tag"], False)))
                replies.append(BASIC_CANCEL_OK)
            remaining = [len(replies)]

            def answered(channel: Channel, _reply: Any) -> None:
                remaining[0] -= 1
                if remaining[0]:
                    return
                # Every reply is in: no delivery of an old consumer can come any more.
                state.switching = None
                state.started = True
                if consume.final:
                    table.resolve(promise, Result())
                else:
                    state.qos_waiting.append((promise, prefetch_count))
                    self._window_progress(channel, consume)
                self._run_deferred(state, channel)

            for reply in replies:
                channel.expect((reply,), answered)

        if consume.final:
            table.resolve(promise, Result())  # ended (or never started: no channel)
        else:
            self._on_consume_channel(consume, promise, switch)

    # --- the window kept by the client during a basic_qos ------------------------------------------------

    def _open_window(self, channel: Channel, consume: Promise, limit: int) -> None:
        """The client keeps the consume's window (``limit`` per queue); every held message is old."""
        state: ConsumeState = consume.consume
        window = channel.window
        if window is None:
            window = channel.window = Window(limit)
            held = window.held
            for message in channel.unacked.values():
                queue = state.queue_of(message["consumer_tag"])
                held[queue] = held.get(queue, 0) + 1
            if channel.pending_ack:
                self.send_pending_ack(channel)  # nothing is deferred while the window is kept
            channel.handlers[BASIC_DELIVER] = self._deliver_windowed
        window.limit = limit
        window.current = {consumer["tag"] for consumer in state.consumers}
        window.old = len(channel.unacked)
        self._hand_over_waiting(channel, consume, window, list(window.waiting))

    def _deliver_windowed(self, channel: Channel, message: Any) -> None:
        """A delivery while the client keeps the window: to the promise if its queue has room, else it waits."""
        promise = channel.promise
        if promise is None or promise.final:
            self.session.send(method_frame(channel.number, _encode_reject(message["delivery_tag"], True)))
            return
        window: Window = channel.window
        queue = promise.consume.queue_of(message["consumer_tag"])
        waiting = window.waiting.get(queue)
        if waiting or window.held.get(queue, 0) >= window.limit:
            if waiting is None:
                waiting = window.waiting[queue] = deque()
            waiting.append(message)
            window.buffered += 1
        else:
            self._hand_over(channel, promise, window, queue, message)

    def _hand_over(self, channel: Channel, promise: Promise, window: Window, queue: str | None, message: Any) -> None:
        window.held[queue] = window.held.get(queue, 0) + 1
        if message["consumer_tag"] not in window.current:
            window.old += 1
        last = channel.last_tag
        self.on_deliver(channel, message)
        if channel.last_tag < last:
            channel.last_tag = last  # handed over out of tag order (queues wait apart)

    def _hand_over_waiting(self, channel: Channel, promise: Promise, window: Window, queues: Any) -> None:
        """Hand over the waiting deliveries of these queues that fit the window, oldest first."""
        held = window.held
        limit = window.limit
        for queue in queues:
            waiting = window.waiting.get(queue)
            if not waiting:
                continue
            while waiting and held.get(queue, 0) < limit:
                window.buffered -= 1
                self._hand_over(channel, promise, window, queue, waiting.popleft())
            if not waiting:
                del window.waiting[queue]

    def _settle_windowed(
        self,
        channel: Channel,
        promise: Promise,
        message: Any,
        verb: str,
        requeue: bool,
        multiple: bool,
        before_send: Callable[[Any, list[int]], None] | None,
    ) -> None:
        """settle() while the client keeps the window: sent at once; the room made hands over waiting ones."""
        session = self.session
        window: Window = channel.window
        state: ConsumeState = promise.consume
        tag = message["delivery_tag"]
        unacked = channel.unacked
        settled = [t for t in unacked if t <= tag] if multiple else [tag]
        if before_send is not None:
            before_send(message, settled)
        queues = set()
        for t in settled:
            consumer_tag = unacked.pop(t)["consumer_tag"]
            queue = state.queue_of(consumer_tag)
            window.held[queue] -= 1
            if consumer_tag not in window.current:
                window.old -= 1
            queues.add(queue)
        if multiple and window.buffered and min(w[0]["delivery_tag"] for w in window.waiting.values() if w) < tag:
            # A multiple would also settle deliveries waiting in the client: one frame per message.
            multiple = False
            tags = settled
        else:
            tags = [tag]
        if self.pending_acks:
            self.flush_acks()  # the deferred acks (of other channels) first, as settle() does
        number = channel.number
        for t in tags:
            if verb == "ack":
                payload = _encode_ack(t, multiple)
            elif verb == "nack":
                payload = _encode_nack(t, multiple, requeue)
            else:
                payload = _encode_reject(t, requeue)
            session.send(method_frame(number, payload))
        session.port.request_flush()
        promise.held -= len(settled)
        self._hand_over_waiting(channel, promise, window, queues)
        self._window_progress(channel, promise)
        if promise.final and not promise.results and not promise.held:
            session.table.forget(promise)

    def _window_progress(self, channel: Channel, consume: Promise) -> None:
        """Resolve the basic_qos promises whose window the held messages fit; stop keeping a window once
        the broker's suffices (no old message held, none waiting, the switch done)."""
        state: ConsumeState = consume.consume
        if not state.started:
            return
        window = channel.window
        if state.qos_waiting and (window is None or all(n <= window.limit for n in window.held.values())):
            done, state.qos_waiting = state.qos_waiting, []
            for qos, prefetch in done:
                self.session.table.resolve(qos, Result(prefetch_count=prefetch))
        if window is not None and not window.buffered and not window.old:
            self._close_window(channel, consume)

    def _close_window(self, channel: Channel, consume: Promise, hand_over: bool = False) -> None:
        """Stop keeping the window: deliveries waiting in the client are handed over, or given back
        to the broker (``basic.reject``, requeued) when the consume ends."""
        window: Window | None = channel.window
        if window is None:
            return
        channel.window = None
        offsets = consume.consume.offsets if consume.consume is not None else None
        channel.handlers[BASIC_DELIVER] = self.on_deliver if offsets is None else self._deliver_stream
        for waiting in window.waiting.values():
            for message in waiting:
                if hand_over and not consume.final:
                    last = channel.last_tag
                    self.on_deliver(channel, message)
                    if channel.last_tag < last:
                        channel.last_tag = last
                else:
                    self.session.send(method_frame(channel.number, _encode_reject(message["delivery_tag"], True)))
        # Every delivered tag is now settled or unacked: the settled-below mark can be trusted again.
        unacked = channel.unacked
        channel.low = min(unacked) if unacked else (channel.last_tag + 1 if channel.last_tag else 0)

    @staticmethod
    def _forget_tags(channel: Channel, consume: Promise, keep: set[str]) -> None:
        """Drop from ``by_tag`` the tags of earlier switches that no message waiting or held refers to."""
        state: ConsumeState = consume.consume
        if len(state.by_tag) <= len(keep):
            return
        messages: list[Any] = list(channel.unacked.values())
        if consume.results:
            messages += consume.results
        if channel.window is not None:
            for waiting in channel.window.waiting.values():
                messages += waiting
        keep |= {message.get("consumer_tag") for message in messages}
        state.by_tag = {tag: queue for tag, queue in state.by_tag.items() if tag in keep}

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
            self._close_window(channel, consume)
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
            self._on_consume_channel(consume, promise, send_cancels)

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
                session.channels.finished(promise)  # nothing to settle: the channel serves the next one
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
            else:
                session.channels.finished(promise)
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
        if channel.window is not None:
            self._settle_windowed(channel, promise, message, verb, requeue, multiple, before_send)  # type: ignore[arg-type]
            return
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
        number = channel.number
        if channel.state is _OPEN and self.session.channels.by_number.get(number) is channel:
            self.session.send(_pack_ack_multiple_frame(1, number, 13, _ACK_ID[0], _ACK_ID[1], tag, 1, 0xCE))

    def flush_acks(self) -> None:
        """Send the acks deferred by ``settle`` (every call into the client, and before writing or closing)."""
        channels, self.pending_acks = self.pending_acks, []
        for channel in channels:
            if channel.pending_ack:
                self.send_pending_ack(channel)


def _ignore(channel: Channel, method: Any) -> None:
    pass


def _unused(tag: str, taken: Any) -> str:
    """``tag``, or ``tag.N`` with the first N that is not in ``taken``."""
    if tag not in taken:
        return tag
    n = 1
    while "%s.%d" % (tag, n) in taken:
        n += 1
    return "%s.%d" % (tag, n)


def _fresh_tag(consumer: dict[str, Any], number: int, generation: int, taken: set[str]) -> str:
    """The tag of a consumer's replacement after a basic_qos: ``<first tag>.q<switch>``, unused on the channel."""
    tag = "%s.q%d" % (consumer.get("base", consumer["tag"]), generation)
    if len(tag.encode("utf-8", "surrogateescape")) > 250:  # a short string: at most 255 bytes
        tag = "puka.%d.%d.q%d" % (number, consumer["index"], generation)
    return _unused(tag, taken)


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
