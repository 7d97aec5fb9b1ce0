"""puka for threaded programs: one client shared by many threads, driven by an I/O thread.

Theory of operation: :class:`Client` is :class:`puka.Client` with a lock and
a thread of its own.  The sans-IO core stays single-threaded: every access to
it -- an application's operation, the I/O thread's reads, writes and timers --
holds the client's lock, which is never held while anyone blocks.

* ``connect()`` starts the **I/O thread** (a daemon thread named
  ``puka-io``).  It polls the socket and a wake-up socket pair, bounded by the
  core's timers (heartbeats, connection and close timeouts, the recovery's
  backoff and deadline); under the lock it reads, writes, runs the timers and
  hands results out; then it runs the callbacks, *without* the lock.  It ends
  when the connection is closed for good (``close()``, a loss recovery gives
  up on, or a loss with recovery off).
* An **operation** called from any thread (publish, declare, ack...) takes the
  lock, queues its frames and returns its promise number.  Queuing bytes
  into an empty send buffer, or anything else the I/O thread must act on (a
  result ready at once, a new socket after a reconnect), wakes the I/O thread
  through the socket pair.
* ``wait(promise)`` takes a result that is already there; otherwise it
  registers the calling thread as the promise's waiter, releases the lock and
  blocks on a lock of its own until the I/O thread hands it the result (each
  result goes to exactly one waiter).  Other threads go on meanwhile.
* **Callbacks** run on the I/O thread, one at a time, without the lock: they
  may call any method of the client.  An exception in a callback is logged (the
  ``puka`` logger) and the I/O thread goes on.  While a callback runs, nothing
  is read or written: hand long work to another thread.
* **Recovery** runs on the I/O thread too: across a reconnect the socket
  changes, the promises do not, and waiting threads keep waiting.
* **Closing**: ``close()`` works as in :class:`puka.Client`; once the connection
  is closed every pending promise has failed (so every waiting thread got its
  :exc:`~puka.ConnectionBroken`) and the I/O thread ends.  At interpreter exit,
  clients still open are closed (``atexit``, up to two seconds each) and their
  threads stopped.

For example::

    import concurrent.futures, puka.threaded

    client = puka.threaded.Client("amqp://localhost/")
    client.wait(client.connect())
    client.wait(client.queue_declare(queue="work"))

    def publish(i):
        return client.wait(client.basic_publish(exchange="", routing_key="work", body=b"%d" % i))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(publish, range(1000)))        # 1000 confirmed publishes from 8 threads
    client.wait(client.close())
"""

from __future__ import annotations

import atexit
import functools
import select
import socket
import threading
import time
import types
import weakref

from . import client as _client
from .exceptions import ConnectionBroken, PromiseFinished
from .protocol.session import log
from .transport import CLOSED, OPEN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from .promise import Callback, Promise

    #: a callback to run: promise number, callback, result, middleware delivery, waiting threads
    _Call = tuple[int, Callback, Any, Any, "list[_Waiter]"]

__all__ = ["Client"]

#: Seconds the interpreter's exit gives each open client to close (then its socket is dropped).
EXIT_CLOSE_TIMEOUT = 2.0

_poll = getattr(select, "poll", None)
_POLLIN = getattr(select, "POLLIN", 1)
_POLLOUT = getattr(select, "POLLOUT", 4)

#: Every client whose I/O thread may be running (closed at interpreter exit).
_clients: weakref.WeakSet[Client] = weakref.WeakSet()


class _Waiter:
    """A thread blocked in ``wait``: the promises it waits on, and a lock released when its result is in."""

    __slots__ = ("lock", "numbers", "result", "error")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        #: the promise numbers it is registered under (None once handed a result)
        self.numbers: tuple[int, ...] | None = None
        self.result: Any = None
        self.error: BaseException | None = None


