"""A recovering core: one connection at a time, the promises carried across.

Theory of operation: a :class:`RecoveringCore` offers the client what a
:class:`~puka.core.Core` offers, and holds one Core at a time (``current``),
all of them serving the same :class:`~puka.promise.PromiseTable`.  Its state
(:class:`RecoveryState`)::

    CONNECTING --open--> OPEN --lost--> WAITING --backoff over--> RECONNECTING
        --handshake done--> REPLAYING --topology and consumers back--> OPEN
    CONNECTING --lost, hosts left--> CONNECTING (next host) ; --no host left--> CLOSED
    WAITING / RECONNECTING / REPLAYING --lost--> WAITING (next host, next backoff)
    any --close(), deadline passed, a loss the application caused--> CLOSED

When a Core's session loses its connection it offers its unfinished promises
(``Session.takeover``).  The first connect takes them only to try the next
host.  After that, unless recovery is off or the loss was caused by the
application (a ``connection.close`` naming one of its methods, refused
credentials), they are carried to a new Core, made at once and *gated*: until
the replay is done, only the recovery's own operations run on it.

* Every message held on the lost channels is *stale*: settling it later does
  nothing on the wire (the broker redelivers it) and is counted.
* Short operations, gets and controls that may safely run again (not sent, or
  idempotent) are submitted to the new Core; the others fail with
  :class:`~puka.exceptions.OperationInterrupted`.  A pending basic_qos sets the
  consume's new window; a pending basic_cancel ends the consume.
* Unconfirmed publishes are re-sent, in order, ahead of any new publish
  (``republish``), or fail with ConnectionBroken.  With ``nack_retry``, a
  publish the broker nacks stays pending and the connection is abandoned, so
  it is re-sent the same way (on the next host; the backoff is not reset by
  such a recovery), until it has been nacked for ``nack_retry`` seconds.
* Operations made during the outage queue on the new Core behind all that
  (push-back still applies).

Once the new connection is open, the replay runs in dependency order --
exchanges, queues (a server-named queue gets a new name, which its bindings,
consumers and default-exchange publishes follow; a 405 RESOURCE_LOCKED or 404
"home node down" is retried for ``locked_retry`` seconds), exchange bindings,
queue bindings, then the consumers -- and the gate opens when every consume-ok
has arrived.  A failure to restore a queue fails the consumes that depend on
it.  When the outage outlasts ``deadline``, everything pending fails with
ConnectionBroken naming the hosts tried and the time spent.
"""

from __future__ import annotations

import enum
import time

from ..exceptions import AMQPError, ConnectionBroken, OperationInterrupted
from ..promise import ErrorResult, Kind, Result
from ..protocol.handshake import Status
from ..protocol.session import Call
from .listener import RecoveryListener
from .policy import Backoff, HostRotation
from .topology import Topology

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Sequence
    from typing import Any

    from ..core import Core
    from ..promise import Callback, Promise, PromiseTable
    from ..protocol.session import Session
    from ..urls import ConnectionParameters
    from .policy import Recovery

#: reply codes of a connection.close that end recovery: the broker refuses this client
_REFUSED = frozenset((403, 530))
#: seconds between retries of a locked or homeless queue during the replay
_LOCKED_RETRY_INTERVAL = 0.1


class RecoveryState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    WAITING = "waiting to reconnect"
    RECONNECTING = "reconnecting"
    REPLAYING = "restoring topology"
    CLOSED = "closed"


_OUTAGE = (RecoveryState.WAITING, RecoveryState.RECONNECTING, RecoveryState.REPLAYING)
_OPEN = RecoveryState.OPEN


