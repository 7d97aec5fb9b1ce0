"""Shared fixtures: a real broker (AMQP_URL or the local RabbitMQ), clients, unique names."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import ensure_broker  # noqa: E402

import puka  # noqa: E402

AMQP_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"


def pytest_configure(config):
    config.addinivalue_line("markers", "broker_restart: stops and restarts the broker; runs last")


def pytest_collection_modifyitems(config, items):
    """Tests that restart the broker run after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("broker_restart") is not None)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The broker's URL, after making sure it answers (starting the local one if needed)."""
    ensure_broker.ensure()
    return AMQP_URL


@pytest.fixture
def client(amqp_url):
    """A connected client, closed after the test."""
    c = puka.Client(amqp_url, client_properties={"connection_name": "puka-tests"})
    c.wait(c.connect(), timeout=10)
    yield c
    c.wait(c.close(), timeout=10)  # a no-op when the test broke or closed the connection


@pytest.fixture
def proxy(amqp_url):
    """A fault-injecting TCP proxy to the broker (``faults.Proxy``): ``proxy.url`` has the same vhost and user."""
    from faults import Proxy

    params = puka.parse_amqp_url(amqp_url)
    with Proxy((params.host, params.port), params.vhost, params.username, params.password) as p:
        yield p
    assert p.error is None, p.error


@pytest.fixture
def name(request) -> str:
    """A unique name for queues and exchanges of one test."""
    return "puka-test-%s-%s" % (request.node.name[:40], uuid.uuid4().hex[:8])


@pytest.fixture
def queue(amqp_url, client, name):
    """A fresh queue (deleted after the test)."""
    client.wait(client.queue_declare(queue=name))
    yield name
    try:
        client.wait(client.queue_delete(queue=name), raise_errors=False)
    except puka.ConnectionBroken:  # the test ended that connection: delete the queue with another
        with puka.Client(amqp_url) as other:
            other.wait(other.queue_delete(queue=name), raise_errors=False)
