#!/usr/bin/env python3
"""A throwaway RabbitMQ cluster beside the system broker, for failover tests.

Usage::

    tools/cluster.py start [N]          # N nodes (default 3), joined into one cluster
    tools/cluster.py stop               # stop every process this tool started
    tools/cluster.py status
    tools/cluster.py node K stop_app|start_app|stop|start|kill
    tools/cluster.py node K rabbitmqctl ARGS...

Options (before the command): ``--dir PATH`` (default ``$PUKA_CLUSTER_DIR`` or
``<tmp>/puka-cluster``), ``--timeout SECONDS`` for each wait.

Theory of operation: everything a node needs lives under one directory
(``--dir``): a HOME of its own (so its own Erlang cookie), per node a
``rabbitmq-env.conf`` (pointed at by ``RABBITMQ_CONF_ENV_FILE``, so the system
node's ``/etc/rabbitmq`` files are never read), a ``rabbitmq.conf``, an empty
enabled-plugins list, and the mnesia and log directories.  The tool starts its
own ``epmd`` on port 4370 (``ERL_EPMD_PORT``), bound to 127.0.0.1, so the
nodes' names never reach the system's epmd on 4369.  Node K (1-based) is
``pukaK@localhost`` with AMQP on 127.0.0.1:(5679+K) and Erlang distribution on
127.0.0.1:(25679+K).  ``--instance I`` (or ``$PUKA_CLUSTER_INSTANCE``) runs a
cluster beside another one: nodes ``pukaI-K@localhost``, every port shifted by
10*I (epmd by I), its own directory.  Nodes are started with ``/usr/lib/rabbitmq/bin/
rabbitmq-server -detached`` run directly (the ``/usr/sbin`` wrapper would switch
to the rabbitmq user and pick up the system node's cookie); node 2 and up join
node 1 with ``stop_app; reset; join_cluster; start_app``.

Every pid the tool starts (the epmd, each node's Erlang VM, read from the pid
file the node writes) is recorded in ``state.json`` under the directory, and
only those are ever stopped or killed -- after checking that the process still
is the one started (its command line names the node or the port).  The system
node (``rabbit@localhost`` on 5672) and the system epmd are never touched.
Each wait (a node answering AMQP, ``cluster_status`` listing the members, a
process ending) polls its condition up to a bounded timeout; a failure raises
:class:`ClusterError` naming the command and its output.

As a module (the tests use it)::

    cluster = Cluster()            # the default directory
    cluster.start(3)
    cluster.stop_app(2); cluster.start_app(2); cluster.kill(1); cluster.start_node(1)
    cluster.rabbitmqctl(1, "list_queues", "name", "type")
    cluster.list_consumers()       # every consumer of the cluster (dicts)
    cluster.queue_leader("q")      # "puka2@localhost"
    cluster.stop()

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from ensure_broker import answers

SBIN = "/usr/lib/rabbitmq/bin"
EPMD_PORT = 4370
AMQP_BASE = 5679
DIST_BASE = 25679
#: ports of cluster ``instance`` i are shifted by i * INSTANCE_STRIDE (epmd by i)
INSTANCE_STRIDE = 10
HOST = "127.0.0.1"
SYSTEM_NODE = "rabbit@localhost"
DEFAULT_TIMEOUT = 90.0

__all__ = ["Cluster", "ClusterError", "DEFAULT_DIR"]

DEFAULT_INSTANCE = int(os.environ.get("PUKA_CLUSTER_INSTANCE") or 0)


def default_dir(instance: int = 0) -> str:
    """``$PUKA_CLUSTER_DIR``, or ``<tmp>/puka-cluster`` (``-<instance>`` after it when not 0)."""
    suffix = "-%d" % instance if instance else ""
    return os.environ.get("PUKA_CLUSTER_DIR") or os.path.join(tempfile.gettempdir(), "puka-cluster" + suffix)


DEFAULT_DIR = default_dir(DEFAULT_INSTANCE)


class ClusterError(RuntimeError):
    """A cluster command failed or a condition was not met in time: names the command and its output."""

    def __init__(self, command: str, output: str = "") -> None:
        self.command = command
        self.output = output
        text = command if not output else "%s\n--- output ---\n%s" % (command, output.strip()[-4000:])
        super().__init__(text)


def _wait(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll ``predicate`` until true; ClusterError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise ClusterError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def _port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def answers_amqp(port: int, host: str = HOST, timeout: float = 2.0) -> bool:
    """True when ``host:port`` answers the AMQP 0-9-1 header with a connection.start frame."""
    return answers(host, port, timeout)


def _identity(pid: int) -> str:
    """A process's command line and environment, NULs as spaces ("" when unreadable)."""
    parts = []
    for name in ("cmdline", "environ"):
        try:
            with open("/proc/%d/%s" % (pid, name), "rb") as f:
                parts.append(f.read().replace(b"\0", b" ").decode("utf-8", "replace"))
        except OSError:
            pass
    return " ".join(parts) + " "


