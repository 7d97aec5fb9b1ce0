"""puka's model: promises on hidden channels, each driven by a small machine.

Theory of operation: a :class:`Session` is the sans-IO heart of a client.  It
never touches a socket: it is fed frames (``on_frames``) and emits bytes
through ``send``/``send_many`` callables, and is told when the transport dies
(``on_broken``).  Tests drive it with scripted frames.

* **Dispatch.**  Inbound frames are routed by channel number.  A method
  without content goes to the channel's persistent handler for its method id
  (deliveries, acks, returns, channel.close...) or else to the oldest pending
  reply the channel expects (synchronous methods are answered in order).
  Content-bearing methods (deliver, get-ok, return) are assembled from their
  method, header and body frames first.  Anything else -- a frame on a channel
  that is not open, an unexpected method, a body without header, more body than
  declared, a message over ``max_message_size`` -- is a protocol violation:
  the connection is dropped with :class:`~puka.exceptions.ConnectionBroken`.

* **Channels.**  Channel 0 runs the connection machine (handshake, close,
  blocked/unblocked).  Publishing uses one channel per exchange (a
  :class:`Publisher`; channel 1 for the default exchange), in confirm mode
  when the broker offers confirms.  Every other operation takes a channel from
  a pool of open idle channels (opening one when none is idle), and gives it
  back when its promise is done and none of its messages awaits an ack.  A
  channel the broker closed (a soft error) fails only the promise using it.

* **Publishing.**  Each publish gets the next delivery tag of its exchange's
  channel and waits in the publisher's ``inflight`` for basic.ack (single or
  ``multiple``) or basic.nack.  basic.return arrives before the ack of the
  returned message; mandatory publishes carry an ``x-puka-promise`` header, so
  the return fails exactly its own promise.  A channel.close on a publish
  channel (e.g. 404: the exchange does not exist) fails every publish in
  flight on it -- all to that exchange -- and the channel is reopened;
  publishes made meanwhile wait in the publisher's ``backlog`` and go out once
  it is ready again.  With ``pubacks=False`` each publish is followed by a
  mandatory empty "footer" message the broker returns, as the original puka
  did.

* **Failure.**  When the connection goes, every promise that has not
  finished gets an error result: the broker's hard error when it said one,
  ConnectionBroken otherwise.  Nothing is left pending.
"""

from __future__ import annotations

import sys
from collections import deque
from struct import Struct

from . import exceptions, spec
from .exceptions import ConnectionBroken, FrameTooLarge
from .framing import content_frames, method_frame
from .promise import ErrorResult, Promise, Result
from .spec.tables import DECODE_FAILURES, describe_failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .framing import Buffer, Frame
    from .promise import Callback


class _LazyLogger:
    """The 'puka' logger, imported on first use: logging is not needed to start.

    Like any library, puka adds a NullHandler: without logging configured by
    the application, nothing is printed (every failure also reaches a promise).
    """

    def __getattr__(self, name: str) -> Any:
        import logging

        logger = logging.getLogger("puka")
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        return getattr(logger, name)


log: Any = _LazyLogger()

M = spec.METHODS_BY_NAME
_unpack_method_id = Struct(">I").unpack_from

CONNECTION_START = M["connection.start"].method_id
CONNECTION_SECURE = M["connection.secure"].method_id
CONNECTION_TUNE = M["connection.tune"].method_id
CONNECTION_OPEN_OK = M["connection.open-ok"].method_id
CONNECTION_CLOSE = M["connection.close"].method_id
CONNECTION_CLOSE_OK = M["connection.close-ok"].method_id
CONNECTION_BLOCKED = M["connection.blocked"].method_id
CONNECTION_UNBLOCKED = M["connection.unblocked"].method_id
CHANNEL_OPEN_OK = M["channel.open-ok"].method_id
CHANNEL_CLOSE = M["channel.close"].method_id
CHANNEL_CLOSE_OK = M["channel.close-ok"].method_id
CHANNEL_FLOW = M["channel.flow"].method_id
CONFIRM_SELECT_OK = M["confirm.select-ok"].method_id
BASIC_QOS_OK = M["basic.qos-ok"].method_id
BASIC_CONSUME_OK = M["basic.consume-ok"].method_id
BASIC_CANCEL = M["basic.cancel"].method_id
BASIC_CANCEL_OK = M["basic.cancel-ok"].method_id
BASIC_DELIVER = M["basic.deliver"].method_id
BASIC_RETURN = M["basic.return"].method_id
BASIC_GET_OK = M["basic.get-ok"].method_id
BASIC_GET_EMPTY = M["basic.get-empty"].method_id
BASIC_ACK = M["basic.ack"].method_id
BASIC_NACK = M["basic.nack"].method_id

_BasicPublish = M["basic.publish"]
_BasicAck = M["basic.ack"]
_encode_publish = _BasicPublish.encode_args
_encode_ack = _BasicAck.encode_args
_encode_nack = M["basic.nack"].encode_args
_encode_reject = M["basic.reject"].encode_args
_encode_properties = spec.PROPERTIES[60].encode
_decode_header = spec.PROPERTIES[60].decode_header
_METHODS = spec.METHODS

#: The channel of publishes to the default exchange (others get one channel per exchange).
PUBLISH_CHANNEL = 1
#: Exchanges with a publish channel of their own; beyond, they share the default exchange's.
MAX_PUBLISHERS = 128
#: Channels short operations (declares, binds...) may hold at once; more wait for one.
MAX_CALL_CHANNELS = 64
#: The state of a short operation's promise.
CALL = "call"
#: The client's own limits, offered in connection.tune-ok (the smaller side wins).
CHANNEL_MAX = 2047
FRAME_MAX = 131072
#: Largest message body accepted from the broker (RabbitMQ's own maximum is 128 MiB).
MAX_MESSAGE_SIZE = 128 * 1024 * 1024
#: Deferred acks of a channel are sent as one basic.ack(multiple) at least this often.
ACK_BATCH = 64
#: Header that ties a returned (mandatory) message to its publish promise.
PROMISE_HEADER = "x-puka-promise"
FOOTER_HEADER = "x-puka-footer"
#: Property names (puka's spelling) that go into the basic properties, not the headers table.
BASIC_PROPERTIES = frozenset(spec.PROPERTIES[60].names) - {"headers"}

