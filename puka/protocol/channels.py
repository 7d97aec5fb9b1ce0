"""Channels: one allocator for pooled, consuming and publishing channels.

Theory of operation: channel numbers run from 1 to the negotiated
``channel_max``.  Channel 1 is the default exchange's publish channel; other
exchanges get a publish channel of their own on first use (see
:mod:`~puka.protocol.publishing`).  Every other operation -- declares, binds,
gets, consumes -- borrows a channel from the *pool*: an idle open channel when
there is one, else a new one (``channel.open``).  Operations that find no
channel wait in ``waiting`` (oldest first) and get the next channel given back
or number freed that they may take.

Who holds a channel, and for how long:

* a short operation (:attr:`~puka.promise.Kind.CALL`: declare, bind,
  purge...) from its request to its reply -- its result waits in the promise,
  the channel serves the next operation at once.  They hold at most
  :data:`MAX_CALL_CHANNELS` channels between them: opening a channel costs
  the broker more than a declare;
* a consume, until it ends and its messages are settled; a get with acks,
  until its message is settled.  These *long* holders and the publish channels
  together never take the last :attr:`Channels.reserve` numbers
  (:data:`RESERVED_CHANNELS` with RabbitMQ's 2047): those stay for short
  operations, so a declare always gets a channel, however many consumers there
  are.  A consume or get that finds every other number held fails at once
  with :exc:`~puka.ResourceError` (506) naming the limit: nothing waits for a
  channel that may never come.  (An operation may wait for a number held by a
  short operation or a channel being closed: those come back.)

Channels given back stay open for the next operation, up to
:data:`MAX_IDLE_CHANNELS`; beyond that they are closed.

A channel's life is explicit (:class:`ChannelState`)::

    OPENING --channel.open-ok--> OPEN --channel.close (broker), close-ok sent--> CLOSED
                                 OPEN --channel.close (ours: surplus idle)--> CLOSING
                                      --channel.close-ok, or the broker's own close--> CLOSED
    CLOSED --its number reused--> a new channel, OPENING

The broker may still send frames on a channel after its ``channel.close``
(deliveries its writer had queued), and on a number we closed until it reads
our ``close``; the broker sends nothing more on a number once it has read
``close-ok`` and a new ``channel.open``.  So a frame that nothing on its
channel expects is discarded when the channel is not ``OPEN`` -- a leftover of
a closed use of the number -- and is a protocol violation only on an ``OPEN``
channel (see :mod:`~puka.protocol.assembler`).  A channel the broker closes (a
soft error) fails only the promise using it; its number is reused.
"""

from __future__ import annotations

import enum
from collections import deque

from .. import spec
from ..framing import method_frame
from ..promise import Kind
from .assembler import Assembly

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..promise import Promise
    from .session import Session

M = spec.METHODS_BY_NAME
CHANNEL_OPEN_OK = M["channel.open-ok"].method_id
CHANNEL_CLOSE = M["channel.close"].method_id
CHANNEL_CLOSE_OK = M["channel.close-ok"].method_id
_encode_channel_open = M["channel.open"].encode_args
_encode_channel_close = M["channel.close"].encode_args
_encode_channel_close_ok = M["channel.close-ok"].encode_args

#: The channel of publishes to the default exchange (others get one channel per exchange).
PUBLISH_CHANNEL = 1
#: Channels short operations (declares, binds...) may hold at once; more wait for one.
MAX_CALL_CHANNELS = 64
#: Channel numbers consumes, gets and publish channels leave to short operations (at most).
RESERVED_CHANNELS = 16
#: Open channels kept idle for later operations; more are closed when given back.
MAX_IDLE_CHANNELS = 64

_CALL = Kind.CALL
_CONSUME = Kind.CONSUME
_GET = Kind.GET


