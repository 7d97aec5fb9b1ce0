"""Failover across the nodes of a real RabbitMQ cluster (tools/cluster.py: 3 nodes beside the system broker).

A client given the three nodes keeps publishing confirmed messages to, and consuming from, a quorum queue
through each fault below; :meth:`cluster_load.Load.check` then asserts that no confirmed message was lost,
that duplicates stay within the publishes unconfirmed at the faults, that every promise resolved once, and
that the broker has exactly one consumer per consuming client.  The classic-queue traps, and the spread of a
fleet over the nodes, have their own tests.

Conditions are waited for with generous ceilings; no duration is asserted.
"""

from __future__ import annotations

import collections
import uuid

import pytest
from cluster_load import PATIENCE, QUORUM, Consumer, Load, Publisher, recovery, wait_for

import puka

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


@pytest.fixture
def qname(cluster):
    """A fresh queue name, the queue deleted after the test (when a node can still do it)."""
    name = "puka-cluster-%s" % uuid.uuid4().hex[:10]
    yield name
    healthy(cluster)
    with puka.Client(cluster.url) as client:
        client.wait(client.queue_delete(name), timeout=PATIENCE, raise_errors=False)


def healthy(cluster) -> None:
    """Every node running and in the cluster (a test that took one down brings it back; this makes sure)."""
    for k in range(1, cluster.size + 1):
        if not cluster.pid(k):
            cluster.start_node(k)
    for k in range(1, cluster.size + 1):
        cluster.wait_amqp(k)
    cluster.wait_members(cluster.size)


def port_index(cluster, port: int) -> int:
    return next(n.index for n in cluster.nodes if n.amqp_port == port)


def load_on(cluster, queue: str, node: int | None = None, **publisher) -> Load:
    """A publisher and a consumer, both connected to ``node`` (any when None), traffic flowing."""
    port = cluster.node(node).amqp_port if node else None
    load = Load(
        cluster,
        queue,
        [
            Publisher(cluster.url, queue, "pub-" + queue, want_port=port, **publisher),
            Consumer(cluster.url, queue, "con-" + queue, want_port=port),
        ],
    )
    load.start()
    load.wait_confirms(20)
    return load


@pytest.fixture
def loads():
    """Loads a test starts; stopped without checks if the test fails before checking them."""
    started: list[Load] = []
    yield started
    for load in started:
        load.kill_switch()


def members_online(cluster, queue: str, count: int) -> bool:
    rows = [q for q in cluster.queues() if q["name"] == queue]
    return bool(rows) and len(rows[0].get("online") or []) >= count


# --- a quorum queue rides through node failures ---------------------------------------------------------------


def test_a_stop_of_the_clients_node(cluster, qname, loads):
    node = 1
    loads.append(load := load_on(cluster, qname, node))
    unconfirmed = load.publishers[0].unconfirmed
    cluster.stop_node(node)  # the client sees its connection reset (or the broker's 320 as the node goes)
    load.wait_flowing()
    assert all(w.port != cluster.node(node).amqp_port for w in load.workers)
    assert all(len(w.losses) == 1 and len(w.outages) == 1 for w in load.workers)
    cluster.start_node(node)
    cluster.wait_members(3)
    load.wait_confirms(20)
    figures = load.check()
    assert figures["unconfirmed_at_faults"] >= 0 and unconfirmed <= load.publishers[0].window


def test_a_kill_9_of_the_clients_node(cluster, qname, loads):
    node = 2
    loads.append(load := load_on(cluster, qname, node))
    cluster.kill(node)
    load.wait_flowing()
    assert all(w.port != cluster.node(node).amqp_port for w in load.workers)
    assert all(len(w.losses) == 1 and len(w.outages) == 1 for w in load.workers)
    cluster.start_node(node)
    cluster.wait_members(3)
    wait_for("every member of the queue online", lambda: members_online(cluster, qname, 3), PATIENCE, 0.5)
    load.wait_confirms(20)
    load.check()


def test_the_queue_leader_moving(cluster, qname, loads):
    loads.append(load := load_on(cluster, qname, 3))
    leaders = []
    for _ in range(3):
        leader = cluster.queue_leader(qname)
        leaders.append(leader)
        target = next(n.index for n in cluster.nodes if n.name != leader)
        cluster.transfer_leader(qname, target)
        load.wait_confirms(20)
    assert len(set(leaders + [cluster.queue_leader(qname)])) >= 2
    assert all(not w.losses for w in load.workers)  # the leader moves inside the cluster: no client notices
    load.check()


def test_a_rolling_restart(cluster, qname, loads):
    loads.append(load := load_on(cluster, qname))
    for k in range(1, cluster.size + 1):
        cluster.stop_node(k)
        load.wait_flowing()
        cluster.start_node(k)
        cluster.wait_members(3)
        wait_for("every member of the queue online", lambda: members_online(cluster, qname, 3), PATIENCE, 0.5)
        load.wait_confirms(20)
    # each client was on one of the nodes, so each lost its connection at least once
    assert all(w.losses and len(w.outages) == len(w.losses) for w in load.workers)
    load.check()