_EMPTY_PROPERTIES = _encode_properties({})


def _product_version() -> str:
    from . import __version__

    return __version__


class ProtocolViolation(spec.DecodeError):
    """The peer broke the protocol (raised inside dispatch, ends the connection)."""


class Channel:
    """One AMQP channel: its number, handlers, content being assembled, unacked messages."""

    __slots__ = (
        "number",
        "publisher",
        "handlers",
        "replies",
        "promise",
        "is_open",
        "closing",
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
        #: the Publisher using this channel, if it is a publish channel
        self.publisher: Any = None
        #: method id -> handler(channel, method), kept until replaced
        self.handlers: dict[int, Callable[[Channel, Any], None]] = {}
        #: one-shot replies (method ids, handler), oldest first
        self.replies: deque[tuple[tuple[int, ...], Callable[[Channel, Any], None]]] = deque()
        self.promise: Promise | None = None
        self.is_open = False
        self.closing = False
        self.partial: Any = None
        self.body_size = -1
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
        self.handlers.clear()
        self.replies.clear()
        self.promise = None
        self.partial = None
        self.body_size = -1
        self.props = None
        self.chunks = []
        self.received = 0

    def __repr__(self) -> str:
        return "<Channel %d%s>" % (self.number, " open" if self.is_open else "")


class Publisher:
    """The publishing state of one exchange: its confirm-mode channel and publishes in flight.

    Each exchange publishes on a channel of its own, so that a channel error
    caused by one exchange (missing, access refused) fails only the publishes
    to that exchange.
    """

    __slots__ = (
        "exchange",
        "channel",
        "ready",
        "tag",
        "low",
        "inflight",
        "returned",
        "backlog",
        "backlog_bytes",
        "methods",
    )

    def __init__(self, exchange: str, channel: Channel) -> None:
        self.exchange = exchange
        self.channel = channel
        channel.publisher = self
        #: confirm.select-ok (or channel.open-ok without confirms) received
        self.ready = False
        #: next delivery tag, and the lowest that may still be in flight
        self.tag = 1
        self.low = 1
        #: delivery tag (promise number without confirms) -> publish promise
        self.inflight: dict[int, Promise] = {}
        #: tags returned (basic.return) whose basic.ack is still to come
        self.returned: set[int] = set()
        #: publishes made before the channel is ready: (promise, method, properties, body)
        self.backlog: deque[tuple[Promise, bytes, bytes, Any]] = deque()
        self.backlog_bytes = 0
        #: (routing key, mandatory) -> encoded basic.publish
        self.methods: dict[tuple[str, bool], bytes] = {}

    def __repr__(self) -> str:
        return "<Publisher %r on channel %d, %d in flight>" % (self.exchange, self.channel.number, len(self.inflight))


class Session:
    """The sans-IO core of a client: promises, channels and machines.  See the module docstring."""

    def __init__(
        self,
        send: Callable[[Buffer], None],
        send_many: Callable[[list[Buffer]], None],
        *,
        username: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        pubacks: bool | None = None,
        client_properties: dict[str, Any] | None = None,
        heartbeat: float = 0,
        channel_max: int = CHANNEL_MAX,
        frame_max: int = FRAME_MAX,
        auth_mechanism: str = "PLAIN",
        max_message_size: int = MAX_MESSAGE_SIZE,
        set_heartbeat: Callable[[float], None] | None = None,
        set_frame_max: Callable[[int], None] | None = None,
        set_deadline: Callable[[float | None, str], None] | None = None,
        close_transport: Callable[[ConnectionBroken, bool], None] | None = None,
    ) -> None:
        self.send = send
        self.send_many = send_many
        self.username = username
        self.password = password
        self.vhost = vhost
        self.pubacks = pubacks
        self.client_properties = client_properties
        self.heartbeat = heartbeat
        self.wanted_channel_max = channel_max
        self.wanted_frame_max = frame_max
        self.auth_mechanism = auth_mechanism.upper()
        self.max_message_size = max_message_size
        self._set_heartbeat = set_heartbeat or (lambda interval: None)
        self._set_frame_max = set_frame_max or (lambda size: None)
        self._set_deadline = set_deadline or (lambda when, why: None)
        self._close_transport: Callable[[ConnectionBroken, bool], None] = close_transport or _no_transport

        self.promises: dict[int, Promise] = {}
        #: promises with results waiting, once per result (stale entries are skipped)
        self.ready: deque[Promise] = deque()
        self.compact_at = 4096
        self.next_number = 1

        self.channel_max = channel_max
        self.frame_max = frame_max
        self.channels: dict[int, Channel] = {0: Channel(0)}
        self.channels[0].is_open = True
        self.idle_channels: list[Channel] = []
        self.free_numbers: list[int] = []
        self.next_fresh_number = PUBLISH_CHANNEL + 1
        self.waiting_for_channel: deque[tuple[Promise, Callable[[Promise], None]]] = deque()
        #: channels held by short operations (see with_channel)
        self.call_channels = 0

        #: AMQP state: "new" -> "handshake" -> "open" -> "closing" -> "closed"
        self.status = "new"
        self.error: BaseException | None = None
        self.server_properties: dict[str, Any] = {}
        self.pubacks_in_use = False
        self.blocked: str | None = None
        self.on_blocked: Callable[[str | None], None] | None = None
        self.connect_promise: Promise | None = None
        self.close_promise: Promise | None = None
        self.pending_until_open: list[tuple[Promise, Callable[[Promise], None]]] = []
        #: called once, after every promise failed, when the connection is gone
        self.on_closed: Callable[[], None] | None = None

        #: exchange -> its publisher (the default exchange's uses channel 1)
        self.publishers: dict[str, Publisher] = {"": Publisher("", Channel(PUBLISH_CHANNEL))}
        #: body bytes of publishes waiting for their channel (counted for push-back)
        self.backlog_bytes = 0
        #: channels with a deferred ack (see settle), and who to tell when the first one comes
        self.pending_acks: list[Channel] = []
        self.request_flush: Callable[[], None] | None = None

    # --- promises ---------------------------------------------------------------------------------

    def new_promise(self, callback: Callback | None = None) -> Promise:
        if self.error is not None:
            raise self._broken_error()
        number = self.next_number
        self.next_number = number + 1
        promise = Promise(number, callback)
        self.promises[number] = promise
        return promise

    def _broken_error(self) -> ConnectionBroken:
        err = self.error
        if isinstance(err, ConnectionBroken):
            return err
        broken = ConnectionBroken("connection is gone: %s" % err)
        broken.__cause__ = err
        return broken

    def resolve(self, promise: Promise, result: Any) -> None:
        """Give a promise its final result."""
        if promise.final:
            return
        promise.final = True
        if promise.results is None:
            promise.results = [result]
        else:
            promise.results.append(result)
        self.ready.append(promise)
        if promise.observer is not None:
            promise.observer(promise, result)

    def fail(self, promise: Promise, exc: BaseException, fields: dict[str, Any] | None = None) -> None:
        self.resolve(promise, ErrorResult(exc, fields))

    def ping(self, promise: Promise, result: Any) -> None:
        """Give a streaming promise one more result (a delivery)."""
        results = promise.results
        if results is None:
            promise.results = results = deque()
        results.append(result)
        self.ready.append(promise)

    def take(self, promise: Promise) -> Any:
        """Take the oldest waiting result; forget the promise when it is exhausted."""
        results = promise.results
        result = results.popleft() if results.__class__ is deque else results.pop(0)
        if promise.final and not results and not promise.held:
            self.release(promise)
        return result

    def compact_ready(self) -> None:
        """Drop stale entries from ``ready`` (results that ``wait`` took directly)."""
        kept: deque[Promise] = deque()
        counts: dict[int, int] = {}
        for promise in self.ready:
            results = promise.results
            if results:
                seen = counts.get(promise.number, 0)
                if seen < len(results):
                    counts[promise.number] = seen + 1
                    kept.append(promise)
        self.ready = kept
        self.compact_at = max(4096, 2 * len(kept))

    def release(self, promise: Promise) -> None:
        if self.promises.pop(promise.number, None) is None:
            return
        if promise.on_release is not None:
            promise.on_release(promise)
        channel = promise.channel
        if channel is not None and channel.promise is promise:
            if promise.state is CALL:
                self.call_channels -= 1
            self._give_back(channel)

    # --- channels ---------------------------------------------------------------------------------

    def with_channel(self, promise: Promise, start: Callable[[Promise], None]) -> None:
        """Run ``start(promise)`` once the promise owns an open channel.

        Short operations (``promise.state is CALL``) open at most
        ``MAX_CALL_CHANNELS`` channels between them and otherwise wait for one
        to be given back: opening a channel costs the broker more than the
        operation itself.  Consumers and gets hold theirs for long, so they
        are not limited.
        """
        if self.status != "open":
            self.pending_until_open.append((promise, start))
            return
        is_call = promise.state is CALL
        if self.idle_channels:
            channel = self.idle_channels.pop()
            self._bind(channel, promise)
            start(promise)
            return
        if is_call and self.call_channels >= MAX_CALL_CHANNELS:
            self.waiting_for_channel.append((promise, start))
            return
        if self.free_numbers:
            number = self.free_numbers.pop()
        elif self.next_fresh_number <= self.channel_max:
            number = self.next_fresh_number
            self.next_fresh_number += 1
        else:
            self.waiting_for_channel.append((promise, start))
            return
        channel = Channel(number)
        self.channels[number] = channel
        self._bind(channel, promise)
        self.send(method_frame(number, M["channel.open"].encode_args()))

        def opened(channel: Channel, _method: Any) -> None:
            channel.is_open = True
            start(promise)

        channel.expect((CHANNEL_OPEN_OK,), opened)

    def _bind(self, channel: Channel, promise: Promise) -> None:
        channel.promise = promise
        promise.channel = channel
        channel.handlers[CHANNEL_CLOSE] = self._on_channel_close
        if promise.state is CALL:
            self.call_channels += 1

    def _give_back(self, channel: Channel) -> None:
        if channel.pending_ack:
            self._send_pending_ack(channel)
        channel.low = channel.last_tag = 0
        channel.reset()
        # An idle channel can still be closed by the broker (e.g. an administrator).
        channel.handlers[CHANNEL_CLOSE] = self._on_channel_close
        if channel.unacked:
            channel.unacked.clear()
        if not channel.is_open or self.status != "open":
            return
        if self.waiting_for_channel:
            promise, start = self.waiting_for_channel.popleft()
            self._bind(channel, promise)
            start(promise)
            return
        self.idle_channels.append(channel)

    def _on_channel_close(self, channel: Channel, method: Any) -> None:
        """The broker closed a channel: fail its promise; the number can be reused."""
        self.send(method_frame(channel.number, M["channel.close-ok"].encode_args()))
        channel.is_open = False
        exc = self.error_from_close(method)
        promise = channel.promise
        channel.unacked.clear()
        if promise is not None and promise.state is CALL:
            self.call_channels -= 1
        del self.channels[channel.number]
        self.free_numbers.append(channel.number)
        if channel in self.idle_channels:
            self.idle_channels.remove(channel)
        if self.waiting_for_channel and self.status == "open":
            # A channel number (and maybe a short operation's slot) is free again.
            waiting, start = self.waiting_for_channel.popleft()
            self.with_channel(waiting, start)
        if promise is not None:
            promise.held = 0
            if promise.state is not None and hasattr(promise.state, "channel_closed"):
                promise.state.channel_closed(self, promise, exc)
            if not promise.final:
                self.fail(promise, exc, dict(method))
            elif not promise.results:
                self.release(promise)

    @staticmethod
    def error_from_close(method: Any) -> exceptions.AMQPError:
        code = method["reply_code"]
        cls: Any = spec.ERRORS.get(code, exceptions.AMQPError)
        class_id, method_id = method["class_id"], method["method_id"]
        failing = spec.METHODS.get((class_id << 16) | method_id) if class_id else None
        return cls(  # type: ignore[no-any-return]
            method["reply_text"],
            reply_code=code,
            class_id=class_id,
            method_id=method_id,
            method_name=failing.name if failing is not None else None,
        )

    # --- inbound dispatch -------------------------------------------------------------------------

    def on_frames(self, frames: list[Frame]) -> None:
        """Dispatch a batch of frames from the transport."""
        channels = self.channels
        methods = _METHODS
        for frame_type, number, payload in frames:
            channel = channels.get(number)
            if channel is None:
                self.violation("frame of type %d on channel %d, which is not open" % (frame_type, number))
                return
            if frame_type == 1:
                if channel.partial is not None:
                    self.violation("method frame on channel %d while a message is incomplete" % number)
                    return
                method_id = _unpack_method_id(payload, 0)[0] if len(payload) >= 4 else -1
                cls = methods.get(method_id)
                if cls is None:
                    self.violation(
                        "unknown method id %d.%d on channel %d" % (method_id >> 16, method_id & 0xFFFF, number)
                    )
                    return
                try:
                    method, end = cls.decode(payload, 4)
                except DECODE_FAILURES as exc:
                    self.violation("malformed %s on channel %d: %s" % (cls.name, number, describe_failure(exc)))
                    return
                if end != len(payload):
                    self.violation("%s on channel %d has %d bytes too many" % (cls.name, number, len(payload) - end))
                    return
                if cls.has_content:
                    channel.partial = method
                    continue
                handler = channel.handlers.get(method_id)
                if handler is None:
                    handler = channel.take_reply(method_id)
                    if handler is None:
                        self.violation("unexpected %s on channel %d" % (cls.name, number))
                        return
                handler(channel, method)
            elif frame_type == 2:
                partial = channel.partial
                if partial is None or channel.body_size >= 0:
                    self.violation("content header on channel %d without a content method" % number)
                    return
                if partial.class_id != 60:
                    self.violation("content header for class %d" % partial.class_id)
                    return
                try:
                    body_size, props = _decode_header(payload)
                except spec.DecodeError as exc:
                    self.violation("content header on channel %d: %s" % (number, exc))
                    return
                if body_size > self.max_message_size:
                    self.violation(
                        "message of %d bytes exceeds max_message_size %d" % (body_size, self.max_message_size),
                        FrameTooLarge,
                    )
                    return
                if body_size == 0:
                    self._complete(channel, partial, props, b"")
                else:
                    channel.body_size = body_size
                    channel.props = props
            elif frame_type == 3:
                if channel.body_size < 0:
                    self.violation("body frame on channel %d without a content header" % number)
                    return
                received = channel.received + len(payload)
                if received >= channel.body_size:
                    if received > channel.body_size:
                        self.violation("body on channel %d longer than its header declared" % number)
                        return
                    if channel.chunks:
                        channel.chunks.append(payload)
                        body = b"".join(channel.chunks)
                        channel.chunks = []
                    else:
                        body = payload
                    partial, props = channel.partial, channel.props
                    channel.received = 0
                    channel.body_size = -1
                    channel.props = None
                    self._complete(channel, partial, props, body)
                else:
                    channel.received = received
                    channel.chunks.append(payload)
            else:
                self.violation("unexpected frame type %d" % frame_type)
                return
            if self.status == "closed":
                return

    def _complete(self, channel: Channel, method: Any, props: dict[str, Any], body: bytes) -> None:
        """A content-bearing method is whole: make it a message and hand it over."""
        channel.partial = None
        headers = props.pop("headers", None)
        if headers is None:
            headers = props
        elif props:
            headers.update(props)
        method["body"] = body
        method["headers"] = headers
        handler = channel.handlers.get(method.method_id)
        if handler is None:
            handler = channel.take_reply(method.method_id)
            if handler is None:
                self.violation("unexpected %s on channel %d" % (method.name, channel.number))
                return
        handler(channel, method)

    def violation(self, message: str, kind: type[ConnectionBroken] = ConnectionBroken) -> None:
        """The peer broke the protocol: end the connection."""
        exc = kind("protocol violation by the broker: %s" % message)
        log.error("%s", exc)
        self._close_transport(exc, False)
        self.on_broken(exc)

    # --- the connection machine (channel 0) --------------------------------------------------------

    def start(self, callback: Callback | None = None) -> Promise:
        """Begin the handshake: the protocol header has to be sent by the caller's transport."""
        promise = self.new_promise(callback)
        self.connect_promise = promise
        self.status = "handshake"
        zero = self.channels[0]
        zero.handlers[CONNECTION_CLOSE] = self._on_connection_close
        zero.handlers[CONNECTION_BLOCKED] = self._on_blocked
        zero.handlers[CONNECTION_UNBLOCKED] = self._on_unblocked
        zero.expect((CONNECTION_START,), self._on_start)
        self.send(spec.PROTOCOL_HEADER)
        return promise

    def _client_properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "product": "puka",
            "version": _product_version(),
            "platform": "Python %d.%d.%d (%s)" % (sys.version_info[:3] + (sys.platform,)),
            "information": "https://pypi.org/project/puka/",
            "capabilities": {
                "publisher_confirms": True,
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                "basic.nack": True,
                "exchange_exchange_bindings": True,
                "authentication_failure_close": True,
                "per_consumer_qos": True,
            },
        }
        if self.client_properties:
            extra = dict(self.client_properties)
            caps = extra.pop("capabilities", None)
            props.update(extra)
            if caps:
                props["capabilities"] = dict(props["capabilities"], **caps)
        return props

    def _on_start(self, channel: Channel, method: Any) -> None:
        if (method["version_major"], method["version_minor"]) != (0, 9):
            self.violation("server speaks AMQP %d-%d" % (method["version_major"], method["version_minor"]))
            return
        self.server_properties = method["server_properties"]
        mechanisms = method["mechanisms"].split()
        mechanism = self.auth_mechanism
        if mechanism not in mechanisms:
            self._handshake_failed(
                exceptions.ConnectionBroken(
                    "the broker does not offer the %s authentication mechanism (it offers: %s)"
                    % (mechanism, ", ".join(mechanisms))
                )
            )
            return
        if mechanism == "PLAIN":
            response = "\0%s\0%s" % (self.username, self.password)
        else:
            response = ""
        caps = self.server_properties.get("capabilities") or {}
        self.pubacks_in_use = bool(caps.get("publisher_confirms")) if self.pubacks is None else bool(self.pubacks)
        self.send(
            method_frame(
                0,
                M["connection.start-ok"].encode_args(self._client_properties(), mechanism, response, "en_US"),
            )
        )
        channel.expect((CONNECTION_TUNE, CONNECTION_SECURE), self._on_tune)

    def _on_tune(self, channel: Channel, method: Any) -> None:
        if method.method_id == CONNECTION_SECURE:
            self._handshake_failed(
                ConnectionBroken("the broker asked for a SASL challenge, which puka does not support")
            )
            return
        server_channel_max = method["channel_max"] or 65535
        server_frame_max = method["frame_max"] or 0xFFFFFFFF
        self.channel_max = min(server_channel_max, self.wanted_channel_max or 65535)
        self.frame_max = min(server_frame_max, self.wanted_frame_max or 0xFFFFFFFF)
        if self.frame_max < spec.FRAME_MIN_SIZE:
            self.frame_max = spec.FRAME_MIN_SIZE
        server_heartbeat = method["heartbeat"]
        if not self.heartbeat:
            heartbeat = 0
        elif not server_heartbeat:
            heartbeat = int(self.heartbeat)
        else:
            heartbeat = min(int(self.heartbeat), server_heartbeat)
        if self.heartbeat and heartbeat == 0:
            heartbeat = 1
        self.heartbeat = heartbeat
        self.send(method_frame(0, M["connection.tune-ok"].encode_args(self.channel_max, self.frame_max, heartbeat)))
        self._set_frame_max(self.frame_max)
        if heartbeat:
            self._set_heartbeat(heartbeat)
        self.send(method_frame(0, M["connection.open"].encode_args(self.vhost)))
        channel.expect((CONNECTION_OPEN_OK,), self._on_open_ok)

    def _on_open_ok(self, channel: Channel, method: Any) -> None:
        self.status = "open"
        self._set_deadline(None, "")
        for publisher in self.publishers.values():
            self._open_publisher(publisher)
        promise = self.connect_promise
        if promise is not None:
            result = Result(self.server_properties and {"server_properties": self.server_properties})
            self.resolve(promise, result)
        pending, self.pending_until_open = self.pending_until_open, []
        for promise, start in pending:
            if not promise.final:
                self.with_channel(promise, start)

    def _handshake_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionBroken):
            self._close_transport(exc, False)
        else:
            self._close_transport(ConnectionBroken(str(exc)), False)
        self.on_broken(exc)

    def _on_connection_close(self, channel: Channel, method: Any) -> None:
        """The broker closes the connection: answer, fail everything with its reason."""
        try:
            self.send(method_frame(0, M["connection.close-ok"].encode_args()))
        except ConnectionBroken:
            pass
        exc = self.error_from_close(method)
        if self.status == "closing" and self.close_promise is not None:
            # Both sides closed at once: the broker's reason wins for the rest.
            self.resolve(self.close_promise, Result())
        log.warning("connection closed by the broker: %s", exc)
        self._close_transport(ConnectionBroken("connection closed by the broker: %s" % exc), True)
        self.on_broken(exc)

    def _on_blocked(self, channel: Channel, method: Any) -> None:
        self.blocked = method["reason"] or "blocked"
        log.warning("connection blocked by the broker: %s", self.blocked)
        if self.on_blocked is not None:
            self.on_blocked(self.blocked)

    def _on_unblocked(self, channel: Channel, method: Any) -> None:
        self.blocked = None
        log.info("connection unblocked")
        if self.on_blocked is not None:
            self.on_blocked(None)

    def close(self, callback: Callback | None = None) -> Promise:
        """Start closing: connection.close, then close-ok ends it."""
        if self.status in ("closing",) and self.close_promise is not None:
            return self.close_promise
        if self.error is not None or self.status in ("closed", "new"):
            promise = Promise(self.next_number, callback)
            self.next_number += 1
            self.promises[promise.number] = promise
            self.resolve(promise, Result())
            if self.status == "new":
                self.on_broken(ConnectionBroken("client closed"))
            return promise
        promise = self.new_promise(callback)
        self.close_promise = promise
        if self.status != "open":
            # Still in the handshake: nothing to say to the broker yet.
            exc = ConnectionBroken("connection closed by the client")
            self._close_transport(exc, False)
            self.resolve(promise, Result())
            self.on_broken(exc)
            return promise
        self.flush_acks()
        self.status = "closing"
        zero = self.channels[0]
        zero.replies.clear()
        zero.expect((CONNECTION_CLOSE_OK,), self._on_close_ok)
        self.send(method_frame(0, M["connection.close"].encode_args(200, "Normal shutdown", 0, 0)))
        return promise

    def _on_close_ok(self, channel: Channel, method: Any) -> None:
        exc = ConnectionBroken("connection closed by the client")
        if self.close_promise is not None:
            self.resolve(self.close_promise, Result())
        self._close_transport(exc, False)
        self.on_broken(exc)

    def on_broken(self, exc: BaseException) -> None:
        """The connection is gone: every unfinished promise fails with ``exc``."""
        if self.status == "closed":
            return
        was_closing = self.status == "closing"
        self.status = "closed"
        self.error = exc
        on_closed = self.on_closed
        if was_closing and self.close_promise is not None and not self.close_promise.final:
            # A close that could not complete (peer gone, or blocked): closed all the same.
            self.resolve(self.close_promise, Result())
        if self.connect_promise is not None and not self.connect_promise.final:
            exc = self._explain_handshake_failure(exc)
            self.error = exc
        for promise in list(self.promises.values()):
            if not promise.final:
                self.fail(promise, exc)
        for publisher in self.publishers.values():
            publisher.inflight.clear()
            publisher.backlog.clear()
            publisher.backlog_bytes = 0
            publisher.ready = False
        self.backlog_bytes = 0
        self.pending_acks = []
        self.pending_until_open.clear()
        self.waiting_for_channel.clear()
        if on_closed is not None:
            on_closed()

    def _explain_handshake_failure(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ConnectionBroken) and "closed by the peer" in str(exc) and self.server_properties:
            return ConnectionBroken(
                "%s during the handshake: wrong credentials, or a vhost the user may not use?" % exc
            )
        return exc

    # --- publishing ---------------------------------------------------------------------------------

    def _publisher(self, exchange: str) -> Publisher:
        """The publisher of an exchange: its own channel, opened on first use."""
        publisher = self.publishers.get(exchange)
        if publisher is not None:
            return publisher
        number = None
        if len(self.publishers) < MAX_PUBLISHERS:
            if self.free_numbers:
                number = self.free_numbers.pop()
            elif self.next_fresh_number <= self.channel_max:
                number = self.next_fresh_number
                self.next_fresh_number += 1
        if number is None:
            # Out of channels: share the default exchange's (an error there fails both).
            return self.publishers[""]
        publisher = Publisher(exchange, Channel(number))
        self.publishers[exchange] = publisher
        if self.status == "open":
            self._open_publisher(publisher)
        return publisher

    def _open_publisher(self, publisher: Publisher) -> None:
        channel = publisher.channel
        channel.reset()
        channel.publisher = publisher
        channel.handlers[CHANNEL_CLOSE] = self._on_publish_channel_close
        channel.handlers[BASIC_RETURN] = self._on_return
        self.channels[channel.number] = channel
        self.send(method_frame(channel.number, M["channel.open"].encode_args()))
        if self.pubacks_in_use:
            channel.handlers[BASIC_ACK] = self._on_ack
            channel.handlers[BASIC_NACK] = self._on_nack
            self.send(method_frame(channel.number, M["confirm.select"].encode_args(False)))
            channel.expect((CHANNEL_OPEN_OK,), _mark_open)
            channel.expect((CONFIRM_SELECT_OK,), self._on_publisher_ready)
        else:
            channel.expect((CHANNEL_OPEN_OK,), self._on_publisher_ready)

    def _on_publisher_ready(self, channel: Channel, method: Any) -> None:
        channel.is_open = True
        publisher = channel.publisher
        publisher.tag = 1
        publisher.low = 1
        publisher.ready = True
        backlog = publisher.backlog
        while backlog and publisher.ready:
            promise, method_payload, properties, body = backlog.popleft()
            publisher.backlog_bytes -= len(body)
            self.backlog_bytes -= len(body)
            if promise.final:
                continue
            self._send_publish(publisher, promise, method_payload, properties, body)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: Any,
        headers: dict[str, Any] | None,
        mandatory: bool,
        callback: Callback | None,
    ) -> int:
        """basic.publish, confirmed: returns the promise number.  Encoding errors raise here."""
        if self.error is not None:
            raise self._broken_error()
        if body.__class__ is not bytes:
            body = _as_body(body)
        number = self.next_number
        if headers or mandatory or not self.pubacks_in_use:
            properties = self._encode_properties(headers, number, mandatory)
        else:
            properties = _EMPTY_PROPERTIES
        publisher = self.publishers.get(exchange) or self._publisher(exchange)
        key = (routing_key, mandatory)
        method_payload = publisher.methods.get(key)
        if method_payload is None:
            method_payload = _encode_publish(exchange, routing_key, mandatory, False)
            if len(publisher.methods) >= 256:
                publisher.methods.clear()
            publisher.methods[key] = method_payload
        self.next_number = number + 1
        promise = Promise(number, callback)
        self.promises[number] = promise
        if publisher.ready:
            self._send_publish(publisher, promise, method_payload, properties, body)
        else:
            publisher.backlog.append((promise, method_payload, properties, body))
            publisher.backlog_bytes += len(body)
            self.backlog_bytes += len(body)
        return number

    def _encode_properties(self, headers: dict[str, Any] | None, number: int, mandatory: bool) -> bytes:
        props: dict[str, Any] = {}
        application: dict[str, Any] = {}
        if headers:
            for key, value in headers.items():
                if key in BASIC_PROPERTIES:
                    props[key] = value
                elif key == "headers":
                    raise ValueError("pass application headers directly in headers=, not under a 'headers' key")
                else:
                    application[key] = value
            mode = props.get("delivery_mode")
            if mode is not None and mode not in (1, 2):
                raise ValueError("delivery_mode must be 1 (transient) or 2 (persistent), not %r" % (mode,))
            expiration = props.get("expiration")
            if expiration is not None and not (isinstance(expiration, str) and expiration.isdigit()):
                # RabbitMQ closes the channel for anything else (406): refuse it here.
                raise ValueError("expiration must be a string of digits (milliseconds), not %r" % (expiration,))
        if mandatory or not self.pubacks_in_use:
            application[PROMISE_HEADER] = number
        if application:
            props["headers"] = application
        return _encode_properties(props)

    def _send_publish(
        self, publisher: Publisher, promise: Promise, method_payload: bytes, properties: bytes, body: Any
    ) -> None:
        number = publisher.channel.number
        frames = content_frames(number, method_payload, 60, properties, body, self.frame_max)
        if self.pubacks_in_use:
            tag = publisher.tag
            publisher.tag = tag + 1
            promise.tag = tag
            publisher.inflight[tag] = promise
        else:
            frames.append(self._footer(number, promise.number))
            publisher.inflight[promise.number] = promise
        if len(frames) == 1:
            self.send(frames[0])
        else:
            self.send_many(frames)

    def _footer(self, channel: int, number: int) -> bytes:
        props = _encode_properties({"headers": {PROMISE_HEADER: number, FOOTER_HEADER: True}})
        return b"".join(content_frames(channel, _encode_publish("", "", True, False), 60, props, b"", self.frame_max))

    def _on_ack(self, channel: Channel, method: Any) -> None:
        publisher = channel.publisher
        tag = method["delivery_tag"]
        inflight = publisher.inflight
        if tag >= publisher.tag:
            self.violation("basic.ack for delivery tag %d, which was never published" % tag)
            return
        if method["multiple"]:
            low = publisher.low
            if tag < low:
                self.violation("duplicate basic.ack (multiple) up to delivery tag %d" % tag)
                return
            ready = self.ready
            returned = publisher.returned
            for t in range(low, tag + 1):
                promise = inflight.pop(t, None)
                if promise is not None:
                    promise.final = True
                    promise.results = [Result()]
                    ready.append(promise)
                    if promise.observer is not None:
                        promise.observer(promise, promise.results[0])
                elif returned:
                    returned.discard(t)
            publisher.low = tag + 1
        else:
            promise = inflight.pop(tag, None)
            if promise is None:
                if tag in publisher.returned:
                    publisher.returned.discard(tag)
                    return
                self.violation("basic.ack for delivery tag %d, which is not in flight" % tag)
                return
            promise.final = True
            promise.results = [Result()]
            self.ready.append(promise)
            if promise.observer is not None:
                promise.observer(promise, promise.results[0])

    def _on_nack(self, channel: Channel, method: Any) -> None:
        publisher = channel.publisher
        tag = method["delivery_tag"]
        if tag >= publisher.tag:
            self.violation("basic.nack for delivery tag %d, which was never published" % tag)
            return
        if method["multiple"]:
            if tag < publisher.low:
                self.violation("duplicate basic.nack (multiple) up to delivery tag %d" % tag)
                return
            tags = range(publisher.low, tag + 1)
            publisher.low = tag + 1
        else:
            if tag not in publisher.inflight and tag not in publisher.returned:
                self.violation("basic.nack for delivery tag %d, which is not in flight" % tag)
                return
            tags = range(tag, tag + 1)
        for t in tags:
            promise = publisher.inflight.pop(t, None)
            if promise is not None:
                self.fail(
                    promise,
                    exceptions.PublishNacked("the broker nacked the message (delivery tag %d)" % t),
                    {"delivery_tag": t},
                )
            else:
                publisher.returned.discard(t)

    def _on_return(self, channel: Channel, message: Any) -> None:
        publisher = channel.publisher
        headers = message["headers"]
        number = headers.get(PROMISE_HEADER)
        promise = self.promises.get(number) if isinstance(number, int) else None
        if self.pubacks_in_use:
            if promise is None or promise.tag is None or publisher.inflight.get(promise.tag) is not promise:
                log.warning("basic.return of a message puka cannot match to a publish: %r", message)
                return
            del publisher.inflight[promise.tag]
            publisher.returned.add(promise.tag)
        else:
            if promise is None or publisher.inflight.get(number) is not promise:
                return  # the footer of a message already returned
            del publisher.inflight[number]
            if headers.get(FOOTER_HEADER):
                self.resolve(promise, Result())
                return
        code = message["reply_code"]
        cls: Any = spec.ERRORS.get(code, exceptions.AMQPError)
        exc = cls(message["reply_text"], reply_code=code, method_name="basic.publish")
        self.fail(promise, exc, dict(message))

    def _on_publish_channel_close(self, channel: Channel, method: Any) -> None:
        """The broker closed a publish channel: fail what is in flight on it, reopen it."""
        publisher = channel.publisher
        exc = self.error_from_close(method)
        log.warning("publish channel of exchange %r closed by the broker: %s", publisher.exchange, exc)
        self.send(method_frame(channel.number, M["channel.close-ok"].encode_args()))
        channel.is_open = False
        publisher.ready = False
        inflight, publisher.inflight = publisher.inflight, {}
        publisher.returned.clear()
        for promise in inflight.values():
            self.fail(promise, exc, dict(method))
        self._open_publisher(publisher)

    # --- operations on pooled channels ----------------------------------------------------------------

    def call(
        self, request: type[spec.Method], reply_ids: tuple[int, ...], args: tuple[Any, ...], callback: Callback | None
    ) -> int:
        """A synchronous method on a pooled channel; the reply is the result."""
        payload = request.encode_args(*args)  # bad arguments raise here, before anything is sent
        promise = self.new_promise(callback)
        promise.state = CALL

        def start(promise: Promise) -> None:
            channel = promise.channel
            self.send(method_frame(channel.number, payload))
            channel.expect(reply_ids, lambda channel, reply: self.resolve(promise, reply))

        self.with_channel(promise, start)
        return promise.number

    def consume(
        self,
        queues: list[dict[str, Any]],
        prefetch_count: int,
        no_ack: bool,
        callback: Callback | None,
    ) -> int:
        """basic.qos then basic.consume for each queue; every delivery is a result."""
        qos = M["basic.qos"].encode_args(0, prefetch_count, False)
        number = self.next_number
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
        promise = self.new_promise(callback)
        state = promise.state = ConsumeState(no_ack, consumers)

        def start(promise: Promise) -> None:
            channel = promise.channel
            channel.handlers[BASIC_DELIVER] = self._on_deliver
            channel.handlers[BASIC_CANCEL] = self._on_server_cancel
            self.send(method_frame(channel.number, qos))
            channel.expect((BASIC_QOS_OK,), _ignore)
            for i, consumer in enumerate(consumers):
                self.send(method_frame(channel.number, _consume_payload(consumer, no_ack)))
                channel.expect((BASIC_CONSUME_OK,), started if i == len(consumers) - 1 else _ignore)

        def started(channel: Channel, _reply: Any) -> None:
            # RabbitMQ may answer a later method before basic.consume-ok (and a cancel
            # sent before it crashes the channel): qos and cancel wait for this.
            state.started = True
            deferred, state.deferred = state.deferred, []
            for action in deferred:
                action(channel)

        self.with_channel(promise, start)
        return promise.number

    def _on_deliver(self, channel: Channel, message: Any) -> None:
        promise = channel.promise
        if promise is None or promise.final:
            # Deliveries racing a cancel whose promise is gone: hand them back.
            self.send(method_frame(channel.number, _encode_reject(message["delivery_tag"], True)))
            return
        message["promise_number"] = promise.number
        if not promise.state.no_ack:
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
        self.ready.append(promise)

    def _on_server_cancel(self, channel: Channel, method: Any) -> None:
        """The broker cancelled one of our consumers (queue deleted...): end the consume promise."""
        promise = channel.promise
        tag = method["consumer_tag"]
        if not method["no_wait"]:
            self.send(method_frame(channel.number, M["basic.cancel-ok"].encode_args(tag)))
        if promise is None or promise.final:
            return
        state = promise.state
        for consumer in state.consumers:
            if consumer["tag"] != tag:
                self.send(method_frame(channel.number, M["basic.cancel"].encode_args(consumer["tag"], False)))
                channel.expect((BASIC_CANCEL_OK,), _ignore)
        state.consumers = []
        channel.handlers[BASIC_CANCEL] = _ignore
        self.fail(
            promise,
            exceptions.ConsumerCancelled("the broker cancelled consumer %s (queue deleted?)" % tag),
            {"consumer_tag": tag},
        )

    def _consume_promise(self, number: int, what: str) -> Promise:
        promise = self.promises.get(number)
        if promise is None or not isinstance(promise.state, ConsumeState):
            raise ValueError("%s: promise %r is not an active basic_consume" % (what, number))
        return promise

    def _on_consume_channel(self, consume: Promise, action: Callable[[Channel], None]) -> None:
        state = consume.state
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
        consume = self._consume_promise(consume_number, "basic_qos")
        payload = M["basic.qos"].encode_args(0, prefetch_count, False)
        promise = self.new_promise(callback)
        state = consume.state

        def switch(channel: Channel) -> None:
            if consume.final:
                self.resolve(promise, Result())
                return
            self.send(method_frame(channel.number, payload))
            replies = [BASIC_QOS_OK]
            for consumer in state.consumers:
                # Same tag: RabbitMQ forgets a tag as it processes basic.cancel.
                self.send(method_frame(channel.number, M["basic.cancel"].encode_args(consumer["tag"], False)))
                self.send(method_frame(channel.number, _consume_payload(consumer, state.no_ack)))
                replies += [BASIC_CANCEL_OK, BASIC_CONSUME_OK]
            remaining = [len(replies)]

            def answered(channel: Channel, reply: Any) -> None:
                remaining[0] -= 1
                if not remaining[0]:
                    self.resolve(promise, Result(prefetch_count=prefetch_count))

            for reply in replies:
                channel.expect((reply,), answered)

        self._on_consume_channel(consume, switch)
        return promise.number

    def cancel(self, consume_number: int, callback: Callback | None) -> int:
        """basic.cancel every consumer of a consume promise; the consume promise then ends."""
        consume = self._consume_promise(consume_number, "basic_cancel")
        state = consume.state
        promise = self.new_promise(callback)
        state.cancel_promise = promise

        def finish(channel: Channel, reply: Any) -> None:
            self.resolve(promise, reply)
            consume.final = True
            if not consume.results and not consume.held:
                self.release(consume)

        def send_cancels(channel: Channel) -> None:
            consumers, state.consumers = state.consumers, []
            channel.handlers[BASIC_CANCEL] = _ignore
            if not consumers or consume.final:
                finish(channel, Result())
                return
            for i, consumer in enumerate(consumers):
                self.send(method_frame(channel.number, M["basic.cancel"].encode_args(consumer["tag"], False)))
                channel.expect((BASIC_CANCEL_OK,), finish if i == len(consumers) - 1 else _ignore)

        if consume.final:
            self.resolve(promise, Result())
        else:
            self._on_consume_channel(consume, send_cancels)
        return promise.number

    def get(self, queue: str, no_ack: bool, callback: Callback | None) -> int:
        """basic.get: a message (held for its ack) or a result with ``empty`` True."""
        payload = M["basic.get"].encode_args(queue, no_ack)
        promise = self.new_promise(callback)

        def start(promise: Promise) -> None:
            channel = promise.channel
            self.send(method_frame(channel.number, payload))
            channel.expect((BASIC_GET_OK, BASIC_GET_EMPTY), got)

        def got(channel: Channel, reply: Any) -> None:
            if reply.method_id == BASIC_GET_EMPTY:
                self.resolve(promise, Result(empty=True))
                return
            reply["promise_number"] = promise.number
            if not no_ack:
                tag = reply["delivery_tag"]
                channel.unacked[tag] = reply
                channel.last_tag = tag
                if not channel.low:
                    channel.low = tag
                promise.held = 1
            self.resolve(promise, reply)

        self.with_channel(promise, start)
        return promise.number

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
        if self.error is not None:
            raise self._broken_error()
        try:
            number = message["promise_number"]
            tag = message["delivery_tag"]
        except (KeyError, TypeError):
            raise ValueError("basic_%s takes a message delivered by basic_consume or basic_get" % verb) from None
        promise = self.promises.get(number)
        channel = promise.channel if promise is not None else None
        if channel is None or channel.unacked.get(tag) is not message:
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
            # Every tag up to this one is settled: one basic.ack(multiple) can stand for
            # this ack and the others deferred on the channel (fewer frames for both sides).
            if not channel.pending_ack:
                self.pending_acks.append(channel)
                if len(self.pending_acks) == 1 and self.request_flush is not None:
                    self.request_flush()
            channel.pending_ack = tag
            channel.pending_count += len(settled)
            if channel.pending_count >= ACK_BATCH:
                self._send_pending_ack(channel)
        else:
            if verb == "ack":
                payload = _encode_ack(tag, multiple)
            elif verb == "nack":
                payload = _encode_nack(tag, multiple, requeue)
            else:
                payload = _encode_reject(tag, requeue)
            self.send(method_frame(channel.number, payload))
        promise.held -= len(settled)  # type: ignore[union-attr]
        if promise.final and not promise.results and not promise.held:  # type: ignore[union-attr]
            self.release(promise)  # type: ignore[arg-type]

    def _send_pending_ack(self, channel: Channel) -> None:
        tag = channel.pending_ack
        channel.pending_ack = 0
        channel.pending_count = 0
        if channel.is_open and self.channels.get(channel.number) is channel:
            self.send(method_frame(channel.number, _encode_ack(tag, True)))

    def flush_acks(self) -> None:
        """Send the acks deferred by ``settle`` (before blocking, writing or closing)."""
        channels, self.pending_acks = self.pending_acks, []
        for channel in channels:
            if channel.pending_ack:
                self._send_pending_ack(channel)


