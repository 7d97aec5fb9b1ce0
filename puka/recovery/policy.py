"""Recovery policy: what the user asked for, how long to wait, which host next.

Theory of operation: three small, pure units that the recovering core
consults; none of them touches a socket or reads a clock.

* :class:`Recovery` holds the user's settings, checked at construction.
* :class:`Backoff` gives the wait before each attempt of one outage.  The
  first attempt is immediate (it goes to another host); attempt ``k >= 1``
  waits ``uniform(initial_delay, min(max_delay, initial_delay * 2**(k-1)))``:
  "full jitter" over a cap that doubles up to ``max_delay``, with
  ``initial_delay`` as a floor rather than 0, so that however unlucky the
  draws, a client makes at most one attempt per ``initial_delay`` and never
  spins on a dead cluster.  :meth:`Backoff.reset` starts over (a new outage).
* :class:`HostRotation` orders the hosts.  The first host of each new client
  is the next in a round robin over the list, kept per list of hosts for the
  whole process and begun at a random place once per process
  (:class:`FleetCounter`): thirty clients of one process given three nodes get
  exactly ten each, and several processes start at different nodes.  The
  other hosts follow in the client's own random order, so when a node goes its
  clients move on to different survivors rather than all to the same one.
  The first connect
  tries every host once (:meth:`HostRotation.first_round`) and then fails;
  recovery asks :meth:`HostRotation.next_host` after each failure, which never
  returns the host that just failed while some host is untried in this outage.

Randomness comes from an injectable ``random.Random`` (and the round robin's
place from an injectable start), so tests are deterministic.
"""

from __future__ import annotations

import itertools

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from ..urls import ConnectionParameters


def _seconds(name: str, value: object, *, zero: bool = True) -> float:
    """``value`` as float seconds: TypeError unless a number, ValueError unless finite and >= 0 (> 0 if not zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds, not %r" % (name, value))
    if value != value or value in (float("inf"), float("-inf")) or value < 0 or (not zero and value == 0):
        raise ValueError("%s must be a finite number of seconds, %s0, not %r" % (name, ">= " if zero else "> ", value))
    return float(value)


def _delays(initial_delay: object, max_delay: object) -> tuple[float, float]:
    initial, most = _seconds("initial_delay", initial_delay, zero=False), _seconds("max_delay", max_delay)
    if most < initial:
        raise ValueError("max_delay (%r) must not be less than initial_delay (%r)" % (max_delay, initial_delay))
    return initial, most


class Recovery:
    """How a client recovers a lost connection: ``puka.Client(url, recovery=Recovery(...))``.

    ``initial_delay`` (seconds, > 0): the shortest wait between two attempts (the first is immediate).
    ``max_delay`` (seconds, >= initial_delay): the longest; waits double up to it, with jitter (see :class:`Backoff`).
    ``deadline`` (seconds, > 0, or None): how long an outage may last.  When no connection is back within it,
    every promise still pending fails (ConnectionBroken naming the hosts tried).  None: no deadline; promises
    wait, and attempts go on, for as long as the outage lasts.
    ``republish``: publishes the broker had not confirmed when the connection went are sent again after
    recovery (at least once: the broker may get one twice).  False: they fail with ConnectionBroken.
    ``locked_retry`` (seconds, >= 0; 0: no retry): while the topology is declared again, how long to keep
    retrying a declare refused with 405 RESOURCE_LOCKED (an exclusive queue whose old connection the broker
    has not yet seen go) or 404 "home node ... is down" (a queue whose node is not back yet).
    ``connect_timeout`` (seconds, > 0, or None): for one attempt (TCP, TLS and handshake); None: the
    client's ``connection_timeout``.
    ``nack_retry`` (seconds, >= 0; 0: off): a publish the broker nacks is not failed but sent again on a new
    connection (the next host, with backoff) until it has been nacked for this long; then it fails with
    PublishNacked.  For quorum queues in a cluster: RabbitMQ nacks publishes while a queue has no leader, and
    a channel that began publishing then keeps being nacked.  Off by default, since a nack also means a queue
    refused the message for good (``x-overflow: reject-publish``).

    A wrong type is a TypeError, a value out of range (negative, NaN, infinite) a ValueError.
    Instances are immutable and compare equal when their settings are.
    """

    __slots__ = (
        "initial_delay",
        "max_delay",
        "deadline",
        "republish",
        "locked_retry",
        "connect_timeout",
        "nack_retry",
    )
    initial_delay: float
    max_delay: float
    deadline: float | None
    republish: bool
    locked_retry: float
    connect_timeout: float | None
    nack_retry: float

    def __init__(
        self,
        initial_delay: float = 0.05,
        max_delay: float = 5.0,
        deadline: float | None = 60.0,
        republish: bool = True,
        locked_retry: float = 5.0,
        connect_timeout: float | None = None,
        nack_retry: float = 0.0,
    ) -> None:
        if not isinstance(republish, bool):
            raise TypeError("republish must be True or False, not %r" % (republish,))
        values = (
            *_delays(initial_delay, max_delay),
            None if deadline is None else _seconds("deadline", deadline, zero=False),
            republish,
            _seconds("locked_retry", locked_retry),
            None if connect_timeout is None else _seconds("connect_timeout", connect_timeout, zero=False),
            _seconds("nack_retry", nack_retry),
        )
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Recovery settings are immutable; make a new Recovery")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return self._values() == other._values() if isinstance(other, Recovery) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return "Recovery(%s)" % ", ".join("%s=%r" % (name, getattr(self, name)) for name in self.__slots__)


class Backoff:
    """The waits between the attempts of one outage.  See the module docstring for the formula."""

    def __init__(self, initial_delay: float = 0.05, max_delay: float = 5.0, rng: random.Random | None = None) -> None:
        self.initial_delay, self.max_delay = _delays(initial_delay, max_delay)
        if rng is None:
            import random

            rng = random.Random()
        self.rng = rng
        #: attempts made since the last reset
        self.attempt = 0

    @classmethod
    def for_recovery(cls, recovery: Recovery, rng: random.Random | None = None) -> Backoff:
        return cls(recovery.initial_delay, recovery.max_delay, rng)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: 0.0 for the first, then jittered, doubling, capped."""
        attempt = self.attempt
        self.attempt = attempt + 1
        if attempt == 0:
            return 0.0
        low = self.initial_delay
        cap = min(self.max_delay, low * 2.0 ** min(attempt - 1, 64))
        return min(cap, self.rng.uniform(low, cap))

    def reset(self) -> None:
        """Connected again: the next outage starts with an immediate attempt."""
        self.attempt = 0


