"""Publishing: confirm channels, acks, nacks and returns.

Theory of operation: each exchange publishes on a channel of its own (a
:class:`Publisher`; channel 1 is the default exchange's), in confirm mode when
the broker offers confirms, so a channel error caused by one exchange (missing,
access refused) fails only the publishes to that exchange.  Past
:data:`MAX_PUBLISHERS` exchanges, the others share the default exchange's.

* Each publish gets the next delivery tag of its channel and waits in the
  publisher's ``inflight`` for basic.ack (single or ``multiple``: every tag up
  to it) or basic.nack (likewise; the promise fails with PublishNacked).
* basic.return arrives before the ack of the returned message; mandatory
  publishes carry an ``x-puka-promise`` header, so the return fails exactly
  its own promise (NoRoute...), and the ack that follows is absorbed.
* With ``on_nacked`` set (a recovery's ``nack_retry``), a nacked publish it
  takes stays pending, and the connection is abandoned: the recovery sends
  it again on a new one.
* A channel.close on a publish channel fails every publish in flight on it
  and the channel is reopened; publishes made meanwhile wait in the
  publisher's ``backlog`` and go out once it is ready again.
* An ack or nack for a tag never published, or already settled, is a
  protocol violation: nothing is ever confirmed wrongly.
* With ``pubacks=False`` each publish is followed by a mandatory empty
  "footer" message the broker returns, as the original puka did.
* Direct reply-to: RabbitMQ wants a request whose ``reply_to`` is
  ``amq.rabbitmq.reply-to`` published on the channel of the consumer of that
  pseudo-queue.  Such publishes go to the *reply publisher*, bound to that
  consumer's channel (put in confirm mode) once it runs; until then they wait
  in its backlog.  Without such a consumer on this client they are refused at
  the call.

The hot path is :meth:`Publishing.publish`: encoded ``basic.publish`` methods
are cached per (routing key, mandatory), properties are encoded once, and the
frames go to the port in one buffer when they fit.
"""

from __future__ import annotations

from collections import deque

from .. import exceptions, spec
from ..framing import content_frames, method_frame
from ..promise import Kind, Promise, Result
from .channels import PUBLISH_CHANNEL, Channel, ChannelState

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..promise import Callback
    from .session import Session

M = spec.METHODS_BY_NAME
CHANNEL_OPEN_OK = M["channel.open-ok"].method_id
CHANNEL_CLOSE = M["channel.close"].method_id
CONFIRM_SELECT_OK = M["confirm.select-ok"].method_id
BASIC_RETURN = M["basic.return"].method_id
BASIC_ACK = M["basic.ack"].method_id
BASIC_NACK = M["basic.nack"].method_id

_encode_publish = M["basic.publish"].encode_args
_encode_properties = spec.PROPERTIES[60].encode
_EMPTY_PROPERTIES = _encode_properties({})
_PUBLISH = Kind.PUBLISH
#: A content header frame beside its properties: frame header (7), class, weight, body size (12), frame end (1).
_HEADER_OVERHEAD = 7 + 12 + 1

#: Exchanges with a publish channel of their own; beyond, they share the default exchange's.
MAX_PUBLISHERS = 128
#: RabbitMQ's direct reply-to pseudo-queue.
REPLY_TO = "amq.rabbitmq.reply-to"
#: Header that ties a returned (mandatory) message to its publish promise.
PROMISE_HEADER = "x-puka-promise"
FOOTER_HEADER = "x-puka-footer"
#: Property names (puka's spelling) that go into the basic properties, not the headers table.
BASIC_PROPERTIES = frozenset(spec.PROPERTIES[60].names) - {"headers"}


