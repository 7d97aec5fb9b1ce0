"""Promises and their results.

Theory of operation: every operation of the client returns a promise number.
The :class:`Promise` behind it collects results as the broker answers: most
promises get exactly one (``final``); a consume promise gets one per delivered
message, and an error result when it ends by failure (a basic_cancel ends it
without a result).  A promise with results waiting is queued
in the session's ``ready`` deque; ``wait``/``loop`` take results from there,
run the user's callback and, once a final promise has handed out everything,
forget it (and give back its channel).

Results are dicts, as in puka: a method's fields (``queue.declare-ok`` ->
``{'queue': ..., 'message_count': ..., 'consumer_count': ...}``), a message
(fields + ``body`` + ``headers``), or an :class:`ErrorResult` whose
``is_error`` is True and whose ``exception`` is what ``wait`` raises.

A Promise has ``__slots__`` and holds no list until it has a result, so a
hundred thousand publishes in flight cost a few hundred bytes each.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Callback = Callable[[int, Any], Any]


class Result(dict):  # type: ignore[type-arg]
    """A promise's result: a dict of what the broker said."""

    __slots__ = ()
    is_error = False
    exception: BaseException | None = None

    def __repr__(self) -> str:
        return "<%s %s>" % (type(self).__name__, dict.__repr__(self))


class ErrorResult(Result):
    """A failed promise's result; ``exception`` is raised by ``wait``."""

    __slots__ = ("exception",)
    is_error = True

    def __init__(self, exception: BaseException, fields: dict[str, Any] | None = None) -> None:
        super().__init__(fields or ())
        self.exception = exception
        if hasattr(exception, "result") and getattr(exception, "result", None) is None:
            try:
                exception.result = self
            except AttributeError:
                pass

    def __repr__(self) -> str:
        return "<ErrorResult %r %s>" % (self.exception, dict.__repr__(self))


class Promise:
    """One operation's state: results waiting, callback, channel, machine data."""

    __slots__ = ("number", "callback", "channel", "results", "final", "tag", "state", "on_release", "held", "observer")

    def __init__(self, number: int, callback: Callback | None = None) -> None:
        self.number = number
        self.callback = callback
        self.channel: Any = None
        #: results waiting to be taken (None until there is one; a deque for streams)
        self.results: Any = None
        #: no more results will come
        self.final = False
        #: delivery tag on the publish channel (publishes only)
        self.tag: int | None = None
        #: machine-specific state
        self.state: Any = None
        #: called once when the promise is forgotten
        self.on_release: Callable[[Promise], None] | None = None
        #: messages of this promise not yet acknowledged (keep the channel)
        self.held = 0
        #: called with (promise, result) when the final result arrives (middleware)
        self.observer: Callable[[Promise, Any], None] | None = None

    def __repr__(self) -> str:
        return "<Promise %d%s%s>" % (
            self.number,
            " final" if self.final else "",
            " ready" if self.results else "",
        )
