"""Channels: one allocator for pooled, consuming and publishing channels.

Theory of operation: channel numbers run from 1 to the negotiated
``channel_max``.  Channel 1 is the default exchange's publish channel; other
exchanges get a publish channel of their own on first use (see
:mod:`~puka.protocol.publishing`).  Every other operation -- declares, binds,
gets, consumes -- borrows a channel from the *pool*: an idle open channel when
there is one, else a new one (``channel.open``).  A promise keeps its channel
until it is forgotten (its results taken, its messages settled); then the
channel goes back to the pool, or straight to the oldest operation waiting
for one.

Short operations (:attr:`~puka.promise.Kind.CALL`) hold at most
:data:`MAX_CALL_CHANNELS` channels between them: opening a channel costs the
broker more than a declare.  Consumers and gets hold theirs for long and are
not limited this way.

A channel's life is explicit (:class:`ChannelState`): ``OPENING`` ->
``OPEN`` -> (``CLOSED``).  A channel the broker closes (a soft error) fails
only the promise using it; its number is reused.
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
_encode_channel_open = M["channel.open"].encode_args
_encode_channel_close_ok = M["channel.close-ok"].encode_args

#: The channel of publishes to the default exchange (others get one channel per exchange).
PUBLISH_CHANNEL = 1
#: Channels short operations (declares, binds...) may hold at once; more wait for one.
MAX_CALL_CHANNELS = 64


class ChannelState(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
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

    def __repr__(self) -> str:
        return "<Channel %d %s>" % (self.number, self.state.value)


class Channels:
    """Channel numbers and the pool of channels for operations.  See the module docstring."""

    def __init__(self, session: Session, channel_max: int) -> None:
        self.session = session
        self.channel_max = channel_max
        zero = Channel(0)
        zero.state = ChannelState.OPEN
        #: number -> channel, for every channel the broker knows as open or opening
        self.by_number: dict[int, Channel] = {0: zero}
        self.idle: list[Channel] = []
        self.free_numbers: list[int] = []
        self.next_fresh_number = PUBLISH_CHANNEL + 1
        self.waiting: deque[tuple[Promise, Callable[[Promise], None]]] = deque()
        #: channels held by short operations
        self.call_channels = 0

    # --- numbers ------------------------------------------------------------------------------------

    def new_number(self) -> int | None:
        """A channel number not in use (None: all ``channel_max`` are taken)."""
        if self.free_numbers:
            return self.free_numbers.pop()
        if self.next_fresh_number <= self.channel_max:
            number = self.next_fresh_number
            self.next_fresh_number += 1
            return number
        return None

    def register(self, channel: Channel) -> None:
        self.by_number[channel.number] = channel

    # --- the pool -----------------------------------------------------------------------------------

    def acquire(self, promise: Promise, start: Callable[[Promise], None], privileged: bool = False) -> None:
        """Run ``start(promise)`` once the promise owns an open channel.

        Until the connection is open -- or, for all but ``privileged``
        operations, while the session is gated -- the operation waits.
        """
        session = self.session
        if not session.is_open:
            (session.privileged_until_open if privileged else session.pending_until_open).append((promise, start))
            return
        if session.gated and not privileged:
            session.pending_until_open.append((promise, start))
            return
        if self.idle:
            channel = self.idle.pop()
            self._bind(channel, promise)
            start(promise)
            return
        if promise.kind is Kind.CALL and self.call_channels >= MAX_CALL_CHANNELS:
            self.waiting.append((promise, start))
            return
        number = self.new_number()
        if number is None:
            self.waiting.append((promise, start))
            return
        channel = Channel(number)
        self.by_number[number] = channel
        self._bind(channel, promise)
        session.send(method_frame(number, _encode_channel_open()))

        def opened(channel: Channel, _method: Any) -> None:
            channel.state = ChannelState.OPEN
            start(promise)

        channel.expect((CHANNEL_OPEN_OK,), opened)

    def _bind(self, channel: Channel, promise: Promise) -> None:
        channel.promise = promise
        promise.channel = channel
        channel.handlers[CHANNEL_CLOSE] = self.on_close
        if promise.kind is Kind.CALL:
            self.call_channels += 1

    def release(self, promise: Promise) -> None:
        """A promise is forgotten: its channel goes back to the pool."""
        channel = promise.channel
        if channel is not None and channel.promise is promise:
            if promise.kind is Kind.CALL:
                self.call_channels -= 1
            self.give_back(channel)

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
        if self.waiting:
            promise, start = self.waiting.popleft()
            self._bind(channel, promise)
            start(promise)
            return
        self.idle.append(channel)

    def on_close(self, channel: Channel, method: Any) -> None:
        """The broker closed a pooled channel: fail its promise; the number can be reused."""
        session = self.session
        session.send(method_frame(channel.number, _encode_channel_close_ok()))
        channel.state = ChannelState.CLOSED
        exc = session.error_from_close(method)
        promise = channel.promise
        channel.unacked.clear()
        if promise is not None and promise.kind is Kind.CALL:
            self.call_channels -= 1
        del self.by_number[channel.number]
        self.free_numbers.append(channel.number)
        if channel in self.idle:
            self.idle.remove(channel)
        if self.waiting and session.is_open:
            # A channel number (and maybe a short operation's slot) is free again.
            waiting, start = self.waiting.popleft()
            self.acquire(waiting, start)
        if promise is not None:
            promise.held = 0
            if promise.kind is Kind.CONSUME:
                session.consuming.channel_closed(promise, exc)
            table = session.table
            if not promise.final:
                table.fail(promise, exc, dict(method))
            elif not promise.results:
                table.forget(promise)

    def clear(self) -> None:
        self.idle.clear()
        self.waiting.clear()