class Publisher:
    """The publishing state of one exchange: its confirm-mode channel and publishes in flight."""

    __slots__ = (
        "exchange",
        "channel",
        "opened",
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
        self.opened = False
        #: opened, and publishes go straight out (not while a recovery replays its topology)
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
        #: (exchange, routing key, mandatory) -> encoded basic.publish (past MAX_PUBLISHERS, exchanges share one)
        self.methods: dict[tuple[str, str, bool], bytes] = {}

    def __repr__(self) -> str:
        return "<Publisher %r on channel %d, %d in flight>" % (self.exchange, self.channel.number, len(self.inflight))


class Publishing:
    """Every publisher of one connection.  See the module docstring."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.table = session.table
        self.send = session.send
        self.send_many = session.send_many
        #: what the handshake agreed (see configure)
        self.pubacks_in_use = False
        self.frame_max = session.handshake.frame_max
        #: exchange -> its publisher (the default exchange's uses channel 1)
        self.publishers: dict[str, Publisher] = {"": Publisher("", Channel(PUBLISH_CHANNEL))}
        #: body bytes of publishes waiting for their channel (counted for push-back)
        self.backlog_bytes = 0
        #: keep what each publish needs to be sent again on another connection (``promise.request``)
        self.keep_for_resend = False
        #: server-named queues renamed by a recovery: old name -> new (default-exchange routing keys follow)
        self.renamed: dict[str, str] = {}
        #: publishes with reply_to amq.rabbitmq.reply-to go out on the reply-to consumer's channel
        self.reply_publisher: Publisher | None = None
        #: a recovery's nack_retry: called with a nacked publish; True: it stays pending (sent again later)
        self.on_nacked: Callable[[Promise], bool] | None = None

    def configure(self, pubacks_in_use: bool, frame_max: int) -> None:
        """The handshake agreed on confirms and the frame size."""
        self.pubacks_in_use = pubacks_in_use
        self.frame_max = frame_max

    # --- channels -----------------------------------------------------------------------------------

    def publisher(self, exchange: str) -> Publisher:
        """The publisher of an exchange: its own channel, opened on first use."""
        publisher = self.publishers.get(exchange)
        if publisher is not None:
            return publisher
        number = None
        if len(self.publishers) < MAX_PUBLISHERS:
            number = self.session.channels.new_number()
        if number is None:
            # Out of channels: share the default exchange's (an error there fails both).
            return self.publishers[""]
        publisher = Publisher(exchange, Channel(number))
        self.publishers[exchange] = publisher
        if self.session.is_open:
            self.open(publisher)
        return publisher

    def open_all(self) -> None:
        for publisher in self.publishers.values():
            self.open(publisher)

    def open(self, publisher: Publisher) -> None:
        session = self.session
        channel = publisher.channel
        channel.reset()
        channel.state = ChannelState.OPENING
        channel.publisher = publisher
        channel.handlers[CHANNEL_CLOSE] = self.on_channel_close
        channel.handlers[BASIC_RETURN] = self.on_return
        session.channels.register(channel)
        session.send(method_frame(channel.number, M["channel.open"].encode_args()))
        if self.pubacks_in_use:
            channel.handlers[BASIC_ACK] = self.on_ack
            channel.handlers[BASIC_NACK] = self.on_nack
            session.send(method_frame(channel.number, M["confirm.select"].encode_args(False)))
            channel.expect((CHANNEL_OPEN_OK,), _mark_open)
            channel.expect((CONFIRM_SELECT_OK,), self.on_ready)
        else:
            channel.expect((CHANNEL_OPEN_OK,), self.on_ready)

    def on_ready(self, channel: Channel, method: Any) -> None:
        channel.state = ChannelState.OPEN
        publisher = channel.publisher
        publisher.tag = 1
        publisher.low = 1
        publisher.opened = True
        if self.session.gated:
            return  # publishes wait until release() (a recovery replays its topology first)
        self._flush_backlog(publisher)

    def release(self) -> None:
        """The session's gate opened: every open publish channel sends what waited."""
        for publisher in self.publishers.values():
            if publisher.opened and not publisher.ready:
                self._flush_backlog(publisher)
        reply = self.reply_publisher
        if reply is not None and reply.opened and not reply.ready:
            self._flush_backlog(reply)

    # --- direct reply-to ------------------------------------------------------------------------------

    def expect_reply_channel(self) -> Publisher:
        """A consumer of amq.rabbitmq.reply-to is on its way: its publishes wait for its channel."""
        publisher = self.reply_publisher
        if publisher is None:
            publisher = self.reply_publisher = Publisher(REPLY_TO, Channel(0))
        return publisher

    def attach_reply_channel(self, channel: Channel) -> None:
        """The reply-to consumer runs on ``channel``: put it in confirm mode; reply-to publishes use it."""
        publisher = self.expect_reply_channel()
        publisher.channel = channel
        channel.publisher = publisher
        publisher.ready = publisher.opened = False
        channel.handlers[BASIC_RETURN] = self.on_return
        if self.pubacks_in_use:
            channel.handlers[BASIC_ACK] = self.on_ack
            channel.handlers[BASIC_NACK] = self.on_nack
            self.send(method_frame(channel.number, M["confirm.select"].encode_args(False)))
            channel.expect((CONFIRM_SELECT_OK,), self.on_ready)
        else:
            self.on_ready(channel, None)

    def detach_reply_channel(self, exc: BaseException) -> None:
        """The reply-to consumer's channel is gone: what was published on it fails."""
        publisher, self.reply_publisher = self.reply_publisher, None
        if publisher is None:
            return
        failed = list(publisher.inflight.values()) + [entry[0] for entry in publisher.backlog]
        self.backlog_bytes -= publisher.backlog_bytes
        publisher.inflight.clear()
        publisher.backlog.clear()
        for promise in failed:
            self.table.fail(promise, exc)

    def _flush_backlog(self, publisher: Publisher) -> None:
        publisher.ready = True
        backlog = publisher.backlog
        while backlog and publisher.ready:
            promise, method_payload, properties, body = backlog.popleft()
            publisher.backlog_bytes -= len(body)
            self.backlog_bytes -= len(body)
            if promise.final:
                continue
            self._send(publisher, promise, method_payload, properties, body)

    # --- publishing ---------------------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: Any,
        headers: dict[str, Any] | None,
        mandatory: bool,
        callback: Callback | None,
    ) -> int:
        """basic.publish, confirmed.  Encoding errors raise here, before anything is sent."""
        if self.session.error is not None:
            raise self.session.broken_error()
        if body.__class__ is not bytes:
            body = _as_body(body)
        table = self.table
        number = table.next_number
        if self.renamed and not exchange:
            routing_key = self.renamed.get(routing_key, routing_key)
        pubacks = self.pubacks_in_use
        if headers or mandatory or not pubacks:
            properties = self._encode_properties(headers, number, mandatory, pubacks)
            if len(properties) > self.frame_max - _HEADER_OVERHEAD:
                raise ValueError(
                    "the message's properties and headers take %d bytes encoded; the content header frame "
                    "must fit the negotiated frame size, %d bytes (at most %d bytes of properties)"
                    % (len(properties), self.frame_max, self.frame_max - _HEADER_OVERHEAD)
                )
        else:
            properties = _EMPTY_PROPERTIES
        if headers and headers.get("reply_to") == REPLY_TO:
            publisher = self.reply_publisher
            if publisher is None:
                raise ValueError(
                    "a publish with reply_to %r needs a consumer of that pseudo-queue on this client first: "
                    "basic_consume(queue=%r, no_ack=True), or use rpc_call()" % (REPLY_TO, REPLY_TO)
                )
        else:
            publisher = self.publishers.get(exchange)
            if publisher is None:
                # A name the encoder refuses must not open a channel for it first.
                _encode_publish(exchange, routing_key, mandatory, False)
                publisher = self.publisher(exchange)
        key = (exchange, routing_key, mandatory)
        method_payload = publisher.methods.get(key)
        if method_payload is None:
            method_payload = _encode_publish(exchange, routing_key, mandatory, False)
            if len(publisher.methods) >= 256:
                publisher.methods.clear()
            publisher.methods[key] = method_payload
        table.next_number = number + 1
        promise = Promise(number, callback, _PUBLISH)
        table.promises[number] = promise
        if self.keep_for_resend:
            # Bytes and the body: nothing the garbage collector has to look at.
            promise.request = method_payload
            promise.properties = properties
            promise.body = body
        if publisher.ready and pubacks:
            # _send(), inline: the publish hot path
            frames = content_frames(publisher.channel.number, method_payload, 60, properties, body, self.frame_max)
            tag = publisher.tag
            publisher.tag = tag + 1
            promise.tag = tag
            publisher.inflight[tag] = promise
            if len(frames) == 1:
                self.send(frames[0])
            else:
                self.send_many(frames)
        elif publisher.ready:
            self._send(publisher, promise, method_payload, properties, body)
        else:
            publisher.backlog.append((promise, method_payload, properties, body))
            publisher.backlog_bytes += len(body)
            self.backlog_bytes += len(body)
        return number

    def resend(self, promise: Promise) -> None:
        """Send a publish again (it was unconfirmed when an earlier connection was lost)."""
        method_payload = promise.request
        properties, body = promise.properties, promise.body
        method, _end = spec.decode_method(method_payload, 0)
        exchange = method["exchange"]
        routing_key = method["routing_key"]
        if not exchange and routing_key in self.renamed:
            method_payload = _encode_publish(exchange, self.renamed[routing_key], method["mandatory"], False)
            promise.request = method_payload
        if spec.decode_properties(properties, 0)[0].get("reply_to") == REPLY_TO:
            publisher = self.expect_reply_channel()
        else:
            publisher = self.publishers.get(exchange) or self.publisher(exchange)
        promise.tag = None
        if publisher.ready:
            self._send(publisher, promise, method_payload, properties, body)
        else:
            publisher.backlog.append((promise, method_payload, properties, body))
            publisher.backlog_bytes += len(body)
            self.backlog_bytes += len(body)

    def rename(self, old: str, new: str) -> None:
        """A server-named queue got a new name: publishes to it through the default exchange follow."""
        self.renamed[old] = new
        publisher = self.publishers[""]
        payloads = {_encode_publish("", old, mandatory, False): mandatory for mandatory in (False, True)}
        backlog = publisher.backlog
        for index, (promise, method_payload, properties, body) in enumerate(backlog):
            mandatory = payloads.get(method_payload)
            if mandatory is not None:
                backlog[index] = (promise, _encode_publish("", new, mandatory, False), properties, body)
                if promise.request is not None:
                    promise.request = backlog[index][1]
        publisher.methods.clear()

    @staticmethod
    def _encode_properties(headers: dict[str, Any] | None, number: int, mandatory: bool, pubacks: bool) -> bytes:
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
        if mandatory or not pubacks:
            application[PROMISE_HEADER] = number
        if application:
            props["headers"] = application
        return _encode_properties(props)

    def _send(
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

    # --- what the broker says about them --------------------------------------------------------------

    def on_ack(self, channel: Channel, method: Any) -> None:
        publisher = channel.publisher
        tag = method["delivery_tag"]
        inflight = publisher.inflight
        if tag >= publisher.tag:
            self.session.violation("basic.ack for delivery tag %d, which was never published" % tag)
            return
        ready = self.session.table.ready
        if method["multiple"]:
            low = publisher.low
            if tag < low:
                self.session.violation("duplicate basic.ack (multiple) up to delivery tag %d" % tag)
                return
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
                self.session.violation("basic.ack for delivery tag %d, which is not in flight" % tag)
                return
            promise.final = True
            promise.results = [Result()]
            ready.append(promise)
            if promise.observer is not None:
                promise.observer(promise, promise.results[0])

    def on_nack(self, channel: Channel, method: Any) -> None:
        publisher = channel.publisher
        tag = method["delivery_tag"]
        session = self.session
        if tag >= publisher.tag:
            session.violation("basic.nack for delivery tag %d, which was never published" % tag)
            return
        if method["multiple"]:
            if tag < publisher.low:
                session.violation("duplicate basic.nack (multiple) up to delivery tag %d" % tag)
                return
            tags = range(publisher.low, tag + 1)
            publisher.low = tag + 1
        else:
            if tag not in publisher.inflight and tag not in publisher.returned:
                session.violation("basic.nack for delivery tag %d, which is not in flight" % tag)
                return
            tags = range(tag, tag + 1)
        on_nacked = self.on_nacked
        kept = 0
        for t in tags:
            promise = publisher.inflight.pop(t, None)
            if promise is not None and on_nacked is not None and on_nacked(promise):
                promise.tag = None
                kept += 1
            elif promise is not None:
                session.table.fail(
                    promise,
                    exceptions.PublishNacked("the broker nacked the message (delivery tag %d)" % t),
                    {"delivery_tag": t},
                )
            else:
                publisher.returned.discard(t)
        if kept:
            session.abandon(
                exceptions.ConnectionBroken(
                    "the broker nacked %d publish%s: sending again on a new connection (nack_retry)"
                    % (kept, "" if kept == 1 else "es")
                )
            )

    def on_return(self, channel: Channel, message: Any) -> None:
        session = self.session
        publisher = channel.publisher
        headers = message["headers"]
        number = headers.get(PROMISE_HEADER)
        promise = session.table.promises.get(number) if isinstance(number, int) else None
        if self.pubacks_in_use:
            if promise is None or promise.tag is None or publisher.inflight.get(promise.tag) is not promise:
                session.log.warning("basic.return of a message puka cannot match to a publish: %r", message)
                return
            del publisher.inflight[promise.tag]
            publisher.returned.add(promise.tag)
        else:
            if promise is None or publisher.inflight.get(number) is not promise:
                return  # the footer of a message already returned
            del publisher.inflight[number]
            if headers.get(FOOTER_HEADER):
                session.table.resolve(promise, Result())
                return
        code = message["reply_code"]
        cls: Any = spec.ERRORS.get(code, exceptions.AMQPError)
        exc = cls(message["reply_text"], reply_code=code, method_name="basic.publish")
        session.table.fail(promise, exc, dict(message))

    def on_channel_close(self, channel: Channel, method: Any) -> None:
        """The broker closed a publish channel: fail what is in flight on it, reopen it."""
        session = self.session
        publisher = channel.publisher
        exc = session.error_from_close(method)
        session.log.warning("publish channel of exchange %r closed by the broker: %s", publisher.exchange, exc)
        session.send(method_frame(channel.number, M["channel.close-ok"].encode_args()))
        channel.state = ChannelState.CLOSED
        publisher.ready = publisher.opened = False
        inflight, publisher.inflight = publisher.inflight, {}
        publisher.returned.clear()
        for promise in inflight.values():
            session.table.fail(promise, exc, dict(method))
        self.open(publisher)

    def connection_lost(self) -> None:
        """Forget what was in flight (the promises were failed by the session)."""
        for publisher in self.publishers.values():
            publisher.inflight.clear()
            publisher.backlog.clear()
            publisher.backlog_bytes = 0
            publisher.ready = publisher.opened = False
        self.reply_publisher = None
        self.backlog_bytes = 0


def _mark_open(channel: Channel, method: Any) -> None:
    channel.state = ChannelState.OPEN


def _as_body(body: Any) -> Any:
    if isinstance(body, (bytes, bytearray)):
        return body
    if isinstance(body, memoryview):
        return body if body.format == "B" and body.ndim == 1 else body.cast("B")
    if isinstance(body, str):
        return body.encode("utf-8")
    raise TypeError("message body must be bytes, bytearray, memoryview or str, not %s" % type(body).__name__)
