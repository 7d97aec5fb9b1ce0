"""Channel 0: the connection's own machine, as a transition table.

Theory of operation: the connection walks these states (:class:`Status`)::

    NEW --start()--> AWAIT_START --connection.start--> AWAIT_TUNE
        --connection.tune--> AWAIT_OPEN_OK --connection.open-ok--> OPEN
    OPEN --close()--> CLOSING --connection.close-ok--> CLOSED
    any state but NEW/CLOSED --connection.close (from the broker)--> CLOSED
    any state --transport lost / protocol violation--> CLOSED

Every method the broker may send on channel 0 is looked up in
:data:`TRANSITIONS` by (state, method): the entry names the handler and the
state after it.  A method with no entry for the current state is a protocol
violation.  ``connection.blocked``/``unblocked`` do not change the state.

The handshake answers ``connection.start`` (SASL PLAIN or EXTERNAL, the
client's properties and capabilities) and ``connection.tune`` (the smaller
side's channel_max and frame_max win; heartbeats: see :meth:`Handshake.on_tune`),
and reports the agreed frame size and heartbeat to the port.
"""

from __future__ import annotations

import enum
import sys

from .. import exceptions, spec
from ..exceptions import ConnectionBroken
from ..framing import method_frame
from ..promise import Result
from ..version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .channels import Channel
    from .session import Session

M = spec.METHODS_BY_NAME
CONNECTION_START = M["connection.start"].method_id
CONNECTION_SECURE = M["connection.secure"].method_id
CONNECTION_TUNE = M["connection.tune"].method_id
CONNECTION_OPEN_OK = M["connection.open-ok"].method_id
CONNECTION_CLOSE = M["connection.close"].method_id
CONNECTION_CLOSE_OK = M["connection.close-ok"].method_id
CONNECTION_BLOCKED = M["connection.blocked"].method_id
CONNECTION_UNBLOCKED = M["connection.unblocked"].method_id

#: The client's own limits, offered in connection.tune-ok (the smaller side wins).
CHANNEL_MAX = 2047
FRAME_MAX = 131072


class Status(enum.Enum):
    """The connection's state (see the module docstring)."""

    NEW = "new"
    AWAIT_START = "awaiting connection.start"
    AWAIT_TUNE = "awaiting connection.tune"
    AWAIT_OPEN_OK = "awaiting connection.open-ok"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"

    @property
    def in_handshake(self) -> bool:
        return self in _HANDSHAKE


_HANDSHAKE = frozenset((Status.AWAIT_START, Status.AWAIT_TUNE, Status.AWAIT_OPEN_OK))
_CLOSABLE = (Status.AWAIT_START, Status.AWAIT_TUNE, Status.AWAIT_OPEN_OK, Status.OPEN, Status.CLOSING)

#: (state, method id) -> (handler name, next state).  What is not here is a protocol violation.
TRANSITIONS: dict[tuple[Status, int], tuple[str, Status]] = {
    (Status.AWAIT_START, CONNECTION_START): ("on_start", Status.AWAIT_TUNE),
    (Status.AWAIT_TUNE, CONNECTION_TUNE): ("on_tune", Status.AWAIT_OPEN_OK),
    (Status.AWAIT_TUNE, CONNECTION_SECURE): ("on_secure", Status.AWAIT_TUNE),
    (Status.AWAIT_OPEN_OK, CONNECTION_OPEN_OK): ("on_open_ok", Status.OPEN),
    (Status.CLOSING, CONNECTION_CLOSE_OK): ("on_close_ok", Status.CLOSING),
    **{(state, CONNECTION_CLOSE): ("on_close", state) for state in _CLOSABLE},
    **{
        (state, method_id): (handler, state)
        for state in (Status.AWAIT_OPEN_OK, Status.OPEN, Status.CLOSING)
        for method_id, handler in ((CONNECTION_BLOCKED, "on_blocked"), (CONNECTION_UNBLOCKED, "on_unblocked"))
    },
}

_CHANNEL_ZERO_METHODS = frozenset(method_id for _state, method_id in TRANSITIONS)


