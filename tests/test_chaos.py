"""The chaos soak: traffic on a quorum queue of a 3-node cluster while faults are injected at random.

Two publishers and two consumers run for ``--chaos-seconds`` (default 120); one of each goes straight to
the nodes, the other through a :class:`faults.Proxy` per node.  Every few seconds a driver injects one
fault, chosen by a seeded RNG (the seed is printed; ``--chaos-seed N`` replays the same choices):

* ``node_stop``: a node stopped (``rabbitmqctl stop``), then started again;
* ``node_kill``: a node's VM killed (``kill -9``), then started again;
* ``close_connection``: ``rabbitmqctl close_connection`` on one of the clients' connections (320);
* ``tcp_cut``: every proxied connection cut (RST);
* ``stall``: the proxies stop forwarding for 1-8 s (the clients' heartbeat of 2 s notices past 4 s).

After each fault the driver waits for the traffic to flow again (no client in an outage, every publisher
confirmed and every consumer received something since) -- the time to recover of that fault, counted from
the start of the fault's command (so it includes rabbitmqctl's own start-up, and a stall's duration); the
clients' own outages (loss to recovery, as ``on_recovered`` reports them) are kept per fault too -- and brings
a stopped node back (waiting until it is a member again and the queue's replicas are online), so the queue
never loses its quorum.  At the end (:meth:`cluster_load.Load.check`): every confirmed publish consumed at
least once, duplicates at most the publishes unconfirmed at the faults, every promise resolved once, one
consumer per consuming client (``list_consumers``); and the client process's memory (puka's allocations,
by tracemalloc) and file descriptors flat from the first fault's recovery to the end.  A summary is
printed (faults by kind, messages, longest outage, time to recover per kind), and written as JSON with
``--chaos-report PATH``.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import sys
import time
import tracemalloc
import uuid
from collections import Counter, defaultdict

import pytest
from cluster_load import PATIENCE, Consumer, Load, Publisher, wait_for
from faults import Proxy, fd_count

pytestmark = pytest.mark.cluster

KINDS = ("node_stop", "node_kill", "close_connection", "tcp_cut", "stall")
#: the clients' heartbeat (seconds): a stall longer than twice this is a dead connection
HEARTBEAT = 2
#: growth allowed from the first recovery to the end: puka's traced memory, open file descriptors
MEMORY_SLACK = 2 * 1024 * 1024
FD_SLACK = 8


def puka_memory() -> int:
    """Bytes currently allocated by puka's own code (tracemalloc, traced since the soak began)."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/puka/*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


class Driver:
    """Injects the faults and keeps the record."""

    def __init__(self, cluster, load: Load, proxies: list[Proxy], rng: random.Random) -> None:
        self.cluster = cluster
        self.load = load
        self.proxies = proxies
        self.rng = rng
        self.faults: list[dict] = []

    def inject(self, kind: str) -> dict:
        cluster, rng = self.cluster, self.rng
        record: dict = {"kind": kind, "at": round(time.monotonic() - self.started, 1)}
        started = time.monotonic()
        outages_before = [len(w.outages) for w in self.load.workers]
        revive = None
        if kind in ("node_stop", "node_kill"):
            k = rng.randrange(1, cluster.size + 1)
            record["node"] = k
            if kind == "node_stop":
                cluster.stop_node(k)
            else:
                cluster.kill(k)
            revive = k
        elif kind == "close_connection":
            names = [w.name for w in self.load.workers]
            name = rng.choice(names)
            record["client"] = name
            pids = self.connection_pids(name)
            record["closed"] = len(pids)
            for pid in pids:
                cluster.rabbitmqctl(self.any_node(), "close_connection", pid, "chaos", check=False)
        elif kind == "tcp_cut":
            for proxy in self.proxies:
                proxy.cut()
        elif kind == "stall":
            seconds = round(rng.uniform(1.0, 8.0), 1)
            record["seconds"] = seconds
            for proxy in self.proxies:
                proxy.stall()
            time.sleep(seconds)  # the fault itself: the proxies hold the traffic this long
            for proxy in self.proxies:
                proxy.resume()
        self.load.wait_flowing()
        record["recover_seconds"] = round(time.monotonic() - started, 3)
        # what the clients themselves measured: loss to recovery, for each connection this fault took
        record["client_outages"] = [
            round(o, 3) for w, n in zip(self.load.workers, outages_before) for o in w.outages[n:]
        ]
        if revive is not None:
            cluster.start_node(revive)
            cluster.wait_members(cluster.size, index=revive)
            wait_for("the queue's replicas online", self.replicas_online, PATIENCE, 0.5)
        self.faults.append(record)
        return record

    def any_node(self) -> int:
        return self.cluster.running()[0]

    def connection_pids(self, name: str) -> list[str]:
        out = self.cluster.rabbitmqctl(self.any_node(), "list_connections", "pid", "client_properties", "-q", "-s")
        pattern = re.compile(r'\{"connection_name","%s"\}' % re.escape(name))
        return [line.split("\t")[0] for line in out.splitlines() if pattern.search(line)]

    def replicas_online(self) -> bool:
        rows = [q for q in self.cluster.queues() if q["name"] == self.load.queue]
        return bool(rows) and len(rows[0].get("online") or []) == self.cluster.size


