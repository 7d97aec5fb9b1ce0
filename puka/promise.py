"""Promises, their results, and the table that holds them.

Theory of operation: every operation of the client returns a promise number.
The :class:`Promise` behind it collects results as the broker answers: most
promises get exactly one (``final``); a consume promise gets one per delivered
message, and an error result when it ends by failure (a basic_cancel ends it
without a result).

The :class:`PromiseTable` owns the promises of a client: it hands out the
numbers, keeps the ``ready`` queue (a promise appears there once per result
waiting), and forgets a promise once it is final, has handed out every result
and holds no unacknowledged message.  The table knows nothing of channels or
connections: it outlives any one connection, so a layer above the protocol
core can keep promises alive across a reconnect.  Whoever needs to know when
a promise is forgotten (to give its channel back) sets ``on_forget``.

Results are dicts, as in puka: a method's fields (``queue.declare-ok`` ->
``{'queue': ..., 'message_count': ..., 'consumer_count': ...}``), a message
(fields + ``body`` + ``headers``), or an :class:`ErrorResult` whose
``is_error`` is True and whose ``exception`` is what ``wait`` raises.

A Promise has ``__slots__`` and holds no list until it has a result, so a
hundred thousand publishes in flight cost a few hundred bytes each.
"""

from __future__ import annotations

import enum
from collections import deque

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


class Kind(enum.Enum):
    """What a promise stands for (decides how the protocol core treats it)."""

    CONNECT = "connect"
    CLOSE = "close"
    #: a synchronous method on a pooled channel (declare, bind, purge...)
    CALL = "call"
    PUBLISH = "publish"
    CONSUME = "consume"
    GET = "get"
    #: basic_qos / basic_cancel of a consume
    CONSUME_CONTROL = "consume-control"
    #: the client's own work (topology replay): resolved through ``observer``, never queued in ``ready``
    INTERNAL = "internal"
    #: an rpc_call: resolved by its reply (not tied to a channel)
    RPC = "rpc"


class Promise:
    """One operation's state: results waiting, callback, channel, machine data."""

    __slots__ = (
        "number",
        "callback",
        "kind",
        "channel",
        "results",
        "final",
        "tag",
        "request",
        "consume",
        "held",
        "observer",
        "traced",
        "properties",
        "body",
    )
    properties: bytes
    body: Any

    def __init__(self, number: int, callback: Callback | None = None, kind: Kind = Kind.CALL) -> None:
        self.number = number
        self.callback = callback
        self.kind = kind
        #: the protocol channel serving it (pooled operations, consumes, gets)
        self.channel: Any = None
        #: results waiting to be taken (None until there is one; a deque for streams)
        self.results: Any = None
        #: no more results will come
        self.final = False
        #: delivery tag on the publish channel (publishes only)
        self.tag: int | None = None
        #: what the operation asks (enough to run it again on another connection)
        self.request: Any = None
        #: the consume's state (consumers, ack mode...), for Kind.CONSUME only
        self.consume: Any = None
        #: messages of this promise not yet acknowledged (keep the channel)
        self.held = 0
        #: called with (promise, result) when the final result arrives (middleware)
        self.observer: Callable[[Promise, Any], None] | None = None
        #: what the middleware chain keeps about it until it ends (see Chain.publish; a GetOperation)
        self.traced: Any = None
        # ``properties`` and ``body`` (encoded properties, body) are set only on publishes kept
        # for sending again after a recovery (their ``request`` is the encoded basic.publish).

    def __repr__(self) -> str:
        return "<Promise %d %s%s%s>" % (
            self.number,
            self.kind.value,
            " final" if self.final else "",
            " ready" if self.results else "",
        )


def _nothing(promise: Promise) -> None:
    pass


class PromiseTable:
    """The promises of one client, outliving any one connection.  See the module docstring."""

    __slots__ = ("promises", "ready", "compact_at", "next_number", "on_forget")

    def __init__(self) -> None:
        #: number -> promise, for every promise not yet forgotten
        self.promises: dict[int, Promise] = {}
        #: promises with results waiting, once per result (stale entries are skipped)
        self.ready: deque[Promise] = deque()
        self.compact_at = 4096
        self.next_number = 1
        #: called when a promise is forgotten (the protocol core gives its channel back)
        self.on_forget: Callable[[Promise], None] = _nothing

    def new(self, callback: Callback | None = None, kind: Kind = Kind.CALL) -> Promise:
        number = self.next_number
        self.next_number = number + 1
        promise = Promise(number, callback, kind)
        self.promises[number] = promise
        return promise

    def resolve(self, promise: Promise, result: Any) -> None:
        """Give a promise its final result (a second one is ignored)."""
        if promise.final:
            return
        promise.final = True
        if promise.kind is Kind.INTERNAL:
            self.forget(promise)
            promise.observer(promise, result)  # type: ignore[misc]
            return
        if promise.results is None:
            promise.results = [result]
        else:
            promise.results.append(result)
        self.ready.append(promise)
        if promise.observer is not None:
            promise.observer(promise, result)

    def fail(self, promise: Promise, exc: BaseException, fields: dict[str, Any] | None = None) -> None:
        self.resolve(promise, ErrorResult(exc, fields))

    def push(self, promise: Promise, result: Any) -> None:
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
            if self.promises.pop(promise.number, None) is not None:  # forget(promise), inline
                self.on_forget(promise)
        return result

    def forget(self, promise: Promise) -> None:
        if self.promises.pop(promise.number, None) is not None:
            self.on_forget(promise)

    def end_quietly(self, promise: Promise) -> None:
        """A promise ends without a (further) result (a cancelled consume)."""
        promise.final = True
        if not promise.results and not promise.held:
            self.forget(promise)

    def compact_ready(self) -> None:
        """Drop stale entries from ``ready`` (results that ``wait`` took directly), in place."""
        kept: list[Promise] = []
        counts: dict[int, int] = {}
        for promise in self.ready:
            results = promise.results
            if results:
                seen = counts.get(promise.number, 0)
                if seen < len(results):
                    counts[promise.number] = seen + 1
                    kept.append(promise)
        self.ready.clear()
        self.ready.extend(kept)
        self.compact_at = max(4096, 2 * len(kept))

    def unfinished(self) -> list[Promise]:
        """The promises still waiting for their final result, oldest first."""
        return [promise for promise in self.promises.values() if not promise.final]
