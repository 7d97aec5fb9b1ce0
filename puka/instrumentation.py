"""Hooks that add middleware to every client made while they are installed.

Auto-instrumentation (``puka.tracing.otel.PukaInstrumentor``, used by
``opentelemetry-instrument``) registers a hook here instead of patching the
client: :class:`puka.Client` passes its middleware list through every hook
when it is made.  This module imports nothing, so neither side imports the
other.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    MiddlewareHook = Callable[[list[Any]], list[Any]]

#: Installed hooks, applied in order to the middleware list of each new client.
CLIENT_MIDDLEWARE_HOOKS: list[MiddlewareHook] = []


def install(hook: MiddlewareHook) -> None:
    """Apply ``hook`` to the middleware of every client made from now on (once, however often installed)."""
    if hook not in CLIENT_MIDDLEWARE_HOOKS:
        CLIENT_MIDDLEWARE_HOOKS.append(hook)


def uninstall(hook: MiddlewareHook) -> None:
    """Stop applying ``hook`` to new clients."""
    if hook in CLIENT_MIDDLEWARE_HOOKS:
        CLIENT_MIDDLEWARE_HOOKS.remove(hook)


def middleware_for_new_client(middleware: list[Any]) -> list[Any]:
    """The middleware a new client gets: its own, passed through every installed hook."""
    for hook in CLIENT_MIDDLEWARE_HOOKS:
        middleware = hook(middleware)
    return middleware