class RecoveringCore:
    """One connection at a time, promises carried across.  See the module docstring."""

    def __init__(
        self,
        hosts: Sequence[ConnectionParameters],
        table: PromiseTable,
        recovery: Recovery | None,
        make_core: Callable[[ConnectionParameters, bool], Core],
        connection_timeout: float,
        log: Any,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.recovery = recovery
        self.make_core = make_core
        self.connection_timeout = connection_timeout
        self.log = log
        self.rotation = HostRotation(hosts, rng)
        self.backoff = Backoff.for_recovery(recovery, rng) if recovery is not None else None
        self.topology = Topology()
        #: old name -> new name of server-named queues (shared by every Core's publishing)
        self.renamed: dict[str, str] = {}
        #: current name -> the earlier names ``renamed`` maps to it
        self._renamed_from: dict[str, list[str]] = {}
        #: id(message) -> (promise, message): messages held on a lost connection
        self.stale: dict[int, tuple[Promise, Any]] = {}
        #: settlements of stale messages (done nothing on the wire)
        self.stale_settlements = 0
        self.listeners: list[RecoveryListener] = []
        #: one round of the event loop: the current core's own while open (the hot path), else
        #: the recovery's (attempts, retries, deadline); set with the state
        self.io_step: Callable[[float | None], None] = self._io_step_recovering
        self._state = RecoveryState.CONNECTING
        self.error: BaseException | None = None
        self.closing = False
        self._first_round = self.rotation.first_round()
        self.host = self._first_round.pop(0)
        self._connect_promise: Promise | None = None
        self._attempt_at: float | None = None
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._outage_started = 0.0
        self._attempts = 0
        self._last_error: BaseException | None = None
        self._republished = 0
        self._renamed_now: dict[str, str] = {}
        self._restoring: list[Promise] = []
        #: promise number -> when the broker first nacked it (nack_retry)
        self._nacked: dict[int, float] = {}
        #: the last loss was a connection abandoned for a nacked publish: the backoff goes on growing
        self._nack_loss = False
        self.current: Core = self._install(make_core(self.host, False))

    # --- the current Core ----------------------------------------------------------------------------

    @property
    def state(self) -> RecoveryState:
        return self._state

    @state.setter
    def state(self, state: RecoveryState) -> None:
        self._state = state
        self.io_step = self.current.io_step if state is _OPEN else self._io_step_recovering

    def _install(self, core: Core) -> Core:
        self.current = core
        self.state = self._state  # io_step follows the new core
        self.transport = core.transport
        self.session: Session = core.session
        self.publishing = core.publishing
        self.consuming = core.consuming
        self.handshake = core.handshake
        self.flush = core.flush  # type: ignore[method-assign]
        session = core.session
        session.takeover = self._on_lost
        # Until the first connection opens, nothing was sent: everything can move to the next host.
        first = self.state is RecoveryState.CONNECTING
        core.publishing.keep_for_resend = first or (self.recovery is not None and self.recovery.republish)
        if self.recovery is not None:
            session.call_observer = self._on_call_done
            core.publishing.renamed = self.renamed
            core.consuming.on_unknown_settlement = self._on_unknown_settlement
            if self.recovery.nack_retry and self.recovery.republish:
                core.publishing.on_nacked = self._on_nacked
        for listener in self.listeners:
            listener.switched()
        return core

    @property
    def status(self) -> Status:
        if self.state in _OUTAGE:
            return Status.OPEN
        return self.current.status

    @property
    def active(self) -> bool:
        """A close() has something to close."""
        return self.state is not RecoveryState.CLOSED and (
            self.state in _OUTAGE or self.current.status is Status.OPEN or self.current.status.in_handshake
        )

    def describe(self) -> str:
        if self.state in _OUTAGE:
            return self.state.value
        return self.current.status.value

    def check(self) -> Session:
        if self.error is not None:
            raise self.error if isinstance(self.error, ConnectionBroken) else self.session.broken_error()
        return self.current.check()

    # --- connecting and closing -----------------------------------------------------------------------

    def connect(self, callback: Callback | None, timeout: float, where: str) -> Promise:
        promise = self.current.connect(callback, timeout, self.host.redacted_url())
        promise.observer = self._on_first_open
        self._connect_promise = promise
        return promise

    def _on_first_open(self, promise: Promise, result: Any) -> None:
        promise.observer = None
        if not result.is_error:
            self.state = RecoveryState.OPEN
            self.rotation.connected(self.host)
            recovery = self.recovery
            self.current.publishing.keep_for_resend = recovery is not None and recovery.republish

    def close(self, callback: Callback | None, timeout: float) -> Promise:
        self.closing = True
        if self.state not in _OUTAGE:
            return self.current.close(callback, timeout)
        exc = ConnectionBroken("connection closed by the client while recovering (%s)" % self.state.value)
        self._end(exc)
        promise = self.table.new(callback, Kind.CLOSE)
        self.table.resolve(promise, Result())
        return promise

    def drop(self) -> None:
        self.closing = True
        self.current.drop()
        if self.state is not RecoveryState.CLOSED:
            self._end(ConnectionBroken("connection closed by the client"))

    def _end(self, exc: BaseException) -> None:
        """Give up: every pending promise fails with ``exc``; the client is closed."""
        self.state = RecoveryState.CLOSED
        self.error = exc
        self._timers.clear()
        self._attempt_at = None
        for promise in self.table.unfinished():
            if promise.kind is Kind.INTERNAL:
                self.table.forget(promise)
            else:
                self.table.fail(promise, exc)
        if isinstance(exc, ConnectionBroken):
            self.current.close_transport(exc, False)
        else:
            self.current.close_transport(ConnectionBroken(str(exc)), False)
        self.current.session.on_broken(exc)

    # --- the event loop -------------------------------------------------------------------------------

    def _run_due(self, now: float) -> float | None:
        """Run what is due (attempt, retries, deadline); seconds until the next thing, or None."""
        if self.state in _OUTAGE and self.recovery is not None and self.recovery.deadline is not None:
            spent = now - self._outage_started
            if spent >= self.recovery.deadline:
                self._give_up(spent)
                return None
        delays = []
        alarms = self.current.transport.alarms
        if alarms and self._attempt_at is not None:
            # No transport runs between attempts: the application's alarms fire here.
            alarms.fire(now)
            due_alarm = alarms.next_due()
            if due_alarm is not None:
                delays.append(due_alarm - now)
        if self._timers:
            due = [item for item in self._timers if item[0] <= now]
            if due:
                self._timers = [item for item in self._timers if item[0] > now]
                for _when, action in due:
                    action()
            delays += [when - now for when, _action in self._timers]
        if self._attempt_at is not None:
            if now >= self._attempt_at:
                self._attempt_at = None
                self._start_attempt()
            else:
                delays.append(self._attempt_at - now)
        if self.state in _OUTAGE and self.recovery is not None and self.recovery.deadline is not None:
            delays.append(self._outage_started + self.recovery.deadline - now)
        return max(0.0, min(delays)) if delays else None

    def _io_step_recovering(self, timeout: float | None) -> None:
        due = self._run_due(time.monotonic())
        if due is not None and (timeout is None or due < timeout):
            timeout = due
        if self.state is RecoveryState.CLOSED and self.error is not None:
            self.check()  # raises the error that ended the client
        if self._attempt_at is not None:
            # Waiting between attempts: nothing to read or write.
            if timeout is None:
                timeout = 1.0
            time.sleep(max(0.0, timeout))
            self._run_due(time.monotonic())
            return
        self.current.io_step(timeout)
        self._run_due(time.monotonic())

    def on_timer(self) -> float | None:
        due = self._run_due(time.monotonic())
        if self._attempt_at is not None or self.state is RecoveryState.CLOSED:
            return due
        core = self.current
        core_due = core.on_timer()
        if self.current is not core or self._attempt_at is not None:
            # The connection was lost in there (missed heartbeats): the recovery's schedule now.
            return self._run_due(time.monotonic())
        if due is None:
            return core_due
        return due if core_due is None else min(due, core_due)

    def flush_acks(self) -> None:
        self.current.flush_acks()

    def flush(self) -> None:
        self.current.flush()

    @property
    def backlog(self) -> int:
        return self.current.backlog

    def can_drain(self) -> bool:
        return self.state is not RecoveryState.CLOSED and (self.state in _OUTAGE or self.current.can_drain())

    def drain(self, limit: int) -> None:
        while self.state is not RecoveryState.CLOSED and self.current.backlog > limit:
            self.io_step(1.0)

    # --- losing a connection --------------------------------------------------------------------------

    def _recoverable(self, exc: BaseException) -> bool:
        if isinstance(exc, AMQPError):
            # connection.close from the broker: not when the application's own call caused it,
            # nor when the broker refuses this client (credentials, vhost).
            return not exc.class_id and exc.reply_code not in _REFUSED
        return isinstance(exc, ConnectionBroken)

    def _on_lost(self, exc: BaseException) -> bool:
        """A Core's connection is gone: carry its promises to the next one (True), or let them fail."""
        state = self.state
        if state is RecoveryState.CLOSED or self.closing:
            return False
        self._last_error = exc
        if state is RecoveryState.CONNECTING:
            if not self._first_round or not isinstance(exc, ConnectionBroken):
                self.state = RecoveryState.CLOSED
                return False
            self.host = self._first_round.pop(0)
            self._carry(gated=False)
            self._attempt_at = time.monotonic()
            return True
        if self.recovery is None or not self._recoverable(exc):
            self.state = RecoveryState.CLOSED
            return False
        now = time.monotonic()
        if state is RecoveryState.OPEN:
            self._outage_started = now
            self._attempts = 0
            self._republished = 0
            self._renamed_now = {}
            self.rotation.outage_started()
            self.log.warning("connection to %s lost: %s; recovering", self.host.redacted_url(), exc)
            for listener in self.listeners:
                listener.lost(exc)
        elif self.recovery.deadline is not None and now - self._outage_started >= self.recovery.deadline:
            self._carry_nothing()
            self._give_up(now - self._outage_started)
            return True
        self.host = self.rotation.next_host(self.host)
        self._carry(gated=True)
        assert self.backoff is not None
        self._attempt_at = now + self.backoff.next_delay()
        self.state = RecoveryState.WAITING
        return True

    def _carry_nothing(self) -> None:
        for promise in self.table.promises.values():
            promise.channel = None

    def _carry(self, gated: bool) -> None:
        """Make the next Core and hand it the unfinished promises (see the module docstring)."""
        table = self.table
        recovery = self.recovery
        carried: list[Promise] = []
        publishes: list[Promise] = []
        consumes: list[Promise] = []
        connect: Promise | None = None
        interrupted = self._last_error
        # Controls first: a pending cancel means its consume is not restored.
        for promise in list(table.promises.values()):
            if promise.kind is Kind.CONSUME_CONTROL and not promise.final:
                control = promise.request
                consume = control.consume
                if control.prefetch is None:
                    table.resolve(promise, Result())
                    if not consume.final:
                        table.end_quietly(consume)
                else:
                    consume.consume.prefetch = control.prefetch
                    table.resolve(promise, Result(prefetch_count=control.prefetch))
        for promise in list(table.promises.values()):
            channel = promise.channel
            if channel is not None:
                for message in channel.unacked.values():
                    self.stale[id(message)] = (promise, message)
                channel.unacked.clear()
                promise.channel = None
            if promise.final:
                continue
            kind = promise.kind
            if kind is Kind.INTERNAL:
                table.forget(promise)  # the recovery's own work: redone from the start
            elif kind is Kind.CONNECT:
                connect = promise
            elif kind is Kind.CALL or kind is Kind.GET:
                if promise.request.safe_to_repeat:
                    carried.append(promise)
                else:
                    what = promise.request.method.name if kind is Kind.CALL else "basic.get (no_ack)"
                    table.fail(
                        promise,
                        OperationInterrupted(
                            "the connection was lost while %s was in flight: it may or may not have happened (%s)"
                            % (what, interrupted)
                        ),
                    )
            elif kind is Kind.CONSUME:
                offsets = promise.consume.offsets
                if offsets:
                    # A stream consumer resumes after the last offset delivered, not where it began.
                    for consumer in promise.consume.consumers:
                        offset = offsets.get(consumer["tag"])
                        if offset is not None:
                            consumer["arguments"] = {**consumer["arguments"], "x-stream-offset": offset + 1}
                consumes.append(promise)
            elif kind is Kind.PUBLISH:
                republish = not gated or (recovery is not None and recovery.republish)
                if republish and promise.request is not None:
                    publishes.append(promise)
                else:
                    lost = ConnectionBroken("connection lost before the broker confirmed: %s" % interrupted)
                    table.fail(promise, lost)
        self._timers.clear()
        core = self._install(self.make_core(self.host, gated))
        session = core.session
        if connect is not None:
            self._connect_promise = connect
        for promise in carried:
            session.submit(promise)
        if not gated:
            # The first connect moving to the next host: consumes were never started.
            for promise in consumes:
                session.submit(promise)
            consumes = []
        for promise in publishes:
            core.publishing.resend(promise)
        if gated:
            self._republished += len(publishes)
        self._restoring = consumes

    def _give_up(self, spent: float) -> None:
        hosts = ", ".join(host.redacted_url() for host in self.rotation.tried or [self.host])
        exc = ConnectionBroken(
            "connection lost and not recovered within %.1fs (deadline %gs); hosts tried: %s; last error: %s"
            % (spent, (self.recovery.deadline if self.recovery else None) or 0.0, hosts, self._last_error)
        )
        self.log.error("%s", exc)
        self._end(exc)

    # --- reconnecting ---------------------------------------------------------------------------------

    def _start_attempt(self) -> None:
        self._attempts += 1
        if self.state is RecoveryState.CONNECTING:
            # The first connect, on the next host: the application's connect promise.
            promise = self._connect_promise
            assert promise is not None
            self.current.connect(None, self.connection_timeout, self.host.redacted_url(), promise=promise)
            promise.observer = self._on_first_open
        else:
            self.state = RecoveryState.RECONNECTING
            timeout = self.connection_timeout
            if self.recovery is not None and self.recovery.connect_timeout is not None:
                timeout = self.recovery.connect_timeout
            self.current.connect(None, timeout, self.host.redacted_url(), observer=self._on_reconnected)
        for listener in self.listeners:
            listener.switched()

    def _on_reconnected(self, promise: Promise, result: Any) -> None:
        if result.is_error or self.state is not RecoveryState.RECONNECTING:
            return
        self.state = RecoveryState.REPLAYING
        self._rename_consumers()  # what earlier attempts of this outage renamed: a failed declare finds its consumers
        self._replay(0)

    def _replay(self, index: int) -> None:
        """Run step ``index`` of the topology replay; the consumers after the last one.

        Each step is read from the record when it starts: a server-named queue
        renamed by the queues' step is bound under its new name by the next ones.
        """
        if self.state is not RecoveryState.REPLAYING:
            return
        steps = self.topology.steps()
        if index == len(steps):
            self._restore_consumers()
            return
        step = steps[index]
        if not step:
            self._replay(index + 1)
            return
        remaining = [len(step)]
        core = self.current

        def one_done() -> None:
            remaining[0] -= 1
            if not remaining[0] and self.current is core:
                self._replay(index + 1)

        for method, args in step:
            self._declare(method, args, one_done, time.monotonic())

    def _declare(self, method: Any, args: tuple[Any, ...], done: Callable[[], None], started: float) -> None:
        core = self.current
        table = self.table
        queue = self.topology.queue_of(args) if method.name == "queue.declare" else None
        reply_ids = (self._reply_id(method),)

        def answered(promise: Promise, result: Any) -> None:
            if self.current is not core:
                return
            if result.is_error:
                exc = result.exception
                text = str(exc)
                retry = getattr(exc, "reply_code", None) == 405 or "home node" in text
                recovery = self.recovery
                if retry and recovery is not None and time.monotonic() - started < recovery.locked_retry:
                    when = time.monotonic() + _LOCKED_RETRY_INTERVAL
                    self._timers.append((when, lambda: self._declare(method, args, done, started)))
                    return
                self._restore_failed(method, args, queue, exc)
            elif queue is not None and self.topology.queues.get(queue) is not None:
                if self.topology.queues[queue].server_named and result["queue"] != queue:
                    self._rename(queue, result["queue"])
            done()

        promise = table.new(None, Kind.INTERNAL)
        promise.request = Call(method, args, reply_ids)
        promise.observer = answered
        core.session.start_call(promise, privileged=True)

    @staticmethod
    def _reply_id(method: Any) -> int:
        from .. import spec

        return spec.METHODS_BY_NAME[method.name + "-ok"].method_id

    def _restore_failed(self, method: Any, args: tuple[Any, ...], queue: str | None, exc: BaseException) -> None:
        self.log.error("recovery could not restore %s %r: %s", method.name, args[0], exc)
        if queue is None:
            return
        self.topology.forget_queue(queue)
        for consume in self._restoring:
            if not consume.final and any(c["queue"] == queue for c in consume.consume.consumers):
                self.current.consuming.channel_closed(consume, exc)  # its queued qos/cancel fail too
                self.table.fail(consume, exc)

    def _rename(self, old: str, new: str) -> None:
        self.topology.rename(old, new)
        earlier = self._renamed_from.pop(old, [])
        for name in earlier:
            self.renamed[name] = new
        earlier.append(old)
        self._renamed_from[new] = earlier
        self.current.publishing.rename(old, new)
        self._renamed_now[old] = new
        self.log.info("server-named queue %s is now %s", old, new)

    def _rename_consumers(self) -> None:
        """The consumers to restore follow the queues renamed during this outage (once for all of them:
        renaming one queue costs no walk over every consumer)."""
        renamed = self._renamed_now
        if not renamed:
            return
        for consume in self._restoring:
            state = consume.consume
            for consumer in state.consumers:
                queue = consumer["queue"]
                for _ in range(len(renamed)):  # a queue renamed on several attempts: to its last name
                    if queue not in renamed:
                        break
                    queue = renamed[queue]
                consumer["queue"] = queue
            state.by_tag = {c["tag"]: c["queue"] for c in state.consumers}

    def _restore_consumers(self) -> None:
        self._rename_consumers()
        consumes = [promise for promise in self._restoring if not promise.final]
        if not consumes:
            self._finish()
            return
        remaining = [len(consumes)]
        core = self.current

        def one_done(promise: Promise, _result: Any = None) -> None:
            if promise.observer is one_done:
                promise.observer = None
            remaining[0] -= 1
            if not remaining[0] and self.current is core:
                self._finish()

        for promise in consumes:
            promise.observer = one_done
            core.consuming.start_consume(promise, privileged=True, on_started=_bind(one_done, promise))

    def _finish(self) -> None:
        """Every consume-ok arrived: the application's operations may run."""
        self.state = RecoveryState.OPEN
        self._restoring = []
        self.current.session.release_gate()
        assert self.backoff is not None
        if not self._nack_loss:
            self.backoff.reset()
        self._nack_loss = False
        if self._nacked:
            promises = self.table.promises
            self._nacked = {n: t for n, t in self._nacked.items() if n in promises and not promises[n].final}
        self.rotation.connected(self.host)
        info = {
            "host": self.host.redacted_url(),
            "outage_seconds": time.monotonic() - self._outage_started,
            "attempts": self._attempts,
            "republished": self._republished,
            "renamed": dict(self._renamed_now),
        }
        self.log.info(
            "connection recovered to %s after %.2fs (%d attempts, %d publishes re-sent)",
            info["host"],
            info["outage_seconds"],
            info["attempts"],
            info["republished"],
        )
        for listener in self.listeners:
            listener.recovered(info)

    # --- hooks of the protocol core -------------------------------------------------------------------

    def _on_nacked(self, promise: Promise) -> bool:
        """A publish was nacked: keep it pending, to be sent again on a new connection, for ``nack_retry``."""
        recovery = self.recovery
        if recovery is None or self.state is not _OPEN or self.closing or promise.request is None:
            return False
        now = time.monotonic()
        first = self._nacked.setdefault(promise.number, now)
        if now - first >= recovery.nack_retry:
            del self._nacked[promise.number]
            return False
        self._nack_loss = True
        return True

    def _on_call_done(self, promise: Promise, result: Any) -> None:
        if not isinstance(result, ErrorResult):
            call: Call = promise.request
            self.topology.record(call.method, call.args, result)

    def _on_unknown_settlement(self, promise: Promise | None, message: Any, multiple: bool) -> bool:
        entry = self.stale.get(id(message))
        if entry is None or entry[1] is not message:
            return False
        owner = entry[0]
        settled = [id(message)]
        if multiple:
            tag = message["delivery_tag"]
            settled += [
                key
                for key, (p, m) in self.stale.items()
                if p is owner and m is not message and m["delivery_tag"] <= tag
            ]
        for key in settled:
            del self.stale[key]
        owner.held -= len(settled)
        self.stale_settlements += len(settled)
        if owner.final and not owner.results and owner.held <= 0:
            owner.held = 0
            self.table.forget(owner)
        return True


def _bind(function: Callable[[Promise], None], promise: Promise) -> Callable[[], None]:
    return lambda: function(promise)
