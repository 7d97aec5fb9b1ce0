"""The topology a client declared, recorded so a recovery can declare it again.

Theory of operation: every short operation that succeeds is shown to
:meth:`Topology.record` with its request (method and arguments) and its
result.  Declares of exchanges and queues (not passive ones) and bindings are
remembered; deletes and unbinds forget them, and deleting an exchange or a
queue forgets the bindings that name it.  Consumers are not kept here: a
consume promise that has not ended *is* its record.

:meth:`Topology.steps` gives the replay in dependency order -- exchanges, then
queues, then exchange-to-exchange bindings, then queue bindings -- each step a
list of (method, arguments) that may run in parallel.  A server-named queue
(declared with ``queue=''``) is declared again the same way and gets a new
name: :meth:`Topology.rename` moves its record and its bindings to it.
"""

from __future__ import annotations

from .. import spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Step = list[tuple[type[spec.Method], tuple[Any, ...]]]

M = spec.METHODS_BY_NAME
EXCHANGE_DECLARE = M["exchange.declare"]
QUEUE_DECLARE = M["queue.declare"]
EXCHANGE_BIND = M["exchange.bind"]
QUEUE_BIND = M["queue.bind"]


def _binding_key(destination: str, source: str, routing_key: str, arguments: Any) -> tuple[str, str, str, str]:
    return (destination, source, routing_key, repr(sorted((arguments or {}).items())))


class QueueRecord:
    __slots__ = ("args", "server_named")

    def __init__(self, args: tuple[Any, ...], server_named: bool) -> None:
        #: queue.declare arguments (with '' as the name when the server names it)
        self.args = args
        self.server_named = server_named


class Topology:
    """Exchanges, queues and bindings declared through one client.  See the module docstring."""

    def __init__(self) -> None:
        self.exchanges: dict[str, tuple[Any, ...]] = {}
        self.queues: dict[str, QueueRecord] = {}
        #: id(record.args) -> the queue's name, for queue_of (a replayed declare names its record in O(1))
        self._names: dict[int, str] = {}
        #: (destination, source, routing key, arguments) -> bind arguments
        self.exchange_bindings: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        self.queue_bindings: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}

    def record(self, method: type[spec.Method], args: tuple[Any, ...], result: Any) -> None:
        """A short operation succeeded: remember or forget what it declared."""
        name = method.name
        if name == "exchange.declare":
            if not args[2]:  # passive: only a check
                self.exchanges[args[0]] = args
        elif name == "exchange.delete":
            self.forget_exchange(args[0])
        elif name == "queue.declare":
            if not args[1]:
                server_named = not args[0]
                queue = result["queue"]
                earlier = self.queues.get(queue)
                if earlier is not None:
                    self._names.pop(id(earlier.args), None)
                self.queues[queue] = QueueRecord(args, server_named)
                self._names[id(args)] = queue
        elif name == "queue.delete":
            self.forget_queue(args[0])
        elif name == "queue.bind":
            self.queue_bindings[_binding_key(args[0], args[1], args[2], args[4])] = args
        elif name == "queue.unbind":
            self.queue_bindings.pop(_binding_key(args[0], args[1], args[2], args[3]), None)
        elif name == "exchange.bind":
            self.exchange_bindings[_binding_key(args[0], args[1], args[2], args[4])] = args
        elif name == "exchange.unbind":
            self.exchange_bindings.pop(_binding_key(args[0], args[1], args[2], args[4]), None)

    def forget_exchange(self, exchange: str) -> None:
        self.exchanges.pop(exchange, None)
        for key in [k for k in self.exchange_bindings if exchange in (k[0], k[1])]:
            del self.exchange_bindings[key]
        for key in [k for k in self.queue_bindings if k[1] == exchange]:
            del self.queue_bindings[key]

    def forget_queue(self, queue: str) -> None:
        record = self.queues.pop(queue, None)
        if record is not None:
            self._names.pop(id(record.args), None)
        for key in [k for k in self.queue_bindings if k[0] == queue]:
            del self.queue_bindings[key]

    def steps(self) -> list[Step]:
        """The replay, in dependency order (see the module docstring)."""
        return [
            [(EXCHANGE_DECLARE, args) for args in self.exchanges.values()],
            [(QUEUE_DECLARE, record.args) for record in self.queues.values()],
            [(EXCHANGE_BIND, args) for args in self.exchange_bindings.values()],
            [(QUEUE_BIND, args) for args in self.queue_bindings.values()],
        ]

    def queue_of(self, args: tuple[Any, ...]) -> str | None:
        """The recorded name of the queue a replayed queue.declare stands for."""
        name = self._names.get(id(args))
        if name is not None:
            record = self.queues.get(name)
            if record is not None and record.args is args:
                return name
        return None

    def rename(self, old: str, new: str) -> None:
        """A server-named queue came back as ``new``: its record and bindings follow."""
        record = self.queues.pop(old, None)
        if record is not None:
            self.queues[new] = record
            self._names[id(record.args)] = new
        for key in [k for k in self.queue_bindings if k[0] == old]:
            args = self.queue_bindings.pop(key)
            renamed = (new, *args[1:])
            self.queue_bindings[(new, *key[1:])] = renamed