def _ignore(channel: Channel, method: Any) -> None:
    pass


def _mark_open(channel: Channel, method: Any) -> None:
    channel.is_open = True


def _no_transport(exc: ConnectionBroken, flush: bool = False) -> None:
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


class ConsumeState:
    """What a consume promise remembers: its consumers, ack mode, what waits for its channel."""

    __slots__ = ("no_ack", "consumers", "cancel_promise", "deferred", "started")

    def __init__(self, no_ack: bool, consumers: list[dict[str, Any]]) -> None:
        self.no_ack = no_ack
        self.consumers = consumers
        self.cancel_promise: Promise | None = None
        self.deferred: list[Callable[[Channel], None]] = []
        self.started = False

    def channel_closed(self, session: Session, promise: Promise, exc: BaseException) -> None:
        if self.cancel_promise is not None and not self.cancel_promise.final:
            session.fail(self.cancel_promise, exc)


def _as_body(body: Any) -> Any:
    if isinstance(body, (bytes, bytearray)):
        return body
    if isinstance(body, memoryview):
        return body if body.format == "B" and body.ndim == 1 else body.cast("B")
    if isinstance(body, str):
        return body.encode("utf-8")
    raise TypeError("message body must be bytes, bytearray, memoryview or str, not %s" % type(body).__name__)