def test_chaos_soak(cluster, request):
    seconds = float(request.config.getoption("--chaos-seconds"))
    seed = request.config.getoption("--chaos-seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    print("\nchaos soak: %.0f s, seed %d (replay with --chaos-seed %d)" % (seconds, seed, seed), flush=True)
    rng = random.Random(seed)
    for k in range(1, cluster.size + 1):
        if not cluster.pid(k):
            cluster.start_node(k)
    cluster.wait_members(cluster.size)
    queue = "puka-chaos-%s" % uuid.uuid4().hex[:8]
    proxies = [Proxy(("127.0.0.1", node.amqp_port)) for node in cluster.nodes]
    proxied = "amqp://guest:guest@%s/" % ",".join("127.0.0.1:%d" % p.port for p in proxies)
    tracemalloc.start()
    workers = [
        Publisher(cluster.url, queue, "chaos-pub-direct", heartbeat=HEARTBEAT),
        Publisher(proxied, queue, "chaos-pub-proxied", heartbeat=HEARTBEAT),
        Consumer(cluster.url, queue, "chaos-con-direct", heartbeat=HEARTBEAT),
        Consumer(proxied, queue, "chaos-con-proxied", heartbeat=HEARTBEAT),
    ]
    load = Load(cluster, queue, workers)
    driver = Driver(cluster, load, proxies, rng)
    began = time.monotonic()
    try:
        load.start()
        load.wait_confirms(20)
        driver.started = time.monotonic()
        samples = []
        end = driver.started + seconds
        while time.monotonic() < end:
            record = driver.inject(rng.choice(KINDS))
            samples.append((fd_count(), puka_memory()))
            print("  fault %(kind)s at %(at)ss: traffic back after %(recover_seconds)ss" % record, flush=True)
            time.sleep(rng.uniform(1.0, 4.0))  # the pace of the faults ("every few seconds"), not a wait
        soaked = time.monotonic() - driver.started
        load.wait_confirms(20)
        figures = load.check()
        final_fds, final_memory = fd_count(), puka_memory()
    finally:
        load.kill_switch()
        for proxy in proxies:
            proxy.close()
        tracemalloc.stop()
        try:
            cluster.rabbitmqctl(cluster.running()[0], "delete_queue", queue, check=False)
        except Exception:
            pass
    for proxy in proxies:
        assert proxy.error is None, proxy.error
    by_kind: dict[str, list[float]] = defaultdict(list)
    client_outages: dict[str, list[float]] = defaultdict(list)
    for record in driver.faults:
        by_kind[record["kind"]].append(record["recover_seconds"])
        client_outages[record["kind"]] += record["client_outages"]
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seed": seed,
        "seconds": round(soaked, 1),
        "wall_seconds": round(time.monotonic() - began, 1),
        "faults": dict(Counter(record["kind"] for record in driver.faults)),
        "faults_total": len(driver.faults),
        **figures,
        "recover_seconds": {
            kind: {
                "median": round(statistics.median(values), 3),
                "max": round(max(values), 3),
                "count": len(values),
            }
            for kind, values in sorted(by_kind.items())
        },
        "client_outage_seconds": {
            kind: {"median": round(statistics.median(values), 3), "max": round(max(values), 3), "count": len(values)}
            for kind, values in sorted(client_outages.items())
            if values  # a fault may take no client's connection (a node none was on)
        },
        "fds": {"after_first_fault": samples[0][0], "max": max(s[0] for s in samples), "end": final_fds},
        "puka_memory_bytes": {
            "after_first_fault": samples[0][1],
            "max": max(s[1] for s in samples),
            "end": final_memory,
        },
        "fault_log": driver.faults,
    }
    print("chaos summary:\n" + json.dumps({k: v for k, v in summary.items() if k != "fault_log"}, indent=2))
    report = request.config.getoption("--chaos-report")
    if report:
        with open(report, "w") as f:
            json.dump(summary, f, indent=2)
    sys.stdout.flush()
    assert len(driver.faults) >= 1
    assert final_fds <= samples[0][0] + FD_SLACK, summary["fds"]
    assert final_memory <= samples[0][1] + MEMORY_SLACK, summary["puka_memory_bytes"]
