"""Publish hooks of the middleware chain: what is kept while a publish is in flight, and who is told.

``on_publish`` may return a token; the client keeps that (and not the OutgoingPublish) until the
broker settles the message, then hands it to ``on_publish_settled``.  ``on_publish_done`` still
gets the OutgoingPublish, for middleware that override it.
"""

from __future__ import annotations

import gc

import pytest

import puka
from puka.tracing import Middleware, OutgoingPublish


class Tokens(Middleware):
    """Returns a token for the publishes whose routing key it is told to follow."""

    def __init__(self, follow: str) -> None:
        self.follow = follow
        self.settled: list[tuple[object, object]] = []

    def on_publish(self, publish):
        if publish.routing_key != self.follow:
            return None
        return ("token", publish.routing_key, publish.promise)

    def on_publish_settled(self, token, result):
        self.settled.append((token, result))


class Done(Middleware):
    """The classic pair: state in publish.context, on_publish_done."""

    def __init__(self) -> None:
        self.done: list[tuple[str, bool]] = []

    def on_publish(self, publish):
        publish.context[self] = publish.routing_key

    def on_publish_done(self, publish, result):
        self.done.append((publish.context.pop(self), result.is_error))


def connect(amqp_url, middleware):
    client = puka.Client(amqp_url, middleware=middleware)
    client.wait(client.connect(), timeout=10)
    return client


def test_the_token_reaches_on_publish_settled_with_the_result(amqp_url, name):
    tokens = Tokens(follow=name)
    client = connect(amqp_url, [tokens])
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True), timeout=10)
        confirmed = client.basic_publish("", name, b"x")
        client.wait(confirmed, timeout=10)
        returned = client.basic_publish("", name + "-nowhere", b"x", mandatory=True)
        client.wait(returned, timeout=10, raise_errors=False)
        tokens.follow = name + "-missing"
        failed = client.basic_publish("", name + "-missing", b"x", mandatory=True)
        with pytest.raises(puka.NoRoute):
            client.wait(failed, timeout=10)
    finally:
        client.wait(client.close(), timeout=10)
    # the publish whose on_publish returned None was not followed up
    assert [token for token, _ in tokens.settled] == [("token", name, confirmed), ("token", name + "-missing", failed)]
    assert [result.is_error for _, result in tokens.settled] == [False, True]
    assert isinstance(tokens.settled[1][1].exception, puka.NoRoute)


def test_token_and_on_publish_done_middleware_side_by_side(amqp_url, name):
    tokens, done = Tokens(follow=name), Done()
    client = connect(amqp_url, [tokens, done])
    try:
        client.wait(client.queue_declare(queue=name, exclusive=True), timeout=10)
        first = client.basic_publish("", name, b"x")
        second = client.basic_publish("", name + "-nowhere", b"x", mandatory=True)
        client.wait(first, timeout=10)
        client.wait(second, timeout=10, raise_errors=False)
    finally:
        client.wait(client.close(), timeout=10)
    assert [token for token, _ in tokens.settled] == [("token", name, first)]
    assert sorted(done.done) == [(name, False), (name + "-nowhere", True)]


def test_an_encoding_error_settles_the_token_at_once(amqp_url, name):
    tokens = Tokens(follow=name)
    client = connect(amqp_url, [tokens])
    try:
        with pytest.raises(TypeError):
            client.basic_publish("", name, object())  # type: ignore[arg-type]
    finally:
        client.wait(client.close(), timeout=10)
    [(token, result)] = tokens.settled
    assert token[:2] == ("token", name)
    assert result.is_error and isinstance(result.exception, TypeError)


def _alive(cls: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is cls)


def test_publishes_in_flight_keep_the_token_not_the_outgoing_publish(amqp_url, name):
    tokens, done = Tokens(follow=name), Done()
    lean = connect(amqp_url, [tokens])
    classic = connect(amqp_url, [done])
    try:
        lean.wait(lean.queue_declare(queue=name, exclusive=True), timeout=10)
        assert _alive(OutgoingPublish) == 0
        lean_promises = [lean.basic_publish("", name, b"x") for _ in range(50)]
        assert _alive(OutgoingPublish) == 0
        classic_promises = [classic.basic_publish("", name + "-void", b"x") for _ in range(50)]
        # on_publish_done needs the OutgoingPublish: kept until the confirm
        assert _alive(OutgoingPublish) == 50
        lean.wait_for_all(lean_promises)
        classic.wait_for_all(classic_promises)
        assert _alive(OutgoingPublish) == 0
    finally:
        lean.wait(lean.close(), timeout=10)
        classic.wait(classic.close(), timeout=10)
    assert len(tokens.settled) == 50 and len(done.done) == 50