class FleetCounter:
    """The round robin of first hosts shared by every client of a process, one per list of hosts.

    Each list's turn begins at a random place drawn once (``rng``, or a new
    ``random.Random``), then moves one host per new client.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng
        self._turns: dict[tuple[tuple[str, int, str], ...], itertools.count[int]] = {}

    def next_start(self, hosts: Sequence[ConnectionParameters]) -> int:
        """The index in ``hosts`` of the next client's first host."""
        key = tuple((h.host, h.port, h.vhost) for h in hosts)
        turn = self._turns.get(key)
        if turn is None:
            if self.rng is None:
                import random

                self.rng = random.Random()
            turn = self._turns.setdefault(key, itertools.count(self.rng.randrange(len(hosts))))
        return next(turn) % len(hosts)


#: the process's round robin (see :class:`FleetCounter`)
FLEET = FleetCounter()


class HostRotation:
    """Which host to try next.  See the module docstring.

    ``start``: the index in ``hosts`` of the first host; None: the next in the process's
    round robin (:data:`FLEET`).
    """

    def __init__(
        self, hosts: Sequence[ConnectionParameters], rng: random.Random | None = None, start: int | None = None
    ) -> None:
        if not hosts:
            raise ValueError("no host to connect to")
        if rng is None:
            import random

            rng = random.Random()
        if start is None:
            start = FLEET.next_start(hosts)
        elif not 0 <= start < len(hosts):
            raise ValueError("start must be an index of hosts (0 to %d), not %r" % (len(hosts) - 1, start))
        #: the hosts as given, and in this client's order: the round robin's, then the others shuffled
        self.hosts = tuple(hosts)
        rest = list(hosts[start + 1 :]) + list(hosts[:start])
        rng.shuffle(rest)
        self.order = [hosts[start], *rest]
        #: the host of the current (or last) connection
        self.current: ConnectionParameters | None = None
        #: the hosts tried (or lost) in this outage, in that order, each once: for error messages
        self.tried: list[ConnectionParameters] = []

    def first_round(self) -> list[ConnectionParameters]:
        """Every host once, in this client's order, for the first connect (which fails when they all do)."""
        return list(self.order)

    def next_host(self, failed: ConnectionParameters | None) -> ConnectionParameters:
        """The host to try after ``failed`` (the host just lost or refused; None: none yet).

        The first host after ``failed`` in this client's order that is untried in this
        outage; when every host was tried, simply the next one (``failed`` only when alone).
        """
        tried = self.tried
        if failed is not None and failed not in tried:
            tried.append(failed)
        order = self.order
        start = order.index(failed) + 1 if failed in order else 0
        rotated = order[start:] + order[:start]
        choice = next((host for host in rotated if host not in tried), None)
        if choice is None:
            choice = next((host for host in rotated if host != failed), rotated[0])
        if choice not in tried:
            tried.append(choice)
        return choice

    def outage_started(self) -> None:
        """The connection is lost: no host has been tried in this outage yet."""
        self.tried = []

    def connected(self, host: ConnectionParameters) -> None:
        """A connection to ``host`` is open: the outage, if any, is over."""
        self.current = host
        self.tried = []