class Client(_client.Client):
    """A :class:`puka.Client` that many threads can share, driven by an I/O thread.

    See the module docstring.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._io_lock = threading.RLock()
        self._io_owned: Callable[[], bool] = getattr(self._io_lock, "_is_owned")  # noqa: B009
        self._io_cond = threading.Condition(self._io_lock)
        self._io_thread: threading.Thread | None = None
        self._io_ident: int | None = None
        self._io_stopped = False
        self._io_wake_r: socket.socket | None = None
        self._io_wake_w: socket.socket | None = None
        #: a wake-up is on its way, or there is no I/O thread to wake
        self._io_wake_pending = True
        #: promise number -> the threads waiting on it, first come first served
        self._io_waiters: dict[int, list[_Waiter]] = {}
        #: the waiters handed a result, to wake once the lock is released
        self._io_handed: list[_Waiter] = []
        self._io_local = threading.local()
        self._io_push_back = False
        self._io_crashes = 0
        self._io_loop_generation = 0
        #: threads waiting for the I/O thread to finish a round (``_run_until``)
        self._io_round_waiters = 0
        super().__init__(*args, **kwargs)

    def __repr__(self) -> str:
        return "<puka.threaded.Client %s %s>" % (self.params.redacted_url(), self._core.describe())

    @property
    def io_thread(self) -> threading.Thread | None:
        """The I/O thread (None until ``connect()``); it has ended once the connection is closed."""
        return self._io_thread

    def _wire_core(self) -> None:
        """The current connection changed (a reconnect): the I/O thread must poll its socket."""
        super()._wire_core()
        self._transport.wakeup = self._io_wake
        self._io_wake()

    # --- waking the I/O thread ---------------------------------------------------------------------

    def _io_wake(self) -> None:
        """Make the I/O thread look again (called with the lock held; once per round is enough)."""
        if self._io_wake_pending or threading.get_ident() == self._io_ident:
            return  # woken already (or no I/O thread), or the I/O thread itself: it looks before it polls
        self._io_wake_pending = True
        try:
            self._io_wake_w.send(b"\0")  # type: ignore[union-attr]
        except OSError:
            pass  # full: it is awake already

    # --- connecting and closing -------------------------------------------------------------------

    def connect(self, callback: Callback | None = None) -> int:
        """Open the connection (as :meth:`puka.Client.connect`) and start the I/O thread."""
        with self._io_lock:
            number = super().connect(callback)
            self._io_wake_r, self._io_wake_w = socket.socketpair()
            self._io_wake_r.setblocking(False)
            self._io_wake_w.setblocking(False)
            self._io_wake_pending = False
            thread = threading.Thread(target=self._io_run, name="puka-io", daemon=True)
            self._io_thread = thread
            _clients.add(self)
            thread.start()
            self._io_ident = thread.ident
        return number

    def close(self, callback: Callback | None = None) -> int:
        """Close the connection (as :meth:`puka.Client.close`); the I/O thread ends once it is closed."""
        with self._io_lock:
            number = super().close(callback)
            self._io_wake()
        return number

    def __enter__(self) -> Client:
        super().__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._core.active:
            try:
                self.wait(self.close(), timeout=_client.CLOSE_TIMEOUT + 1)
            except ConnectionBroken:
                pass
        self._io_drop()
        self.join(_client.CLOSE_TIMEOUT)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the I/O thread to end (after ``close()``); True when it has (or never started)."""
        thread = self._io_thread
        if thread is None:
            return True
        if thread.ident != threading.get_ident():
            thread.join(timeout)
        return not thread.is_alive()

    def _io_drop(self) -> None:
        """Close the socket at once; every pending promise fails; the I/O thread ends."""
        with self._io_lock:
            self._core.drop()
            self._io_fail_session(ConnectionBroken("connection closed by the client"))
            self._io_wake()

    def _io_fail_session(self, exc: ConnectionBroken) -> None:
        """After the socket was dropped: fail what is still pending (a recovering core did already)."""
        session = self._core.current.session
        session.on_broken(exc)

    def _io_close_at_exit(self) -> None:
        """At interpreter exit: close (briefly), then drop the socket and stop the thread."""
        thread = self._io_thread
        if thread is None or not thread.is_alive():
            return
        try:
            with self._io_lock:
                if self._core.active:
                    super().close(None)
                    self._io_wake()
            thread.join(EXIT_CLOSE_TIMEOUT)
        except Exception:  # noqa: S110 - leaving anyway
            pass
        if thread.is_alive():
            try:
                self._io_drop()
            except Exception:
                pass
            thread.join(0.5)

    # --- the I/O thread ----------------------------------------------------------------------------

    def _io_run(self) -> None:
        """The I/O thread: poll, read, write, timers, hand results out, run callbacks; until closed."""
        wake_r = self._io_wake_r
        assert wake_r is not None
        wake_fd = wake_r.fileno()
        poller = _poll() if _poll is not None else None
        if poller is not None:
            poller.register(wake_fd, _POLLIN)
        polled: Any = None  # the socket polled last
        polled_fd = -1
        polled_mask = 0
        readable = writable = woken = False
        try:
            while True:
                try:
                    calls, sock, want_write, timeout = self._io_round(polled, readable, writable, woken)
                    self._io_wake_handed()
                    readable = writable = woken = False
                    if calls:
                        self._io_run_callbacks(calls)
                        self._io_wake_handed()
                        continue  # what the callbacks did is looked at before blocking
                except Exception:
                    with self._io_lock:
                        if not self._io_crashed():
                            break
                    continue
                if calls is None:
                    break  # closed for good
                if poller is None:
                    readable, writable, woken = _select(wake_r, sock, want_write, timeout)
                    polled = sock
                    continue
                if sock is not polled:
                    if polled_fd >= 0:
                        try:
                            poller.unregister(polled_fd)
                        except (KeyError, ValueError, OSError):
                            pass
                    polled = sock
                    polled_fd = sock.fileno() if sock is not None else -1
                    polled_mask = 0
                if polled_fd >= 0:
                    mask = _POLLIN | _POLLOUT if want_write else _POLLIN
                    if mask != polled_mask:
                        poller.register(polled_fd, mask)
                        polled_mask = mask
                try:
                    events = poller.poll(None if timeout is None else timeout * 1000.0)
                except InterruptedError:
                    continue
                for fd, happened in events:
                    if fd == wake_fd:
                        woken = True
                    elif fd == polled_fd:
                        # Errors and hang-ups read as readable: recv() then reports them.
                        readable = bool(happened & ~_POLLOUT)
                        writable = bool(happened & _POLLOUT)
        finally:
            self._io_stop()

    def _io_round(
        self, polled: Any, readable: bool, writable: bool, woken: bool
    ) -> tuple[list[_Call] | None, Any, bool, float | None]:
        """One round of the I/O thread, lock held: what poll() said, timers, results handed out.

        Returns the callbacks to run (None once the connection is closed for
        good), and what to poll next: the socket, whether for writing, the timeout.
        """
        with self._io_lock:
            if woken:
                self._io_wake_pending = False
                _drain_socket(self._io_wake_r)
            transport = self._transport
            if polled is not None and transport.sock is polled:
                if readable:
                    transport.on_read()
                if writable and self._transport is transport and transport.sock is polled:
                    transport.on_write()
            core = self._core
            timeout = core.on_timer()
            core.flush()
            if self._io_push_back:
                self._io_check_drained()
            calls = self._io_dispatch() if self._table.ready else []
            if self._io_waiters:
                self._io_wake_finished()
            if self._io_round_waiters:
                self._io_cond.notify_all()
            transport = self._transport
            if transport.state is CLOSED and not calls:
                return None, None, False, None
            sock = transport.sock
            want_write = sock is not None and transport.needs_write()
            if sock is not None and transport.ssl_context is not None and transport.state is OPEN and sock.pending():
                timeout = 0.0  # TLS holds decrypted bytes poll() does not see
            return calls, sock, want_write, timeout

    def _io_crashed(self) -> bool:
        """A bug hit the I/O thread: log it, drop the connection, go on to hand out the failures.

        False when it happened again: the thread gives up.
        """
        self._io_crashes += 1
        log.exception("puka.threaded: the I/O thread failed; the connection is dropped")
        if self._io_crashes > 1:
            return False
        try:
            self._core.drop()
            self._io_fail_session(ConnectionBroken("puka's I/O thread failed (see the log)"))
        except Exception:
            log.exception("puka.threaded: dropping the connection failed too")
            return False
        return True

    def _io_stop(self) -> None:
        """The I/O thread ends: wake whoever still waits."""
        with self._io_lock:
            self._io_stopped = True
            self._io_wake_pending = True  # nothing to wake any more
            error = self._io_broken()
            for waiters in list(self._io_waiters.values()):
                for waiter in list(waiters):
                    if waiter.numbers is not None:
                        self._io_hand(waiter, None, error)
            self._io_waiters.clear()
            self._io_push_back = False
            self._io_cond.notify_all()
            _clients.discard(self)
            for sock in (self._io_wake_r, self._io_wake_w):
                if sock is not None:
                    sock.close()
        self._io_wake_handed()

    def _io_broken(self) -> ConnectionBroken:
        """What a wait raises when no I/O thread will ever answer it."""
        if self._io_thread is None:
            return ConnectionBroken("not connected: call connect() first")
        try:
            self._core.check()
        except ConnectionBroken as exc:
            return exc
        return ConnectionBroken("connection closed")

    # --- handing results out (I/O thread, lock held) ----------------------------------------------

    def _io_dispatch(self) -> list[_Call]:
        """Results to their takers: callbacks (returned, to run without the lock), then waiters.

        A result that has neither stays with its promise until someone waits for it.
        """
        table = self._table
        ready = table.ready
        waiters = self._io_waiters
        chain = self._chain
        calls: list[_Call] = []
        while ready:
            promise = ready.popleft()
            if not promise.results:
                continue
            callback = promise.callback
            if callback is not None:
                result = table.take(promise)
                delivery = None
                if chain is not None and _client._is_message(result):
                    delivery = self._delivered(promise, result, "callback")
                queued = waiters.get(promise.number)
                # A thread waiting on it gets the result once the callback ran.
                takers = [self._io_unregister(w) for w in _takers(queued, promise, result)] if queued else []
                calls.append((promise.number, callback, result, delivery, takers))
                continue
            queued = waiters.get(promise.number)
            if queued:
                result = self._deliver(promise, raise_errors=False)
                for waiter in _takers(queued, promise, result):
                    self._io_hand(waiter, result, None)
        return calls

    def _io_unregister(self, waiter: _Waiter) -> _Waiter:
        """Take a waiter off the promises it waits on (its result is coming)."""
        numbers = waiter.numbers
        assert numbers is not None
        waiters = self._io_waiters
        for number in numbers:
            queued = waiters.get(number)
            if queued is not None:
                if waiter in queued:
                    queued.remove(waiter)
                if not queued:
                    del waiters[number]
        waiter.numbers = None
        return waiter

    def _io_hand(self, waiter: _Waiter, result: Any, error: BaseException | None) -> None:
        """Give a waiting thread its result (or the error to raise); it wakes once the lock is released."""
        if waiter.numbers is not None:
            self._io_unregister(waiter)
        waiter.result = result
        waiter.error = error
        self._io_handed.append(waiter)

    def _io_wake_handed(self) -> None:
        """Wake the threads handed a result (after the lock is released: they are about to take it)."""
        handed = self._io_handed
        while handed:
            handed.pop().lock.release()

    def _io_wake_finished(self) -> None:
        """Waiters on promises that ended without a result for them (a cancelled consume)."""
        promises = self._table.promises
        waiters = self._io_waiters
        for number in [n for n in waiters if n not in promises]:
            for waiter in list(waiters.get(number, ())):
                self._io_hand(waiter, None, PromiseFinished(number))

    def _io_run_callbacks(self, calls: list[_Call]) -> None:
        """Run callbacks on the I/O thread, without the lock; then hand their results to the waiters, if any."""
        for number, callback, result, delivery, takers in calls:
            try:
                callback(number, result)
            except BaseException as exc:
                log.exception("puka.threaded: the callback %r of promise %d raised", callback, number)
                if delivery is not None:
                    delivery.error = exc
            if delivery is not None or takers:
                with self._io_lock:
                    if delivery is not None:
                        self._chain.deliver_done(delivery)
                    for waiter in takers:
                        self._io_hand(waiter, result, None)

    def _run_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Block until ``condition()`` or the deadline; the I/O thread runs the connection and callbacks.

        (What ``shutdown()`` waits with; it is called with the lock held, which the wait releases.)
        """
        if threading.get_ident() == self._io_ident or self._io_thread is None:
            with self._io_lock:
                return super()._run_until(condition, deadline)
        with self._io_cond:
            self._io_round_waiters += 1
            try:
                while not condition():
                    if self._io_stopped:
                        return condition()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._io_cond.wait(min(remaining, 1.0))
                return True
            finally:
                self._io_round_waiters -= 1

    # --- push-back --------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Too much waits to be sent: application threads wait for the I/O thread to write it."""
        if self._io_thread is None or self._io_stopped or threading.get_ident() == self._io_ident:
            super()._drain()
        else:
            self._io_push_back = True  # basic_publish waits once the lock is released

    def _io_check_drained(self) -> None:
        if self._core.backlog <= _client.PUBLISH_HIGH_WATER // 2 or self._transport.state is CLOSED:
            self._io_push_back = False
            self._io_cond.notify_all()

    def _io_wait_drained(self) -> None:
        with self._io_cond:
            while self._io_push_back and not self._io_stopped:
                self._io_cond.wait(1.0)

    # --- the application's side -------------------------------------------------------------------

    def basic_publish(
        self,
        exchange: str,
        routing_key: str = "",
        body: bytes | bytearray | memoryview | str = b"",
        headers: dict[str, Any] | None = None,
        mandatory: bool = False,
        callback: Callback | None = None,
    ) -> int:
        """Publish a message, from any thread (see :meth:`puka.Client.basic_publish`)."""
        with self._io_lock:
            number = _publish(self, exchange, routing_key, body, headers, mandatory, callback)
            if self._table.ready:
                self._io_wake()
            push_back = self._io_push_back
        if push_back:
            self._io_wait_drained()
        return number

    def wait(
        self, promise_numbers: int | Iterable[int], timeout: float | None = None, raise_errors: bool = True
    ) -> Any:
        """Block the calling thread until one of the promises has a result; return it.

        As :meth:`puka.Client.wait`, but only the calling thread blocks: the I/O
        thread delivers the result.  A promise with a callback gets its result
        handed to the callback first (on the I/O thread), then to the waiting
        thread.  Raises :exc:`~puka.ConnectionBroken` when the client is not
        connected or its I/O thread has ended without a result for it.

        Called in a callback (on the I/O thread), it drives the connection
        itself, as :meth:`puka.Client.wait` does, and no other callback runs
        meanwhile.
        """
        if threading.get_ident() == self._io_ident or self._io_owned():
            with self._io_lock:
                return super().wait(promise_numbers, timeout, raise_errors)
        with self._io_lock:
            table = self._table
            if promise_numbers.__class__ is int:
                promise = table.promises.get(promise_numbers)
                if promise is None:
                    promise = self._lookup(promise_numbers)
                if promise.results and promise.callback is None:
                    return self._deliver(promise, raise_errors)
                numbers: tuple[int, ...] = (promise.number,)
            else:
                promises = tuple(self._lookup(n) for n in promise_numbers)  # type: ignore[union-attr]
                if not promises:
                    raise ValueError("wait() needs at least one promise")
                for promise in promises:
                    if promise.results and promise.callback is None:
                        return self._deliver(promise, raise_errors)
                numbers = tuple(promise.number for promise in promises)
            if self._io_stopped or self._io_thread is None:
                raise self._io_broken()
            waiter: _Waiter | None = getattr(self._io_local, "waiter", None)
            if waiter is None:
                waiter = self._io_local.waiter = _Waiter()
            waiter.numbers = numbers
            waiters = self._io_waiters
            for number in numbers:
                queued = waiters.get(number)
                if queued is None:
                    waiters[number] = [waiter]
                else:
                    queued.append(waiter)
            if self._table.ready:
                self._io_wake()  # results for callbacks first
        if timeout is None:
            waiter.lock.acquire()
        elif not waiter.lock.acquire(True, max(0.0, timeout)):
            with self._io_lock:
                if waiter.numbers is not None:  # still waiting: give up
                    for number in waiter.numbers:
                        queued = self._io_waiters.get(number)
                        if queued is not None:
                            queued.remove(waiter)
                            if not queued:
                                del self._io_waiters[number]
                    waiter.numbers = None
                    return None
            waiter.lock.acquire()  # handed out just in time: released already
        result, error = waiter.result, waiter.error
        waiter.result = waiter.error = None
        if error is not None:
            raise error
        if raise_errors and result.is_error:
            raise result.exception.with_traceback(None)
        return result

    def loop(self, timeout: float | None = None) -> None:
        """Block the calling thread until ``loop_break()`` or ``timeout`` seconds (callbacks run on the I/O thread).

        Raises :exc:`~puka.ConnectionBroken` when the connection ends first.
        Results of promises without a callback are kept (for ``wait``), not dropped.
        """
        if threading.get_ident() == self._io_ident:
            raise RuntimeError("loop() cannot run on the I/O thread (in a callback): it would wait for itself")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._io_cond:
            generation = self._io_loop_generation
            while generation == self._io_loop_generation:
                if self._io_stopped or self._io_thread is None:
                    raise self._io_broken()
                if deadline is None:
                    self._io_cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._io_cond.wait(remaining)

    def loop_break(self) -> None:
        """Make every running ``loop()`` return (from any thread, or a callback)."""
        with self._io_cond:
            self._io_loop_generation += 1
            self._io_cond.notify_all()

    def run_any_callbacks(self) -> None:
        """Nothing to do: callbacks run on the I/O thread as results arrive."""

    def set_callback(self, promise_number: int, callback: Callback | None) -> None:
        """Set (or clear) the callback of a pending promise; results already there go to it."""
        with self._io_lock:
            promise = self._lookup(promise_number)
            promise.callback = callback
            if callback is not None and promise.results:
                self._table.ready.extend([promise] * len(promise.results))
                self._io_wake()


