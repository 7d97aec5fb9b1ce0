"""What the layer above hears from a recovering core."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class RecoveryListener:
    """What the layer above hears from a RecoveringCore (all optional)."""

    def switched(self) -> None:
        """Another Core (transport) is now current."""

    def lost(self, exc: BaseException) -> None:
        """The open connection was lost; recovery begins."""

    def recovered(self, info: dict[str, Any]) -> None:
        """Recovery is complete (``host``, ``outage_seconds``, ``republished``, ``renamed``, ``attempts``)."""