def _alive(pid: int | None, *markers: str) -> bool:
    """``pid`` is running and its command line or environment holds every marker (a reused pid is never ours)."""
    if not pid:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        return False
    identity = _identity(pid)
    return all(marker in identity for marker in markers)


class Node:
    """Node ``index`` (1-based) of a cluster under ``root``."""

    def __init__(self, root: str, index: int, instance: int = 0) -> None:
        self.index = index
        self.name = ("puka%d@localhost" % index) if not instance else ("puka%d-%d@localhost" % (instance, index))
        self.amqp_port = AMQP_BASE + instance * INSTANCE_STRIDE + index
        self.dist_port = DIST_BASE + instance * INSTANCE_STRIDE + index
        self.dir = os.path.join(root, "node%d" % index)
        self.pid_file = os.path.join(self.dir, "pid")

    @property
    def url(self) -> str:
        return "amqp://guest:guest@%s:%d/" % (HOST, self.amqp_port)

    def __repr__(self) -> str:
        return "<Node %s amqp %d>" % (self.name, self.amqp_port)


class Cluster:
    """A throwaway cluster under ``root``.  See the module docstring."""

    def __init__(
        self,
        root: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        log: Callable[[str], None] | None = None,
        instance: int = DEFAULT_INSTANCE,
    ) -> None:
        if not 0 <= instance <= 9:
            raise ClusterError("instance %r: 0 to 9" % (instance,))
        self.instance = instance
        self.epmd_port = EPMD_PORT + instance
        self.root = os.path.abspath(root or default_dir(instance))
        self.timeout = timeout
        self.log = log or (lambda text: None)
        self.home = os.path.join(self.root, "home")
        self.state_file = os.path.join(self.root, "state.json")
        self.size = 0
        self.epmd_pid: int | None = None
        self.pids: dict[int, int | None] = {}
        self._load()

    # --- recorded state -----------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            with open(self.state_file) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return
        self.size = int(state.get("size", 0))
        self.epmd_pid = state.get("epmd_pid")
        self.pids = {int(k): v for k, v in state.get("pids", {}).items()}

    def _save(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"size": self.size, "epmd_pid": self.epmd_pid, "pids": self.pids}, f)
        os.replace(tmp, self.state_file)

    @property
    def nodes(self) -> list[Node]:
        return [self.node(k) for k in range(1, self.size + 1)]

    def node(self, index: int) -> Node:
        if not 1 <= index <= max(self.size, 1) or index > 9:
            raise ClusterError("no node %d (the cluster has %d)" % (index, self.size))
        return Node(self.root, index, self.instance)

    @property
    def url(self) -> str:
        """One URL naming every node: ``amqp://guest:guest@127.0.0.1:5680,127.0.0.1:5681,.../``."""
        return "amqp://guest:guest@%s/" % ",".join("%s:%d" % (HOST, n.amqp_port) for n in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    # --- the environment of every command -----------------------------------------------------------

    def _env(self, node: Node) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=self.home,
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=HOST,
            RABBITMQ_CONF_ENV_FILE=os.path.join(node.dir, "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_CONFIG_FILE=os.path.join(node.dir, "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(node.dir, "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=os.path.join(node.dir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(node.dir, "log"),
            RABBITMQ_PID_FILE=node.pid_file,
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _prepare(self, node: Node) -> None:
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(node.dir, sub), exist_ok=True)
        files = {
            "rabbitmq-env.conf": "NODENAME=%s\nNODE_IP_ADDRESS=%s\nNODE_PORT=%d\n" % (node.name, HOST, node.amqp_port),
            "rabbitmq.conf": (
                "listeners.tcp.1 = %s:%d\n"
                "loopback_users = none\n"
                "log.console = false\n"
                "log.file.level = info\n"
                "disk_free_limit.absolute = 50MB\n" % (HOST, node.amqp_port)
            ),
            "enabled_plugins": "[].\n",
        }
        for name, text in files.items():
            with open(os.path.join(node.dir, name), "w") as f:
                f.write(text)

    def _run(self, argv: Sequence[str], env: dict[str, str], timeout: float, check: bool = True) -> str:
        command = " ".join(argv)
        try:
            done = subprocess.run(
                list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            raise ClusterError("%s: no answer within %.0fs" % (command, timeout), str(out)) from None
        output = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise ClusterError("%s: exit status %d" % (command, done.returncode), output)
        return output

    def rabbitmqctl(self, index: int, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """``rabbitmqctl -n <node K> ARGS...`` (stdout and stderr); ClusterError when it fails."""
        node = self.node(index)
        argv = [os.path.join(SBIN, "rabbitmqctl"), "-n", node.name, *args]
        return self._run(argv, self._env(node), timeout, check)

    # --- epmd -----------------------------------------------------------------------------------------

    def _start_epmd(self) -> None:
        if _alive(self.epmd_pid, "epmd", "-port %d " % self.epmd_port):
            return
        if _port_open(self.epmd_port):
            raise ClusterError(
                "start epmd on port %d: the port is in use by a process this tool did not start" % self.epmd_port
            )
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        proc = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", HOST],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.epmd_pid = proc.pid
        self._save()
        _wait("epmd on port %d" % self.epmd_port, lambda: _port_open(self.epmd_port), 10)

    def _stop_epmd(self) -> None:
        pid = self.epmd_pid
        if _alive(pid, "epmd", "-port %d " % self.epmd_port):
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            _wait("epmd (pid %d) to exit" % pid, lambda: not _alive(pid, "epmd", "-port %d " % self.epmd_port), 10)
        try:
            os.waitpid(pid or -1, os.WNOHANG)  # reap it when it is our child
        except (ChildProcessError, OSError):
            pass
        self.epmd_pid = None
        self._save()

    # --- one node ---------------------------------------------------------------------------------------

    def pid(self, index: int) -> int | None:
        """The pid of node ``index``'s Erlang VM when it runs (the process this tool started), else None."""
        pid = self.pids.get(index)
        return pid if pid and _alive(pid, *self._markers(self.node(index))) else None

    def _markers(self, node: Node) -> tuple[str, str]:
        """What identifies node's VM: its name and this cluster's HOME, in its environment."""
        return ("RABBITMQ_NODENAME=%s " % node.name, "HOME=%s " % self.home)

    def start_node(self, index: int, wait: bool = True) -> None:
        """Start node ``index``'s VM (and app); with ``wait``, until it answers AMQP."""
        node = self.node(index)
        running = self.pid(index)
        if running:
            raise ClusterError("start %s: it is already running (pid %d)" % (node.name, running))
        for port in (node.amqp_port, node.dist_port):
            if _port_open(port):
                raise ClusterError(
                    "start %s: port %d is in use by a process this tool did not start" % (node.name, port)
                )
        self._start_epmd()
        self._prepare(node)
        try:
            os.unlink(node.pid_file)
        except FileNotFoundError:
            pass
        argv = [os.path.join(SBIN, "rabbitmq-server"), "-detached"]
        self.log("starting %s (amqp %d, dist %d)" % (node.name, node.amqp_port, node.dist_port))
        self._run(argv, self._env(node), 60)
        _wait("%s to write its pid file" % node.name, lambda: self._read_pid(node) is not None, self.timeout)
        self.pids[index] = self._read_pid(node)
        self._save()
        if wait:
            self.wait_amqp(index)

    def _read_pid(self, node: Node) -> int | None:
        try:
            with open(node.pid_file) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid, *self._markers(node)) else None

    def wait_amqp(self, index: int, timeout: float | None = None) -> None:
        node = self.node(index)

        def up() -> bool:
            if not self.pid(index):
                log = self._log_tail(node)
                raise ClusterError("%s exited while starting" % node.name, log)
            return answers_amqp(node.amqp_port)

        _wait("%s to answer AMQP on %d" % (node.name, node.amqp_port), up, timeout or self.timeout, 0.2)

    def _log_tail(self, node: Node) -> str:
        path = os.path.join(node.dir, "log", node.name + ".log")
        try:
            with open(path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return "(no log at %s)" % path

    def stop_node(self, index: int, timeout: float | None = None) -> None:
        """Stop node ``index`` gracefully (``rabbitmqctl stop``) and wait for its VM to exit; kill it if it hangs."""
        node = self.node(index)
        pid = self.pid(index)
        if not pid:
            return
        self.log("stopping %s" % node.name)
        try:
            self.rabbitmqctl(index, "stop", timeout=timeout or self.timeout)
        except ClusterError as exc:
            self.log("%s; killing it" % exc)
            self.kill(index)
            return
        _wait(
            "%s (pid %d) to exit" % (node.name, pid),
            lambda: not _alive(pid, *self._markers(node)),
            timeout or self.timeout,
        )
        self.pids[index] = None
        self._save()

    def kill(self, index: int) -> None:
        """``kill -9`` node ``index``'s VM (only the pid this tool recorded) and wait until it is gone."""
        node = self.node(index)
        pid = self.pid(index)
        if not pid:
            return
        self.log("killing %s (pid %d)" % (node.name, pid))
        os.kill(pid, signal.SIGKILL)
        _wait("%s (pid %d) to die" % (node.name, pid), lambda: not _alive(pid, *self._markers(node)), 30)
        self.pids[index] = None
        self._save()

    def stop_app(self, index: int) -> None:
        """``rabbitmqctl stop_app``: the VM stays, the broker (and its AMQP listener) stops."""
        self.rabbitmqctl(index, "stop_app", timeout=self.timeout)
        node = self.node(index)
        _wait("%s to stop answering AMQP" % node.name, lambda: not _port_open(node.amqp_port), 30)

    def start_app(self, index: int, wait: bool = True) -> None:
        self.rabbitmqctl(index, "start_app", timeout=self.timeout)
        if wait:
            self.wait_amqp(index)

    # --- the cluster ------------------------------------------------------------------------------------

    def running(self) -> list[int]:
        return [k for k in range(1, self.size + 1) if self.pid(k)]

    def start(self, size: int = 3) -> None:
        """Start ``size`` fresh nodes (a clean directory) and join them into one cluster."""
        if not 1 <= size <= 9:
            raise ClusterError("start %d: a cluster has 1 to 9 nodes" % size)
        if self.running() or _alive(self.epmd_pid, "epmd", "-port %d " % self.epmd_port):
            raise ClusterError("start: a cluster under %s is running; stop it first" % self.root)
        if not os.path.exists(os.path.join(SBIN, "rabbitmq-server")):
            raise ClusterError("start: %s/rabbitmq-server not found (is RabbitMQ installed?)" % SBIN)
        shutil.rmtree(self.root, ignore_errors=True)
        os.makedirs(self.home)
        cookie = os.path.join(self.home, ".erlang.cookie")
        with open(cookie, "w") as f:
            f.write("PUKACLUSTER%s" % os.urandom(8).hex().upper())
        os.chmod(cookie, 0o400)
        self.size = size
        self.pids = {}
        self._save()
        try:
            for k in range(1, size + 1):
                self.start_node(k, wait=False)
            for k in range(1, size + 1):
                self.wait_amqp(k)
            first = self.node(1).name
            for k in range(2, size + 1):
                self.rabbitmqctl(k, "stop_app")
                self.rabbitmqctl(k, "reset")
                self.rabbitmqctl(k, "join_cluster", first)
                self.rabbitmqctl(k, "start_app")
            self.wait_members(size)
            for k in range(1, size + 1):
                self.wait_amqp(k)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node and the epmd this tool started (kill -9 what does not stop in time)."""
        for k in sorted(self.pids, reverse=True):
            if self.pid(k):
                self.kill(k) if not self._stoppable(k) else self.stop_node(k, timeout=30)
        self._stop_epmd()

    def _stoppable(self, index: int) -> bool:
        # A node whose app is stopped (or that cannot be reached) stops the same way; only a VM
        # that does not answer at all is killed.
        return bool(self.pid(index))

    def cluster_status(self, index: int | None = None) -> dict[str, Any]:
        """``cluster_status`` as JSON from node ``index`` (or the first running node)."""
        k = index or self._any_running()
        out = self.rabbitmqctl(k, "cluster_status", "--formatter", "json", timeout=30)
        try:
            return dict(json.loads(out[out.index("{") :]))
        except ValueError:
            raise ClusterError("rabbitmqctl -n %s cluster_status: not JSON" % self.node(k).name, out) from None

    def wait_members(self, count: int, timeout: float | None = None, index: int | None = None) -> None:
        """Until ``cluster_status`` lists ``count`` running members on node ``index`` (None: on each running
        node; a node that listed them once is not asked again)."""
        done: set[int] = set()

        def members_ok() -> bool:
            for k in [index] if index else self.running():
                if k in done:
                    continue
                try:
                    running = self.cluster_status(k).get("running_nodes", [])
                except ClusterError:
                    return False
                if len(running) < count:
                    return False
                done.add(k)
            return True

        _wait("%d running members in cluster_status" % count, members_ok, timeout or self.timeout, 0.5)

    def _any_running(self, exclude: Sequence[int] = ()) -> int:
        for k in self.running():
            if k not in exclude and answers_amqp(self.node(k).amqp_port):
                return k
        raise ClusterError("no node of the cluster is running")

    def list_consumers(self, index: int | None = None) -> list[dict[str, Any]]:
        """Every consumer of the cluster (``list_consumers``: queue_name, consumer_tag, channel_pid, ...)."""
        k = index or self._any_running()
        out = self.rabbitmqctl(
            k, "list_consumers", "queue_name", "consumer_tag", "channel_pid", "--formatter", "json", timeout=30
        )
        return list(json.loads(out[out.index("[") :]))

    def queues(self, index: int | None = None) -> list[dict[str, Any]]:
        k = index or self._any_running()
        out = self.rabbitmqctl(
            k,
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "online",
            "messages",
            "--formatter",
            "json",
            timeout=30,
        )
        return list(json.loads(out[out.index("[") :]))

    def queue_leader(self, queue: str, index: int | None = None) -> str:
        """The node name of a quorum queue's leader (or a classic queue's home node)."""
        for q in self.queues(index):
            if q.get("name") == queue:
                return str(q.get("leader") or q.get("pid", ""))
        raise ClusterError("queue %r not found on the cluster" % queue)

    def node_index(self, name: str) -> int:
        for n in self.nodes:
            if n.name == name:
                return n.index
        raise ClusterError("node %r is not part of this cluster" % name)

    def transfer_leader(self, queue: str, to: int, vhost: str = "/") -> None:
        """Move a quorum queue's leader to node ``to`` (no node stops) and wait until it has moved."""
        target = self.node(to).name
        expr = (
            'case rabbit_amqqueue:lookup(rabbit_misc:r(<<"%s">>, queue, <<"%s">>)) of '
            "{ok, Q} -> rabbit_quorum_queue:transfer_leadership(Q, '%s'); E -> E end." % (vhost, queue, target)
        )
        self.rabbitmqctl(to, "eval", expr, timeout=60)
        _wait("%s to lead %s" % (target, queue), lambda: self.queue_leader(queue) == target, 60, 0.3)

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for n in self.nodes:
            pid = self.pid(n.index)
            rows.append(
                {
                    "node": n.name,
                    "pid": pid,
                    "amqp": "%s:%d" % (HOST, n.amqp_port),
                    "dist": "%s:%d" % (HOST, n.dist_port),
                    "answers_amqp": bool(pid) and answers_amqp(n.amqp_port),
                }
            )
        return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/cluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="where the cluster lives (default: %s)" % DEFAULT_DIR)
    parser.add_argument(
        "--instance",
        type=int,
        default=DEFAULT_INSTANCE,
        help="0-9: a cluster beside the others; ports shifted by 10 per instance, epmd by 1 "
        "(default $PUKA_CLUSTER_INSTANCE or 0)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds for each wait")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start N nodes and join them")
    p_start.add_argument("size", nargs="?", type=int, default=3)
    sub.add_parser("stop", help="stop every process this tool started")
    sub.add_parser("status", help="the nodes, their pids and whether they answer AMQP")
    p_node = sub.add_parser("node", help="act on node K")
    p_node.add_argument("index", type=int)
    p_node.add_argument("action", choices=("stop_app", "start_app", "stop", "start", "kill", "rabbitmqctl"))
    p_node.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    cluster = Cluster(opts.dir, opts.timeout, log=lambda text: print(text, file=sys.stderr), instance=opts.instance)
    try:
        if opts.command == "start":
            started = time.monotonic()
            cluster.start(opts.size)
            print("cluster of %d up in %.1fs: %s" % (opts.size, time.monotonic() - started, cluster.url))
        elif opts.command == "stop":
            cluster.stop()
        elif opts.command == "status":
            if not cluster.size:
                print("no cluster under %s" % cluster.root)
                return 1
            for row in cluster.status():
                print("%(node)-18s pid %(pid)-8s amqp %(amqp)s dist %(dist)s answers AMQP: %(answers_amqp)s" % row)
        else:
            k, action = opts.index, opts.action
            if action == "rabbitmqctl":
                print(cluster.rabbitmqctl(k, *opts.args), end="")
            elif action == "stop_app":
                cluster.stop_app(k)
            elif action == "start_app":
                cluster.start_app(k)
            elif action == "stop":
                cluster.stop_node(k)
            elif action == "start":
                cluster.start_node(k)
            else:
                cluster.kill(k)
    except ClusterError as exc:
        print("cluster.py: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