class Handshake:
    """The machine of channel 0.  See the module docstring."""

    def __init__(
        self,
        session: Session,
        *,
        username: str,
        password: str,
        vhost: str,
        client_properties: dict[str, Any] | None,
        heartbeat: float | None,
        channel_max: int,
        frame_max: int,
        auth_mechanism: str,
        pubacks: bool | None,
    ) -> None:
        self.session = session
        self.status = Status.NEW
        self.username = username
        self.password = password
        self.vhost = vhost
        self.client_properties = client_properties
        #: asked for: seconds, 0 for none, None for the broker's proposal; then what was agreed
        self.heartbeat: float | None = heartbeat
        self.wanted_channel_max = channel_max
        self.wanted_frame_max = frame_max
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.auth_mechanism = auth_mechanism.upper()
        self.pubacks = pubacks
        self.pubacks_in_use = False
        self.server_properties: dict[str, Any] = {}
        self.blocked: str | None = None
        #: called with the reason when the broker blocks the connection, with None when it unblocks
        self.blocked_callback: Callable[[str | None], None] | None = None

    def begin(self, zero: Channel) -> None:
        """Send the protocol header; the broker answers with connection.start."""
        for method_id in _CHANNEL_ZERO_METHODS:
            zero.handlers[method_id] = self.on_method
        self.status = Status.AWAIT_START
        self.session.send(spec.PROTOCOL_HEADER)

    def on_method(self, channel: Channel, method: Any) -> None:
        """Every method on channel 0 comes here: the transition table decides."""
        entry = TRANSITIONS.get((self.status, method.method_id))
        if entry is None:
            self.session.violation("unexpected %s on channel 0 (%s)" % (method.name, self.status.value))
            return
        handler_name, next_status = entry
        self.status = next_status
        getattr(self, handler_name)(method)

    # --- the handshake ------------------------------------------------------------------------------

    def client_properties_sent(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "product": "puka",
            "version": __version__,
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

    def on_start(self, method: Any) -> None:
        session = self.session
        if (method["version_major"], method["version_minor"]) != (0, 9):
            session.violation("server speaks AMQP %d-%d" % (method["version_major"], method["version_minor"]))
            return
        self.server_properties = method["server_properties"]
        mechanisms = method["mechanisms"].split()
        mechanism = self.auth_mechanism
        if mechanism not in mechanisms:
            session.handshake_failed(
                ConnectionBroken(
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
        session.send(
            method_frame(
                0,
                M["connection.start-ok"].encode_args(self.client_properties_sent(), mechanism, response, "en_US"),
            )
        )

    def on_secure(self, method: Any) -> None:
        self.session.handshake_failed(
            ConnectionBroken("the broker asked for a SASL challenge, which puka does not support")
        )

    def on_tune(self, method: Any) -> None:
        """Agree on limits.  Heartbeats: the smaller non-zero value of both sides; 0 asked: none;
        None asked: the broker's proposal."""
        session = self.session
        server_channel_max = method["channel_max"] or 65535
        server_frame_max = method["frame_max"] or 0xFFFFFFFF
        self.channel_max = min(server_channel_max, self.wanted_channel_max or 65535)
        self.frame_max = min(server_frame_max, self.wanted_frame_max or 0xFFFFFFFF)
        if self.frame_max < spec.FRAME_MIN_SIZE:
            self.frame_max = spec.FRAME_MIN_SIZE
        session.channels.channel_max = self.channel_max
        server_heartbeat = method["heartbeat"]
        wanted = self.heartbeat
        if wanted is None:
            heartbeat = server_heartbeat
        elif not wanted:
            heartbeat = 0
        elif not server_heartbeat:
            heartbeat = int(wanted)
        else:
            heartbeat = min(int(wanted), server_heartbeat)
        if wanted and heartbeat == 0:
            heartbeat = 1
        self.heartbeat = heartbeat
        session.send(method_frame(0, M["connection.tune-ok"].encode_args(self.channel_max, self.frame_max, heartbeat)))
        session.publishing.configure(self.pubacks_in_use, self.frame_max)
        port = session.port
        port.set_frame_max(self.frame_max)
        if heartbeat:
            port.set_heartbeat(heartbeat)
        session.send(method_frame(0, M["connection.open"].encode_args(self.vhost)))

    def on_open_ok(self, method: Any) -> None:
        session = self.session
        session.port.set_deadline(None, "")
        connect = session.connect_promise
        if connect is not None:
            result = Result(self.server_properties and {"server_properties": self.server_properties})
            session.table.resolve(connect, result)
        session.on_open()

    # --- closing ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Ask the broker to close (connection.close); close-ok ends it."""
        self.status = Status.CLOSING
        self.session.send(method_frame(0, M["connection.close"].encode_args(200, "Normal shutdown", 0, 0)))

    def on_close(self, method: Any) -> None:
        """The broker closes the connection: answer, fail everything with its reason."""
        session = self.session
        try:
            session.send(method_frame(0, M["connection.close-ok"].encode_args()))
        except ConnectionBroken:
            pass
        exc = session.error_from_close(method)
        close = session.close_promise
        if self.status is Status.CLOSING and close is not None:
            # Both sides closed at once: the broker's reason wins for the rest.
            session.table.resolve(close, Result())
        session.log.warning("connection closed by the broker: %s", exc)
        # The broker's reason first: writing close-ok may fail (the broker may not wait for it).
        session.on_broken(exc)
        session.port.close_transport(ConnectionBroken("connection closed by the broker: %s" % exc), True)

    def on_close_ok(self, method: Any) -> None:
        session = self.session
        exc = ConnectionBroken("connection closed by the client")
        if session.close_promise is not None:
            session.table.resolve(session.close_promise, Result())
        session.port.close_transport(exc, False)
        session.on_broken(exc)

    # --- flow control -------------------------------------------------------------------------------

    def on_blocked(self, method: Any) -> None:
        self.blocked = method["reason"] or "blocked"
        self.session.log.warning("connection blocked by the broker: %s", self.blocked)
        if self.blocked_callback is not None:
            self.blocked_callback(self.blocked)

    def on_unblocked(self, method: Any) -> None:
        self.blocked = None
        self.session.log.info("connection unblocked")
        if self.blocked_callback is not None:
            self.blocked_callback(None)


def error_from_close(method: Any) -> exceptions.AMQPError:
    """The exception a connection.close or channel.close stands for (its reply code's class)."""
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
