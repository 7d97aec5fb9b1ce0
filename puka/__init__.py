"""puka: a promise-based client for RabbitMQ (AMQP 0-9-1).

    import puka

    client = puka.Client("amqp://localhost/")
    client.wait(client.connect())
    client.wait(client.queue_declare(queue="test"))
    client.wait(client.basic_publish(exchange="", routing_key="test", body=b"hello"))

Every operation returns a promise number; ``wait`` blocks on it, ``callback=``
runs when it is done, ``loop`` drives callbacks.  See the documentation in
``docs/`` for the full API.
"""

from . import spec
from .client import OPERATIONS, Client, SslConnectionParameters
from .exceptions import (
    AMQPError,
    AMQPHardError,
    AMQPSoftError,
    ConnectionBroken,
    ConsumerCancelled,
    FrameTooLarge,
    OperationInterrupted,
    PromiseFinished,
    PublishNacked,
    ReplyTimeout,
    UnsupportedProtocol,
)
from .recovery import Recovery
from .spec import ERRORS as _ERRORS
from .urls import ConnectionParameters, parse_amqp_url
from .version import __version__ as __version__

# One exception class per AMQP reply code, generated from the spec (NotFound, NoRoute...).
globals().update({cls.__name__: cls for cls in _ERRORS.values()})

TYPE_CHECKING = False
if TYPE_CHECKING:
    # For type checkers: the generated classes (puka.NotFound...) are AMQPError subclasses.
    def __getattr__(name: str) -> type[AMQPError]: ...


__all__ = [
    "Client",
    "SslConnectionParameters",
    "ConnectionParameters",
    "parse_amqp_url",
    "Recovery",
    "OPERATIONS",
    "spec",
    "AMQPError",
    "AMQPHardError",
    "AMQPSoftError",
    "ConnectionBroken",
    "ConsumerCancelled",
    "FrameTooLarge",
    "OperationInterrupted",
    "PromiseFinished",
    "PublishNacked",
    "ReplyTimeout",
    "UnsupportedProtocol",
    *sorted(cls.__name__ for cls in _ERRORS.values()),
]
