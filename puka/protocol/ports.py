"""The typed boundary the protocol core writes to.

Theory of operation: the protocol core (:class:`~puka.protocol.session.Session`)
never touches a socket, a clock or a timer.  Everything it needs from below
goes through one :class:`Port`: bytes to send, the heartbeat interval and frame
size agreed in the handshake, a deadline to arm (the handshake's), a request
to close the transport, and a nudge when deferred output (acks) is waiting.
The transport-owning core (:mod:`puka.core`) implements it over a real
socket; tests implement it with a list (:class:`RecordingPort`).
"""

from __future__ import annotations

from typing import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..exceptions import ConnectionBroken
    from ..framing import Buffer


class Port(Protocol):
    """What the protocol core needs from the layer below it."""

    def send(self, data: Buffer) -> None:
        """Queue bytes for the peer."""

    def send_many(self, buffers: list[Buffer]) -> None:
        """Queue several buffers (the frames of one message), in order."""

    def set_heartbeat(self, interval: float) -> None:
        """The heartbeat interval agreed with the broker (seconds; called only when not 0)."""

    def set_frame_max(self, frame_max: int) -> None:
        """The largest frame agreed with the broker: refuse larger inbound frames."""

    def set_deadline(self, when: float | None, why: str) -> None:
        """Arm (``when`` in monotonic seconds) or disarm (None) a deadline that ends the connection."""

    def close_transport(self, exc: ConnectionBroken, flush: bool) -> None:
        """Close the transport now (after a best-effort flush when ``flush``); later sends raise ``exc``."""

    def request_flush(self) -> None:
        """Deferred output (acks) is waiting: an event loop should schedule a write."""


class RecordingPort:
    """A :class:`Port` that records what the core does (for driving the core without a socket)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.heartbeat: float | None = None
        self.frame_max: int | None = None
        self.deadline: tuple[float | None, str] | None = None
        self.closed: ConnectionBroken | None = None
        self.flush_requests = 0

    def send(self, data: Buffer) -> None:
        if self.closed is not None:
            raise self.closed
        self.sent.append(bytes(data))

    def send_many(self, buffers: list[Buffer]) -> None:
        for data in buffers:
            self.send(data)

    def set_heartbeat(self, interval: float) -> None:
        self.heartbeat = interval

    def set_frame_max(self, frame_max: int) -> None:
        self.frame_max = frame_max

    def set_deadline(self, when: float | None, why: str) -> None:
        self.deadline = (when, why)

    def close_transport(self, exc: ConnectionBroken, flush: bool) -> None:
        if self.closed is None:
            self.closed = exc

    def request_flush(self) -> None:
        self.flush_requests += 1