_publish = _client.Client.basic_publish

#: Methods of puka.Client that Client does not wrap: they call the wrapped ones.
_UNLOCKED = frozenset(("wait_for_all", "wait_for_any"))


def _locked(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(self: Client, *args: Any, **kwargs: Any) -> Any:
        with self._io_lock:
            try:
                return method(self, *args, **kwargs)
            finally:
                self._io_wake()  # it may have queued bytes, armed a timer, made a result ready...

    return locked


def _wrap_the_other_methods() -> None:
    """Every other public method of puka.Client (and of its bases) runs with the lock held: operations only
    queue bytes.  A blocking method added to puka.Client needs its own version here (as wait and loop have)."""
    names = {name for base in _client.Client.__mro__[:-1] for name in vars(base)}
    for name in sorted(names):
        if name.startswith("_") or name in _UNLOCKED or name in vars(Client):
            continue
        member = next(vars(base)[name] for base in _client.Client.__mro__ if name in vars(base))
        if isinstance(member, types.FunctionType):  # not properties (they read one attribute)
            setattr(Client, name, _locked(name, member))


_wrap_the_other_methods()


def _takers(queued: list[_Waiter], promise: Promise, result: Any) -> list[_Waiter]:
    """Who gets a result: the first waiter; every waiter when it is the failure that ends the promise."""
    if result.is_error and promise.final and not promise.results:
        return list(queued)
    return queued[:1]


def _drain_socket(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def _select(wake: socket.socket, sock: Any, want_write: bool, timeout: float | None) -> tuple[bool, bool, bool]:
    """The I/O thread's wait where there is no poll() (Windows): (readable, writable, woken)."""
    readers: list[Any] = [wake] if sock is None else [wake, sock]
    try:
        r, w, _x = select.select(readers, [sock] if want_write and sock is not None else [], [], timeout)
    except (InterruptedError, ValueError, OSError):
        return False, False, False
    return sock in r if sock is not None else False, bool(w), wake in r


@atexit.register
def _close_all_at_exit() -> None:
    for client in list(_clients):
        client._io_close_at_exit()
