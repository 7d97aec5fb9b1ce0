"""Inbound frames to methods and whole messages, handed to their channel.

Theory of operation: frames arrive in batches from the transport (heartbeats
already taken out).  Each is routed by channel number.  A method without
content goes to the channel's persistent handler for its method id
(deliveries, acks, returns, channel.close...) or else to the oldest pending
reply the channel expects (synchronous methods are answered in order).

A content-bearing method (deliver, get-ok, return) is assembled first; each
channel is in one :class:`Assembly` state::

    IDLE --content method--> HEADER --header, body size 0--> IDLE (message complete)
                             HEADER --header, size > 0---> BODY
                             BODY   --body, not all yet--> BODY
                             BODY   --body, all of it----> IDLE (message complete)

Any other frame in any state -- a frame on a channel number never opened, a
method while a message is incomplete, a body without header, more body than
declared, a message over ``max_message_size``, an unknown or malformed method
-- is a protocol violation by the peer: ``violation(text, kind)`` ends the
connection and no further frame of the batch is looked at.

Except on a channel that is not ``OPEN`` (see
:class:`~puka.protocol.channels.ChannelState`): the broker may still send what
it had queued on a channel after its ``channel.close`` (deliveries), or before
it read ours, until it reads the ``close-ok``; a new use of the number waits
for ``channel.open-ok``.  There a frame that nothing expects (a method without
handler or pending reply, content out of place) is a leftover of the closed
use and is discarded.  Only the unexpected paths look at the state: a frame
the channel expects costs nothing more.

This loop is the delivery hot path: the transitions are written inline, each
checked with one identity test on the channel's state.  The common case -- a
content method whose header and single body frame follow in the same batch --
goes through all three at once: the same checks, without the stops in
``HEADER`` and ``BODY``.
"""

from __future__ import annotations

import enum
from struct import Struct

from .. import spec
from ..exceptions import ConnectionBroken, FrameTooLarge
from ..spec.tables import DECODE_FAILURES, describe_failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..framing import Frame
    from .channels import Channel

_unpack_method_id = Struct(">I").unpack_from
_decode_header = spec.PROPERTIES[60].decode_header
_METHODS = spec.METHODS

#: Largest message body accepted from the broker (RabbitMQ's own maximum is 128 MiB).
MAX_MESSAGE_SIZE = 128 * 1024 * 1024


class Assembly(enum.Enum):
    """Where a channel stands in assembling a message."""

    IDLE = "idle"
    HEADER = "awaiting content header"
    BODY = "awaiting body"


IDLE = Assembly.IDLE
HEADER = Assembly.HEADER
BODY = Assembly.BODY


class Assembler:
    """Routes inbound frames to channels, assembling messages.  See the module docstring."""

    def __init__(
        self,
        channels: dict[int, Channel],
        violation: Callable[[str, type[ConnectionBroken]], None],
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.channels = channels
        self.violation = violation
        self.max_message_size = max_message_size
        #: set when the connection ended: stop looking at the batch
        self.stopped = False

    def on_frames(self, frames: list[Frame]) -> None:
        """Dispatch a batch of frames from the transport."""
        channels = self.channels
        methods = _METHODS
        count = len(frames)
        index = 0
        while index < count:
            frame_type, number, payload = frames[index]
            index += 1
            channel = channels.get(number)
            if channel is None:
                self._violation("frame of type %d on channel %d, which is not open" % (frame_type, number))
                return
            if frame_type == 1:
                if channel.assembly is not IDLE:
                    if not channel.is_open:
                        continue  # a leftover of a closed use of the number
                    self._violation("method frame on channel %d while a message is incomplete" % number)
                    return
                method_id = _unpack_method_id(payload, 0)[0] if len(payload) >= 4 else -1
                cls = methods.get(method_id)
                if cls is None:
                    self._violation(
                        "unknown method id %d.%d on channel %d" % (method_id >> 16, method_id & 0xFFFF, number)
                    )
                    return
                try:
                    method, end = cls.decode(payload, 4)
                except DECODE_FAILURES as exc:
                    self._violation("malformed %s on channel %d: %s" % (cls.name, number, describe_failure(exc)))
                    return
                if end != len(payload):
                    self._violation("%s on channel %d has %d bytes too many" % (cls.name, number, len(payload) - end))
                    return
                if cls.has_content:
                    if index + 1 < count and cls.class_id == 60:
                        # The header and the body may be right behind it: the whole message at once.
                        header_frame = frames[index]
                        body_frame = frames[index + 1]
                        if (
                            header_frame[0] == 2
                            and header_frame[1] == number
                            and body_frame[0] == 3
                            and body_frame[1] == number
                        ):
                            try:
                                body_size, props = _decode_header(header_frame[2])
                            except spec.DecodeError:
                                body_size = 0  # the header's own branch below reports it
                            content = body_frame[2]
                            if 0 < body_size == len(content) and body_size <= self.max_message_size:
                                index += 2
                                self._complete(channel, method, props, content)
                                if self.stopped:
                                    return
                                continue
                    channel.partial = method
                    channel.assembly = HEADER
                    continue
                handler = channel.handlers.get(method_id)
                if handler is None:
                    handler = channel.take_reply(method_id)
                    if handler is None:
                        if not channel.is_open:
                            continue  # a leftover of a closed use of the number
                        self._violation("unexpected %s on channel %d" % (cls.name, number))
                        return
                handler(channel, method)
            elif frame_type == 2:
                if channel.assembly is not HEADER:
                    if not channel.is_open:
                        continue  # a leftover of a closed use of the number
                    self._violation("content header on channel %d without a content method" % number)
                    return
                partial = channel.partial
                if partial.class_id != 60:
                    self._violation("content header for class %d" % partial.class_id)
                    return
                try:
                    body_size, props = _decode_header(payload)
                except spec.DecodeError as exc:
                    self._violation("content header on channel %d: %s" % (number, exc))
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
                    channel.assembly = BODY
                    channel.body_size = body_size
                    channel.props = props
            elif frame_type == 3:
                if channel.assembly is not BODY:
                    if not channel.is_open:
                        continue  # a leftover of a closed use of the number
                    self._violation("body frame on channel %d without a content header" % number)
                    return
                received = channel.received + len(payload)
                if received >= channel.body_size:
                    if received > channel.body_size:
                        self._violation("body on channel %d longer than its header declared" % number)
                        return
                    if channel.chunks:
                        channel.chunks.append(payload)
                        body = b"".join(channel.chunks)
                        channel.chunks = []
                    else:
                        body = payload
                    props = channel.props
                    channel.received = 0
                    channel.props = None
                    self._complete(channel, channel.partial, props, body)
                else:
                    channel.received = received
                    channel.chunks.append(payload)
            else:
                self._violation("unexpected frame type %d" % frame_type)
                return
            if self.stopped:
                return

    def _complete(self, channel: Channel, method: Any, props: dict[str, Any], body: bytes) -> None:
        """A content-bearing method is whole: make it a message and hand it over."""
        channel.assembly = IDLE
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
                if not channel.is_open:
                    return  # a leftover of a closed use of the number (sent before our close-ok)
                self._violation("unexpected %s on channel %d" % (method.name, channel.number))
                return
        handler(channel, method)

    def _violation(self, text: str) -> None:
        self.violation(text, ConnectionBroken)