def reserve_for(channel_max: int) -> int:
    """How many channel numbers long holders leave to short operations under ``channel_max``."""
    if channel_max < 2:
        return 0  # no number beside the publish channel: nothing to keep
    return min(RESERVED_CHANNELS, max(1, (channel_max - 1) // 8))


class ChannelState(enum.Enum):
    """Where a channel stands (see the module docstring)."""

    #: channel.open sent: only channel.open-ok is expected; anything else is a leftover of
    #: an earlier use of the number, discarded
    OPENING = "opening"
    OPEN = "open"
    #: our channel.close sent (a surplus idle channel): discarding until close-ok
    CLOSING = "closing"
    #: closed (close-ok sent or received): discarding whatever still comes on it
    CLOSED = "closed"


class Channel:
    """One AMQP channel: its number, handlers, content being assembled, unacked messages."""

    __slots__ = (
        "number",
        "state",
        "publisher",
        "handlers",
        "replies",
        "promise",
        "assembly",
        "partial",
        "body_size",
        "props",
        "chunks",
        "received",
        "unacked",
        "low",
        "last_tag",
        "pending_ack",
        "pending_count",
        "window",
    )

    def __init__(self, number: int) -> None:
        self.number = number
        self.state = ChannelState.OPENING
        #: the Publisher using this channel, if it is a publish channel
        self.publisher: Any = None
        #: method id -> handler(channel, method), kept until replaced
        self.handlers: dict[int, Callable[[Channel, Any], None]] = {}
        #: one-shot replies (method ids, handler), oldest first
        self.replies: deque[tuple[tuple[int, ...], Callable[[Channel, Any], None]]] = deque()
        self.promise: Promise | None = None
        #: where content assembly stands (see puka.protocol.assembler)
        self.assembly = Assembly.IDLE
        self.partial: Any = None
        self.body_size = 0
        self.props: Any = None
        self.chunks: list[bytes] = []
        self.received = 0
        #: delivery tag -> message, for deliveries that need an ack
        self.unacked: dict[int, Any] = {}
        #: every delivery tag below ``low`` is settled; ``last_tag`` is the highest delivered
        self.low = 0
        self.last_tag = 0
        #: highest tag whose ack is deferred (0: none), and how many acks it stands for
        self.pending_ack = 0
        self.pending_count = 0
        #: the consume's window while a basic_qos changes it (see puka.protocol.consuming.Window)
        self.window: Any = None

    @property
    def is_open(self) -> bool:
        return self.state is ChannelState.OPEN

    def expect(self, method_ids: tuple[int, ...], handler: Callable[[Channel, Any], None]) -> None:
        self.replies.append((method_ids, handler))

    def take_reply(self, method_id: int) -> Callable[[Channel, Any], None] | None:
        """The handler of the oldest pending reply that this method answers (None: unexpected).

        Replies of one kind come in order; RabbitMQ may answer a later request
        of another kind first (basic.consume-ok after a later basic.qos-ok).
        """
        replies = self.replies
        if replies and method_id in replies[0][0]:
            return replies.popleft()[1]
        for index, (method_ids, handler) in enumerate(replies):
            if method_id in method_ids:
                del replies[index]
                return handler
        return None

    def reset(self) -> None:
        """Forget handlers, replies and any content being assembled."""
        self.handlers.clear()
        self.replies.clear()
        self.promise = None
        self.assembly = Assembly.IDLE
        self.partial = None
        self.props = None
        self.chunks = []
        self.received = 0
        self.window = None

    def __repr__(self) -> str:
        return "<Channel %d %s>" % (self.number, self.state.value)


class Channels:
    """Channel numbers and the pool of channels for operations.  See the module docstring."""

    def __init__(self, session: Session, channel_max: int) -> None:
        self.session = session
        zero = Channel(0)
        zero.state = ChannelState.OPEN
        #: number -> channel, for every number in use (a closed channel stays until its number is reused)
        self.by_number: dict[int, Channel] = {0: zero}
        self.idle: list[Channel] = []
        self.free_numbers: list[int] = []
        self.next_fresh_number = PUBLISH_CHANNEL + 1
        self.waiting: deque[tuple[Promise, Callable[[Promise], None]]] = deque()
        #: entries of ``waiting`` that are not short operations (they wait for a number, not a call slot)
        self.waiting_long = 0
        #: channels held by short operations
        self.call_channels = 0
        #: channels held by consumes and gets (long holders)
        self.long_channels = 0
        #: numbers taken by publish channels (channel 1 included)
        self.publish_channels = 1
        self.channel_max = channel_max

    @property
    def channel_max(self) -> int:
        return self._channel_max

    @channel_max.setter
    def channel_max(self, channel_max: int) -> None:
        """The negotiated limit (set by the handshake); the reserve follows it."""
        self._channel_max = channel_max
        #: numbers long holders and publish channels leave to short operations
        self.reserve = reserve_for(channel_max)

    # --- numbers ------------------------------------------------------------------------------------

    def _take_number(self) -> int | None:
        if self.free_numbers:
            return self.free_numbers.pop()
        if self.next_fresh_number <= self._channel_max:
            number = self.next_fresh_number
            self.next_fresh_number += 1
            return number
        return None

    def new_number(self) -> int | None:
        """A channel number for a new publish channel (None: none left outside the reserve)."""
        if self.publish_channels + self.long_channels >= self._channel_max - self.reserve:
            return None
        number = self._take_number()
        if number is not None:
            self.publish_channels += 1
        return number

    def register(self, channel: Channel) -> None:
        self.by_number[channel.number] = channel

    # --- the pool -----------------------------------------------------------------------------------

    def acquire(self, promise: Promise, start: Callable[[Promise], None], privileged: bool = False) -> None:
        """Run ``start(promise)`` once the promise owns an open channel.

        Until the connection is open -- or, for all but ``privileged``
        operations, while the session is gated -- the operation waits.  A
        long holder that can get no channel fails (see the module docstring).
        """
        session = self.session
        if not session.is_open:
            (session.privileged_until_open if privileged else session.pending_until_open).append((promise, start))
            return
        if session.gated and not privileged:
            session.pending_until_open.append((promise, start))
            return
        if not self._may_hold(promise):
            if promise.kind is _CALL:
                self.waiting.append((promise, start))  # a short operation's channel comes back soon
            else:
                self._refuse(promise)  # held by consumes: none may ever come back
            return
        if self.idle:
            channel = self.idle.pop()
            self._bind(channel, promise)
            start(promise)
            return
        number = self._take_number()
        if number is None:
            if self.publish_channels + self.long_channels >= self._channel_max:
                self._refuse(promise)  # channel_max leaves no number beside the publish channels
                return
            # Every other number is held by short operations or being closed: one comes back soon.
            self.waiting.append((promise, start))
            if promise.kind is not _CALL:
                self.waiting_long += 1
            return
        self._open(number, promise, start)

    def _open(self, number: int, promise: Promise, start: Callable[[Promise], None]) -> None:
        channel = Channel(number)
        self.by_number[number] = channel
        self._bind(channel, promise)
        self.session.send(method_frame(number, _encode_channel_open()))

        def opened(channel: Channel, _method: Any) -> None:
            channel.state = ChannelState.OPEN
            start(promise)

        channel.expect((CHANNEL_OPEN_OK,), opened)

    def _may_hold(self, promise: Promise) -> bool:
        """Whether the promise may take one more channel now (the limits of its kind)."""
        kind = promise.kind
        if kind is _CALL:
            return self.call_channels < MAX_CALL_CHANNELS
        if kind is _CONSUME or kind is _GET:
            return self.publish_channels + self.long_channels < self._channel_max - self.reserve
        return True

    def _refuse(self, promise: Promise) -> None:
        """No channel can come for this promise: fail it, naming the limit."""
        what = {_CONSUME: "basic_consume", _GET: "basic_get"}.get(promise.kind)
        if what is None:
            request = promise.request
            what = getattr(getattr(request, "method", None), "name", "the operation")
            text = "no channel for %s: the negotiated channel_max is %d, and channel 1 is the publish channel" % (
                what,
                self._channel_max,
            )
        else:
            text = (
                "no channel left for %s: the connection may open %d channels (channel_max); consumes, gets "
                "and publish channels hold %d, and the last %d are kept for short operations (declares, "
                "binds...).  Consume many queues on one channel with basic_consume_multi, or use another "
                "connection" % (what, self._channel_max, self.publish_channels + self.long_channels, self.reserve)
            )
        error = spec.ERRORS[506](text)  # RESOURCE_ERROR: "too many of some type of entity"
        if promise.kind is _CONSUME:
            self.session.consuming.channel_closed(promise, error)  # its qos/cancel waiting fail with it
        self.session.table.fail(promise, error)

    def _bind(self, channel: Channel, promise: Promise) -> None:
        channel.promise = promise
        promise.channel = channel
        channel.handlers[CHANNEL_CLOSE] = self.on_close
        kind = promise.kind
        if kind is _CALL:
            self.call_channels += 1
        elif kind is _CONSUME or kind is _GET:
            self.long_channels += 1

    def _unbind(self, channel: Channel, promise: Promise) -> None:
        kind = promise.kind
        if kind is _CALL:
            self.call_channels -= 1
        elif kind is _CONSUME or kind is _GET:
            self.long_channels -= 1

    def release(self, promise: Promise) -> None:
        """A promise is forgotten: its channel goes back to the pool."""
        channel = promise.channel
        if channel is not None and channel.promise is promise:
            self._unbind(channel, promise)
            self.give_back(channel)

    def finished(self, promise: Promise) -> None:
        """A promise no longer needs its channel (its result waits in the promise): give it back now."""
        self.release(promise)
        promise.channel = None

    def give_back(self, channel: Channel) -> None:
        session = self.session
        if channel.pending_ack:
            session.consuming.send_pending_ack(channel)
        channel.low = channel.last_tag = 0
        channel.reset()
        # An idle channel can still be closed by the broker (e.g. an administrator).
        channel.handlers[CHANNEL_CLOSE] = self.on_close
        if channel.unacked:
            channel.unacked.clear()
        if not channel.is_open or not session.is_open:
            return
        self.idle.append(channel)
        self._serve_waiting()
        if len(self.idle) > MAX_IDLE_CHANNELS:
            self._close(self.idle.pop(0))

    def _serve_waiting(self) -> None:
        """Give idle channels and free numbers to the oldest waiting operations that may take one.

        Short operations all wait for the same thing (a call slot): once one may not take a channel,
        none after it may, and only the others (counted in ``waiting_long``) are still looked at --
        so thousands of declares issued together cost a constant per reply, not a scan each.
        """
        waiting = self.waiting
        if not waiting or not self.session.is_open:
            return
        index = 0
        while index < len(waiting):
            promise, start = waiting[index]
            kind = promise.kind
            if promise.final:
                del waiting[index]
                if kind is not _CALL:
                    self.waiting_long -= 1
                continue
            if not self._may_hold(promise):
                if kind is _CALL:
                    if not self.waiting_long:
                        return  # no other kind waits: no short operation after this one may take one either
                    index += 1
                else:  # consumes took the numbers meanwhile: none may come back for it
                    del waiting[index]
                    self.waiting_long -= 1
                    self._refuse(promise)
                continue
            if self.idle:
                del waiting[index]
                if kind is not _CALL:
                    self.waiting_long -= 1
                channel = self.idle.pop()
                self._bind(channel, promise)
                start(promise)
                continue
            number = self._take_number()
            if number is None:
                return
            del waiting[index]
            if kind is not _CALL:
                self.waiting_long -= 1
            self._open(number, promise, start)

    # --- closing --------------------------------------------------------------------------------------

    def _close(self, channel: Channel) -> None:
        """Close a channel we no longer need (OPEN -> CLOSING); its number is free at close-ok."""
        channel.reset()
        channel.state = ChannelState.CLOSING
        channel.handlers[CHANNEL_CLOSE] = self.on_close
        self.session.send(method_frame(channel.number, _encode_channel_close(200, "idle", 0, 0)))
        channel.expect((CHANNEL_CLOSE_OK,), self._closed)

    def _closed(self, channel: Channel, _method: Any) -> None:
        """Our channel.close was answered: the number can be reused."""
        channel.reset()
        channel.state = ChannelState.CLOSED
        self.free_numbers.append(channel.number)
        self._serve_waiting()

    def on_close(self, channel: Channel, method: Any) -> None:
        """The broker closed a pooled channel: fail its promise; the number can be reused."""
        session = self.session
        session.send(method_frame(channel.number, _encode_channel_close_ok()))
        channel.state = ChannelState.CLOSED
        exc = session.error_from_close(method)
        promise = channel.promise
        channel.unacked.clear()
        if promise is not None and channel.promise is promise:
            self._unbind(channel, promise)
        channel.reset()  # what still comes on it is discarded (the broker sent it before our close-ok)
        self.free_numbers.append(channel.number)
        if channel in self.idle:
            self.idle.remove(channel)
        # A channel number (and maybe a short operation's slot) is free again.
        self._serve_waiting()
        if promise is not None:
            promise.held = 0
            if promise.kind is _CONSUME:
                session.consuming.channel_closed(promise, exc)
            table = session.table
            if not promise.final:
                table.fail(promise, exc, dict(method))
            elif not promise.results:
                table.forget(promise)

    def clear(self) -> None:
        self.idle.clear()
        self.waiting.clear()
        self.waiting_long = 0
