"""Request/reply over RabbitMQ's direct reply-to.

Theory of operation: the first :meth:`puka.Client.rpc_call` starts one
consumer of the ``amq.rabbitmq.reply-to`` pseudo-queue (``no_ack``, as
RabbitMQ requires) for the client; its deliveries never reach the
application as such: each is matched by its ``correlation_id`` to the
pending call, whose promise resolves to the reply message.  A request is a
confirmed, ``mandatory`` publish carrying ``reply_to`` and a fresh
``correlation_id``; it goes out on the reply consumer's channel (RabbitMQ
insists), so the reply comes back to this client.

A call fails with the publish's error (NoRoute when no queue took the
request, PublishNacked, a channel error, ConnectionBroken), or with
:exc:`~puka.exceptions.ReplyTimeout` when ``timeout`` passes first (an alarm
of the transport; the pending entry is dropped, and a late reply is logged
and dropped like any reply nobody waits for).

With recovery, the reply consumer is restored like any consumer and
unconfirmed requests are sent again from the new connection, so their
replies find this client.  A request the server had already received before
the loss is answered to the old connection's address, which is gone: that
call ends with its timeout (give one).
"""

from __future__ import annotations

import time
import uuid

from .exceptions import ReplyTimeout
from .promise import Kind
from .protocol.publishing import REPLY_TO

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .client import Client
    from .promise import Callback, Promise


class Rpc:
    """The request/reply state of one client.  See the module docstring."""

    def __init__(self, client: Client, log: Any) -> None:
        self.client = client
        self.log = log
        #: correlation id -> the call's promise
        self.pending: dict[str, Promise] = {}
        #: correlation id -> the alarm of its timeout
        self.alarms: dict[str, list[Any]] = {}
        self.prefix = uuid.uuid4().hex[:16]
        self.count = 0
        self.consume = 0
        self.start()

    def start(self) -> None:
        """Start the reply-to consumer (again, when its channel was closed: a request to a missing exchange)."""
        client = self.client
        client._check()
        self.consume = client._consuming.consume([{"queue": REPLY_TO}], 0, True, None, on_message=self.on_reply)
        client._table.promises[self.consume].observer = self._consumer_ended

    def _consumer_ended(self, consume: Promise, result: Any) -> None:
        """The reply-to consumer ended (its channel closed): no pending call can get its reply."""
        if not result.is_error:
            return
        pending, self.pending = self.pending, {}
        for correlation_id, promise in pending.items():
            self._cancel_alarm(correlation_id)
            self.client._table.fail(promise, result.exception)

    def call(
        self,
        exchange: str,
        routing_key: str,
        body: Any,
        headers: dict[str, Any] | None,
        timeout: float | None,
        callback: Callback | None,
    ) -> int:
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds or None, not %r" % (timeout,))
        client = self.client
        table = client._table
        consume = table.promises.get(self.consume)
        if consume is None or consume.final:
            if consume is not None:
                table.forget(consume)
            self.start()
        self.count += 1
        correlation_id = "%s.%d" % (self.prefix, self.count)
        properties = dict(headers) if headers else {}
        properties["reply_to"] = REPLY_TO
        properties["correlation_id"] = correlation_id
        number = client.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        promise = table.new(callback, Kind.RPC)
        promise.request = correlation_id
        self.pending[correlation_id] = promise
        publish = table.promises[number]
        publish.observer = self._published(promise, correlation_id, publish.observer)
        if timeout is not None:
            alarms = client._transport.alarms
            self.alarms[correlation_id] = alarms.add(time.monotonic() + timeout, self._expire(correlation_id, timeout))
        return promise.number

    def _published(
        self, promise: Promise, correlation_id: str, observer: Callable[[Promise, Any], None] | None
    ) -> Callable[[Promise, Any], None]:
        def published(publish: Promise, result: Any) -> None:
            if observer is not None:
                observer(publish, result)
            # Nobody waits on the request's own promise: forget it and its result.
            publish.results = None
            self.client._table.forget(publish)
            if result.is_error and self.pending.pop(correlation_id, None) is promise:
                self._cancel_alarm(correlation_id)
                self.client._table.fail(promise, result.exception, dict(result))

        return published

    def _expire(self, correlation_id: str, timeout: float) -> Callable[[], None]:
        def expire() -> None:
            self.alarms.pop(correlation_id, None)
            promise = self.pending.pop(correlation_id, None)
            if promise is not None:
                self.client._table.fail(
                    promise, ReplyTimeout("no reply within %gs (correlation_id %s)" % (timeout, correlation_id))
                )

        return expire

    def _cancel_alarm(self, correlation_id: str) -> None:
        alarm = self.alarms.pop(correlation_id, None)
        if alarm is not None:
            alarm[2] = None

    def on_reply(self, message: Any) -> None:
        """A delivery to the reply-to consumer: the reply of the call with its correlation id."""
        correlation_id = message["headers"].get("correlation_id")
        promise = self.pending.pop(correlation_id, None) if isinstance(correlation_id, str) else None
        if promise is None:
            self.log.info("dropped a reply nobody waits for (late or unknown): correlation_id %r", correlation_id)
            return
        self._cancel_alarm(correlation_id)
        self.client._table.resolve(promise, message)
