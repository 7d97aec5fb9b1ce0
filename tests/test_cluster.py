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
import re
import time
import uuid

import pytest
from cluster import answers_amqp
from cluster_load import PATIENCE, Consumer, Load, Publisher, recovery, wait_for

import puka
from puka.tracing import FrameRecorder

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
    changed = False
    for k in range(1, cluster.size + 1):
        if not cluster.pid(k):
            cluster.start_node(k)
            changed = True
        elif not answers_amqp(cluster.node(k).amqp_port):
            cluster.start_app(k)
            changed = True
    if changed:
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


def losses(load: Load) -> dict[str, list[str]]:
    """What each client was told when it lost a connection (for a failing assertion's message)."""
    return {w.name: [text for _when, text in w.losses] for w in load.workers}


def members_online(cluster, queue: str, count: int) -> bool:
    rows = [q for q in cluster.queues() if q["name"] == queue]
    return bool(rows) and len(rows[0].get("online") or []) >= count


# --- a quorum queue rides through node failures ---------------------------------------------------------------


def test_a_stop_of_the_clients_node(cluster, qname, loads):
    node = 1
    loads.append(load := load_on(cluster, qname, node))
    cluster.stop_node(node)  # the clients see their connections closed (320) or reset as the node goes
    load.wait_flowing()
    assert all(w.port != cluster.node(node).amqp_port for w in load.workers)
    assert all(w.losses and len(w.outages) == len(w.losses) for w in load.workers), losses(load)
    cluster.start_node(node)
    cluster.wait_members(3, index=node)
    load.wait_confirms(20)
    load.check()


def test_a_kill_9_of_the_clients_node(cluster, qname, loads):
    node = 2
    loads.append(load := load_on(cluster, qname, node))
    if cluster.queue_leader(qname) != cluster.node(node).name:
        # The queue's leader dies too: RabbitMQ nacks publishes until a new one is elected (nack_retry).
        cluster.transfer_leader(qname, node)
        load.wait_confirms(20)
    cluster.kill(node)
    load.wait_flowing()
    assert all(w.port != cluster.node(node).amqp_port for w in load.workers)
    assert all(w.losses and len(w.outages) == len(w.losses) for w in load.workers), losses(load)
    cluster.start_node(node)
    cluster.wait_members(3, index=node)
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
        cluster.wait_members(3, index=k)
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
        cluster.wait_members(3, index=home)
    with puka.Client(cluster.node(other).url) as client:
        ok = client.wait(client.queue_declare(qname, passive=True), timeout=PATIENCE)
        assert ok["message_count"] == 0  # ...and dropped


def test_a_classic_queue_on_a_down_node_cancels_its_consumer_and_recovery_retries_its_declare(cluster, qname):
    home, other = 3, 1
    with puka.Client(cluster.node(home).url) as client:
        client.wait(client.queue_declare(qname, durable=True), timeout=PATIENCE)
    watch = Watch()
    name = "classic-" + qname
    client = puka.Client(
        cluster.node(other).url,
        recovery=recovery(),
        middleware=[watch],
        client_properties={"connection_name": name},
    )
    try:
        client.wait(client.connect(), timeout=PATIENCE)
        client.wait(client.queue_declare(qname, durable=True), timeout=PATIENCE)  # recorded for recovery
        consume = client.basic_consume(qname)
        client.wait(client.basic_publish("", qname, b"one"), timeout=PATIENCE)
        message = client.wait(consume, timeout=PATIENCE)
        assert message["body"] == b"one"
        client.basic_ack(message)
        cluster.stop_app(home)
        # The broker cancels the consumer of a queue whose node went: the consume promise ends with an error.
        cancelled = client.wait(consume, timeout=PATIENCE, raise_errors=False)
        assert cancelled is not None and isinstance(cancelled.exception, puka.ConsumerCancelled), cancelled
        # A new connection re-declares the queue: 404 "home node ... is down", retried while the node is away.
        for pid in connection_pids(cluster, other, name):
            cluster.rabbitmqctl(other, "close_connection", pid, "test")
        assert pump(client, lambda: len(watch.refusals()) >= 3, PATIENCE), watch.refusals()
        assert watch.in_outage and "home node" in watch.refusals()[0]
        cluster.start_app(home)
        cluster.wait_members(3, index=home)
        assert pump(client, lambda: not watch.in_outage, PATIENCE)
        ok = client.wait(client.queue_declare(qname, passive=True), timeout=PATIENCE)
        assert ok["message_count"] == 0
        consume = client.basic_consume(qname)
        client.wait(client.basic_publish("", qname, b"two"), timeout=PATIENCE)
        assert client.wait(consume, timeout=PATIENCE)["body"] == b"two"
    finally:
        client.wait(client.close(), timeout=PATIENCE)
        healthy(cluster)


class Watch(FrameRecorder):
    """Frames, and whether the client is in an outage (lost without recovered since)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_outage = False

    def on_connection_lost(self, client, exc) -> None:
        self.in_outage = True

    def on_recovered(self, client, info) -> None:
        self.in_outage = False

    def refusals(self) -> list[str]:
        """The reply texts of the 404s the broker answered with (channel.close)."""
        return [
            str(f.method["reply_text"])
            for f in list(self.frames)
            if f.direction == "in" and f.name == "channel.close" and f.method["reply_code"] == 404
        ]


def connection_pids(cluster, node: int, name: str) -> list[str]:
    out = cluster.rabbitmqctl(node, "list_connections", "pid", "client_properties", "-q", "-s")
    pattern = re.compile(r'\{"connection_name","%s"\}' % re.escape(name))
    return [line.split("\t")[0] for line in out.splitlines() if pattern.search(line)]


def pump(client, predicate, timeout: float) -> bool:
    """Run the client's event loop until ``predicate()`` (True) or ``timeout`` seconds (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        client.loop(timeout=0.05)
    return True


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
    workers = [Publisher(cluster.urls, qname, "pub-" + qname), Consumer(cluster.urls, qname, "con-" + qname)]
    loads.append(load := Load(cluster, qname, workers).start())
    load.wait_confirms(20)
    cluster.stop_node(port_index(cluster, workers[0].port))
    load.wait_flowing()
    healthy(cluster)
    load.check()
