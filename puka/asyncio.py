"""puka on an asyncio event loop: the same client, awaitable promises, no threads.

Theory of operation: :class:`Client` is :class:`puka.Client` whose socket is
watched by the running loop (``add_reader``; ``add_writer`` only while there
is something to write) instead of by ``select`` in ``wait``/``loop``.  Every
operation still returns a promise number at once.  Then:

* ``await client.wait_async(promise)`` gives its result (or raises its error);
* ``async for message in client.messages(consume_promise)`` iterates deliveries;
* ``callback=`` functions run on the loop as results arrive.

Data queued by any operation wakes the adapter (``Transport.wakeup``), which
writes it on the next loop iteration, so many publishes issued in one go are
written together.  Heartbeats and timeouts run from ``loop.call_later``.

The OpenTelemetry context flows as with any code on the loop: a span started
before an ``await`` is current when the task calls ``basic_publish`` again,
so it is the parent of the publish span.  For example::

    import asyncio, puka.asyncio

    async def main():
        client = puka.asyncio.Client("amqp://localhost/")
        await client.connect_async()
        q = (await client.wait_async(client.queue_declare(exclusive=True)))["queue"]
        promises = [client.basic_publish(exchange="", routing_key=q, body=b"hi") for _ in range(100)]
        await client.wait_all_async(promises)
        await client.close_async()

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio

from . import client as _client
from .exceptions import ConnectionBroken, PromiseFinished
from .protocol.handshake import Status
from .transport import CLOSED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from typing import Any

    from .promise import Promise


class Client(_client.Client):
    """A :class:`puka.Client` driven by an asyncio loop.  See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._writing = False
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[int, list[asyncio.Future[Any]]] = {}
        self._watch_transport()

    def _watch_transport(self) -> None:
        transport = self._transport
        transport.wakeup = self._wakeup

        def before_close() -> None:
            # Unwatch the fd while it is still valid (asyncio cannot unregister a closed one).
            if self._transport is transport:
                self._detach()

        transport.before_close = before_close

    def _wire_core(self) -> None:
        """A recovery made another connection current: watch its socket instead."""
        super()._wire_core()
        if not hasattr(self, "_waiters"):
            return  # still in __init__
        self._watch_transport()
        if self._loop is not None:
            self._detach()
            self._attach_socket()

    # --- attaching to the loop ---------------------------------------------------------------

    def connect(self, callback: Any = None) -> int:
        """Start connecting; the socket is watched by the running loop from now on."""
        number = super().connect(callback)
        self._attach()
        return number

    async def connect_async(self) -> Any:
        """Connect and wait for the handshake to finish."""
        return await self.wait_async(self.connect())

    async def close_async(self) -> Any:
        """Close and wait for the broker to confirm (or the close timeout)."""
        number = self.close()
        try:
            return await self.wait_async(number)
        finally:
            self._detach()

    async def __aenter__(self) -> Client:
        if self._core.session.connect_promise is None:
            await self.connect_async()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        status = self._core.status
        if status is Status.OPEN or status.in_handshake:
            try:
                await asyncio.wait_for(self.close_async(), _client.CLOSE_TIMEOUT + 1)
            except (ConnectionBroken, asyncio.TimeoutError):
                pass
        self._detach()
        self._core.drop()

    def _attach(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._attach_socket()

    def _attach_socket(self) -> None:
        loop = self._loop
        assert loop is not None
        if self._transport.state is CLOSED:
            loop.call_soon(self._dispatch)
            return
        if self._transport.sock is not None:
            self._fd = self._transport.fileno()
            loop.add_reader(self._fd, self._on_readable)
            self._update_writer()
        self._schedule_timer()

    def _detach(self) -> None:
        loop, fd = self._loop, self._fd
        self._fd = None
        if loop is not None and fd is not None and not loop.is_closed():
            loop.remove_reader(fd)
            if self._writing:
                loop.remove_writer(fd)
        self._writing = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- events ---------------------------------------------------------------------------------

    def _wakeup(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._core.flush()
        self._after_io()

    def _on_readable(self) -> None:
        self._transport.on_read()
        self._after_io()

    def _on_writable(self) -> None:
        self._transport.on_write()
        self._after_io()

    def _on_timer(self) -> None:
        self._timer = None
        self._after_io()

    def _after_io(self) -> None:
        if self._transport.state is CLOSED and self._core.error is not None:
            self._detach()
        else:
            self._update_writer()
            self._schedule_timer()
        self._dispatch()

    def _update_writer(self) -> None:
        if self._fd is None or self._loop is None:
            return
        wanted = self._transport.needs_write()
        if wanted and not self._writing:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        elif not wanted and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _schedule_timer(self) -> None:
        """Run the timers that are due; arm the loop for the next (heartbeats, deadlines, recovery)."""
        loop = self._loop
        if loop is None:
            return
        delay = self._core.on_timer()
        if delay is None:
            return
        when = loop.time() + max(delay, 0.001)
        timer = self._timer
        if timer is not None:
            if timer.when() <= when + 0.001:
                return
            timer.cancel()
        self._timer = loop.call_later(max(delay, 0.001), self._on_timer)

    def _dispatch(self) -> None:
        """Hand results over: callbacks run, awaiting tasks are woken, the rest waits.

        A woken task takes its result itself when it resumes (see wait_async): a task
        cancelled before it resumes leaves the result to the next waiter, as
        ``asyncio.Queue.get`` does.
        """
        ready = self._table.ready
        if not ready:
            return
        waiters = self._waiters
        kept = []
        while ready:
            promise = ready.popleft()
            if not promise.results:
                continue
            if promise.callback is not None:
                self._run_callback(promise)
                continue
            futures = waiters.get(promise.number)
            woken = False
            while futures:
                future = futures.pop(0)
                if not future.done():
                    future.set_result(None)
                    woken = True
                    break
            if not futures:
                waiters.pop(promise.number, None)
            if not woken:
                kept.append(promise)
        ready.extend(kept)
        self._wake_finished()

    def _wake_finished(self) -> None:
        """Waiters on promises that ended without a result for them (a cancelled consume)."""
        promises = self._table.promises
        for number in [n for n in self._waiters if n not in promises]:
            for future in self._waiters.pop(number):
                if not future.done():
                    future.set_exception(PromiseFinished(number))

    def _run_callback(self, promise: Promise) -> None:
        self._deliver(promise, raise_errors=False)

    # --- awaiting -------------------------------------------------------------------------------

    async def wait_async(self, promise: int, timeout: float | None = None, raise_errors: bool = True) -> Any:
        """The promise's result, once it has one.  None when ``timeout`` seconds pass first.

        The result is taken when the awaiting task resumes: cancelling the task
        never loses it (the next waiter, or the next call, gets it).
        """
        found = self._lookup(promise)
        if found.results:
            return self._deliver(found, raise_errors)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waiters = self._waiters
        while True:
            future: asyncio.Future[None] = loop.create_future()
            waiters.setdefault(promise, []).append(future)
            self._dispatch()
            try:
                if deadline is None:
                    await future
                else:
                    remaining = deadline - loop.time()
                    if remaining > 0:
                        await asyncio.wait((future,), timeout=remaining)
                    if not future.done():
                        return None
            except asyncio.CancelledError:
                if future.done() and not future.cancelled() and future.exception() is None:
                    # Woken for a result, cancelled before taking it: it waits for the next taker.
                    self._table.ready.append(found)
                    loop.call_soon(self._dispatch)
                raise
            finally:
                futures = waiters.get(promise)
                if futures is not None and future in futures:
                    futures.remove(future)
                    if not futures:
                        del waiters[promise]
            future.result()  # PromiseFinished: the promise ended without a result for this waiter
            if found.results:
                return self._deliver(found, raise_errors)
            if promise not in self._table.promises:
                raise PromiseFinished(promise)
            # Another taker was first (a callback set meanwhile, another task): wait again.

    async def wait_all_async(self, promises: Iterable[int], raise_errors: bool = True) -> list[Any]:
        """The results of several promises, in order."""
        return [await self.wait_async(p, raise_errors=raise_errors) for p in promises]

    async def messages(self, consume_promise: int) -> AsyncIterator[Any]:
        """Iterate the messages of a consume promise until it ends (basic_cancel, queue deleted...)."""
        while consume_promise in self._table.promises:
            try:
                yield await self.wait_async(consume_promise)
            except PromiseFinished:
                return
