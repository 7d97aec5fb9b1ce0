"""The sans-IO AMQP 0-9-1 protocol core: one :class:`Session` per connection.

It reads frames, writes bytes through a :class:`Port`, and runs the promises
of a :class:`~puka.promise.PromiseTable` it is handed; it knows nothing of
sockets, clocks or the client above it.  See :mod:`puka.protocol.session` for
how its units fit together.
"""

from .ports import Port, RecordingPort
from .session import Session

__all__ = ["Port", "RecordingPort", "Session"]