def test_a_loss_of_quorum_then_its_return(cluster, qname, loads):
    node = 1
    loads.append(load := load_on(cluster, qname, node))
    publisher = load.publishers[0]
    others = [k for k in range(1, cluster.size + 1) if k != node]
    for k in others:
        cluster.stop_node(k)
    # The clients' node is up but the queue has no quorum: publishes stay pending, none fails.
    wait_for("the publisher's window full of pending publishes", lambda: publisher.unconfirmed >= publisher.window)
    stalled_at = publisher.confirmed
    assert not publisher.failed
    for k in others:
        cluster.start_node(k)
    cluster.wait_members(3)
    wait_for("the quorum back", lambda: members_online(cluster, qname, 2), PATIENCE, 0.5)
    load.wait_confirms(20 + publisher.window)
    assert publisher.confirmed > stalled_at + publisher.window
    assert all(not w.losses for w in load.workers)  # its node never went: the connection stayed
    figures = load.check()
    assert figures["duplicated"] == 0


# --- the traps of classic queues ------------------------------------------------------------------------------


def test_a_publish_to_a_classic_queue_whose_node_is_down_is_confirmed_and_dropped(cluster, qname):
    home, other = 3, 1
    with puka.Client(cluster.node(home).url) as client:
        client.wait(client.queue_declare(qname, durable=True), timeout=PATIENCE)
    cluster.stop_app(home)
    try:
        with puka.Client(cluster.node(other).url, recovery=False, pubacks=True) as client:
            plain = client.wait(client.basic_publish("", qname, b"dropped"), timeout=PATIENCE)
            assert not plain.is_error  # confirmed by the broker...
            mandatory = client.wait(
                client.basic_publish("", qname, b"refused", mandatory=True), timeout=PATIENCE, raise_errors=False
            )
            assert mandatory.is_error and isinstance(mandatory.exception, puka.NoRoute)
    finally:
        cluster.start_app(home)
        cluster.wait_members(3)
    with puka.Client(cluster.node(other).url) as client:
        ok = client.wait(client.queue_declare(qname, passive=True), timeout=PATIENCE)
        assert ok["message_count"] == 0  # ...and dropped


def test_a_classic_queue_on_a_down_node_cancels_its_consumer_and_recovery_retries_its_declare(cluster, qname):
    home, other = 3, 1
    with puka.Client(cluster.node(home).url) as client:
        client.wait(client.queue_declare(qname, durable=True), timeout=PATIENCE)
    hooks = []

    class Watch(puka.tracing.Middleware):
        def on_connection_lost(self, client, exc):
            hooks.append(("lost", str(exc)))

        def on_recovered(self, client, info):
            hooks.append(("recovered", info))

    client = puka.Client(cluster.node(other).url, recovery=recovery(), middleware=[Watch()])
    try:
        client.wait(client.connect(), timeout=PATIENCE)
        client.wait(client.queue_declare(qname, durable=True), timeout=PATIENCE)
        consume = client.basic_consume(qname)
        client.wait(client.basic_publish("", qname, b"one"), timeout=PATIENCE)
        assert client.wait(consume, timeout=PATIENCE)["body"] == b"one"
        cluster.stop_app(home)
        # The broker cancels the consumer of a queue whose node went: the consume promise ends with an error.
        cancelled = client.wait(consume, timeout=PATIENCE, raise_errors=False)
        assert cancelled is not None and cancelled.is_error, cancelled
        # A new connection (the broker closes this one) re-declares the queue: 404 "home node ... is down",
        # retried until the node is back.
        for row in cluster.rabbitmqctl(other, "list_connections", "pid", "port", "-q", "-s").splitlines():
            cluster.rabbitmqctl(other, "close_connection", row.split("\t")[0], "test", check=False)
        wait_for("the connection lost", lambda: hooks and hooks[-1][0] == "lost", PATIENCE, 0.05)
        pump_until(client, lambda: False, 1.0)  # recovery meets the down node's queue and keeps retrying
        assert hooks[-1][0] == "lost"
        cluster.start_app(home)
        pump_until(client, lambda: hooks[-1][0] == "recovered", PATIENCE)
        client.wait(client.queue_declare(qname, passive=True), timeout=PATIENCE)
    finally:
        client.close()
        client.wait
        healthy(cluster)


def pump_until(client, predicate, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        client.loop(timeout=0.05)
    return predicate()


# --- a fleet spreads over the nodes ---------------------------------------------------------------------------


def test_thirty_clients_spread_over_the_three_nodes(cluster):
    clients = []
    try:
        for _ in range(30):
            client = puka.Client(cluster.url)
            client.wait(client.connect(), timeout=PATIENCE)
            clients.append(client)
        per_node = collections.Counter(port_index(cluster, c.socket().getpeername()[1]) for c in clients)
        assert per_node == {1: 10, 2: 10, 3: 10}, per_node
    finally:
        for client in clients:
            client.wait(client.close(), timeout=PATIENCE)


def test_the_hosts_may_be_a_list_of_urls(cluster, qname, loads):
    load = Load(cluster, qname, [Publisher(cluster.urls, qname, "pub-" + qname), Consumer(cluster.urls, qname, "con-" + qname)])
    loads.append(load.start())
    load.wait_confirms(20)
    load.check()


assert QUORUM
