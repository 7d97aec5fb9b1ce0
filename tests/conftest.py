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


def pytest_addoption(parser):
    group = parser.getgroup("puka")
    group.addoption(
        "--chaos-seconds",
        type=float,
        default=120.0,
        help="how long tests/test_chaos.py injects faults into the cluster (default 120)",
    )
    group.addoption("--chaos-report", default=None, help="write the chaos soak's summary as JSON to this path")
    group.addoption("--chaos-seed", type=int, default=None, help="replay a chaos soak: its seed (printed by each run)")


def pytest_configure(config):
    config.addinivalue_line("markers", "broker_restart: stops and restarts the broker; runs last")
    config.addinivalue_line(
        "markers", "cluster: uses the throwaway RabbitMQ cluster (tools/cluster.py); runs after the other tests"
    )


def _order(item) -> int:
    if item.get_closest_marker("broker_restart") is not None:
        return 2
    return 1 if item.get_closest_marker("cluster") is not None else 0


def pytest_collection_modifyitems(config, items):
    """The cluster tests run together after the others (the cluster is up only meanwhile); tests that restart
    the broker after every other test.  The chaos soak's timeout follows its duration."""
    items.sort(key=_order)
    seconds = config.getoption("--chaos-seconds")
    for item in items:
        if item.nodeid.startswith("tests/test_chaos.py"):
            item.add_marker(pytest.mark.timeout(int(2 * seconds + 1200)))


_CLUSTER: list = []  # the cluster started by the ``cluster`` fixture, while it runs


@pytest.fixture(scope="session")
def cluster():
    """A throwaway 3-node RabbitMQ cluster (tools/cluster.py), started once for the cluster tests and stopped
    after the last of them (or at the end of the session, whatever happened)."""
    import cluster as tool

    c = tool.Cluster(log=lambda text: print("cluster: %s" % text, file=sys.stderr))
    c.stop()  # what an interrupted earlier run of this tool left behind (only its own recorded processes)
    c.start(3)
    _CLUSTER.append(c)
    try:
        yield c
    finally:
        _stop_cluster()


def _stop_cluster() -> None:
    while _CLUSTER:
        _CLUSTER.pop().stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the cluster after the last cluster test (once its fixtures are torn down), so the tests after it
    have the machine to themselves."""
    yield
    if _CLUSTER and (nextitem is None or nextitem.get_closest_marker("cluster") is None):
        _stop_cluster()


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
