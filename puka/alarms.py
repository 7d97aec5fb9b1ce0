"""Alarms: deadlines set by the layers above the transport (RPC time-outs).

Theory of operation: an :class:`Alarms` is a heap of (when, order, action)
shared by every transport a client uses (it outlives a connection, as the
promises do).  The transport bounds its poll by the earliest alarm and fires
the due ones with its own timers; a recovering core fires them while no
transport runs.  Cancelling an alarm only blanks its action: the entry is
dropped when it reaches the top of the heap.
"""

from __future__ import annotations

import heapq

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class Alarms:
    """A heap of deadlines.  See the module docstring."""

    __slots__ = ("heap", "order")

    def __init__(self) -> None:
        self.heap: list[list[Any]] = []
        self.order = 0

    def __bool__(self) -> bool:
        return bool(self.heap)

    def add(self, when: float, action: Callable[[], None]) -> list[Any]:
        """Call ``action()`` once monotonic time ``when`` has passed; returns a handle for cancel()."""
        self.order += 1
        entry = [when, self.order, action]
        heapq.heappush(self.heap, entry)
        return entry

    @staticmethod
    def cancel(entry: list[Any]) -> None:
        entry[2] = None

    def next_due(self) -> float | None:
        """When the earliest alarm is due (None: none set)."""
        heap = self.heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire(self, now: float) -> None:
        """Run every alarm due at ``now``, earliest first."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            action = heapq.heappop(heap)[2]
            if action is not None:
                action()
