#!/usr/bin/env python3
"""End-to-end benchmark: puka against its peers on one broker, in one run, as ratios.

Run by hand with the dev venv (it makes the peers' venvs under ``.peers/`` on first use)::

    .venv/bin/python tools/bench.py                     # all clients, all scenarios, 5 repetitions
    .venv/bin/python tools/bench.py --reps 3 --n 20000 --json /tmp/bench.json
    .venv/bin/python tools/bench.py --profile           # puka only, scenarios a and b, under cProfile
    # client CPU per message against the raw-socket floor, at three body sizes
    .venv/bin/python tools/bench.py --clients puka,ceiling --scenarios ab --sizes 100,4096,65536
    # the same, A/B against another checkout of puka (e.g. ``git archive main | tar -x -C /tmp/base``)
    .venv/bin/python tools/bench.py --clients puka,ceiling --scenarios ab --sizes 100,65536 --baseline /tmp/base

Clients, each run as a worker process (``benchmarks/worker_*.py``) that prints JSON:

``puka``     this repository, with the interpreter running this script;
``puka008``  the original puka 0.0.8 (same package name, so its own venv ``.peers/venv-puka008``);
``pika``     pika's BlockingConnection with ``confirm_delivery`` (venv ``.peers/venv-peers``);
``aiormq``   aiormq on a channel with publisher confirms (same venv);
``puka-asyncio``  this repository's ``puka.asyncio`` client (scenarios a-c; goal: a >= 3x aiormq);
``ceiling``  a minimal raw-socket client (``benchmarks/raw_amqp.py``, stdlib only; scenarios a-c):
             the floor of client CPU per message;
``puka-base``  with ``--baseline DIR``: the ``puka/`` of another checkout, driven by this checkout's
             ``benchmarks/worker_puka.py`` and this interpreter, for A/B comparisons of a change.

Scenarios (see ``benchmarks/bench_common.py``), defaults in brackets:

a  pipelined confirmed publish [50000 x 100 B; pika, which cannot pipeline, 5000; aiormq 10000]
b  consume with prefetch 1000 and an ack per message [as a; the queue is filled before timing]
c  one-at-a-time confirmed publish [5000]
d  big messages round trip: publish confirmed, then consume and ack [20 x 16 MiB]
e  parallel queue declares, server-named and exclusive [500; pika and aiormq send them one at a time]

Only the scenario's own work is timed: not the interpreter start, the
connection, the queue set-up nor the filling of b's queue.  Rates are per
second of wall clock; each worker also reports the CPU time its process spent
in the timed part, which says what the client itself costs and suffers less
from a busy machine.

With ``--sizes``, scenarios a and b run once per body size (each size a case
of its own, ``a@4096``); ``n`` shrinks for big bodies so that a run moves at
most ``--bytes-budget`` bytes (the broker holds b's whole queue).  The report
then has a table of client CPU per message against the floor (``ceiling``):
puka's cost ratio per case, with PASS/MISS against ``--floor-goal`` (1.5), and
the user/system split and page faults of both.

The machine is shared and noisy, so each repetition runs every case with
every client, in a shuffled order, and the report gives medians with their
spread ((max - min) / median).  A ratio (e.g. puka/puka008) is computed per
repetition, from two runs made close in time; its median and range over the
repetitions are reported.  The verdict compares the median with the goal
(PASS/MISS), starred when the per-repetition ratios straddle the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "benchmarks")
PEERS_DIR = os.path.join(ROOT, ".peers")
DEFAULT_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
MIB = 1024 * 1024


@dataclass
class Venv:
    """A virtualenv of peers, made on first use."""

    path: str
    packages: list[str]
    imports: list[str]

    @property
    def python(self) -> str:
        return os.path.join(self.path, "bin", "python")

    def ready(self) -> bool:
        if not os.path.exists(self.python):
            return False
        check = "import " + ", ".join(self.imports)
        return subprocess.run([self.python, "-c", check], capture_output=True).returncode == 0

    def ensure(self, setup: bool) -> str | None:
        """Make the venv if needed (when ``setup``); returns why it is unusable, or None."""
        if self.ready():
            return None
        if not setup:
            return "%s is missing or incomplete (run without --no-setup to make it)" % self.path
        print("setting up %s: pip install %s" % (os.path.relpath(self.path, ROOT), " ".join(self.packages)), flush=True)
        steps = []
        if not os.path.exists(self.python):
            steps.append([sys.executable, "-m", "venv", self.path])
        steps.append([self.python, "-m", "pip", "install", "-q", *self.packages])
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode:
                return "%s failed: %s" % (" ".join(step), (done.stderr or done.stdout).strip()[-500:])
        return None if self.ready() else "%s: the packages do not import" % self.path


VENV_PUKA008 = Venv(os.path.join(PEERS_DIR, "venv-puka008"), ["puka==0.0.8", "future"], ["puka", "future"])
VENV_PEERS = Venv(os.path.join(PEERS_DIR, "venv-peers"), ["pika>=1.3", "aiormq>=6"], ["pika", "aiormq"])


@dataclass
class ClientSpec:
    name: str
    script: str
    args: list[str] = field(default_factory=list)
    venv: Venv | None = None  # None: the interpreter running this script
    scenarios: str = "abcde"

    @property
    def python(self) -> str:
        return self.venv.python if self.venv else sys.executable


CLIENTS = {
    "puka": ClientSpec("puka", "worker_puka.py", ["--impl", "puka"]),
    "puka008": ClientSpec("puka008", "worker_puka.py", ["--impl", "puka008"], VENV_PUKA008),
    "pika": ClientSpec("pika", "worker_pika.py", venv=VENV_PEERS),
    "aiormq": ClientSpec("aiormq", "worker_aiormq.py", venv=VENV_PEERS),
    "puka-asyncio": ClientSpec("puka-asyncio", "worker_puka_asyncio.py", scenarios="abc"),
    "ceiling": ClientSpec("ceiling", "worker_raw.py", scenarios="abc"),
}

SCENARIOS = {
    "a": ("pipelined confirmed publish", "msgs/s"),
    "b": ("consume, prefetch + ack each", "msgs/s"),
    "c": ("one-at-a-time confirmed publish", "msgs/s"),
    "d": ("big messages round trip", "MiB/s"),
    "e": ("parallel queue declares", "decl/s"),
}

#: (scenario, numerator, denominator, goal): the ratios of rates that are targets.
GOALS = [
    ("a", "puka", "ceiling", 0.7),
    ("b", "puka", "ceiling", 0.7),
    ("a", "puka", "puka008", 1.8),
    ("b", "puka", "puka008", 1.5),
    ("c", "puka", "puka008", 1.2),
    ("d", "puka", "puka008", 2.0),
    ("e", "puka", "puka008", 1.0),
    ("a", "puka-asyncio", "aiormq", 3.0),
]
#: Ratios printed for information, in every scenario both clients ran.
INFO_PEERS = ["pika", "aiormq"]
#: The raw-socket client: the floor of client CPU per message (goal: puka within --floor-goal of it).
FLOOR = "ceiling"
#: Scenarios run once per body size with --sizes; the floor's goal applies to them.
SIZED = "ab"


@dataclass(frozen=True)
class Case:
    """One scenario at one body size: what a repetition runs with every client."""

    scenario: str
    size: int
    sized: bool  # several sizes were asked for: the label names the size

    @property
    def label(self) -> str:
        return "%s@%d" % (self.scenario, self.size) if self.sized else self.scenario

    @property
    def title(self) -> str:
        title = "%s. %s" % (self.scenario, SCENARIOS[self.scenario][0])
        return "%s, %s" % (title, fmt_size(self.size)) if self.sized else title


def fmt_size(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return "%d KiB" % (size // 1024)
    return "%d B" % size


def make_cases(args: argparse.Namespace, scenarios: list[str]) -> list[Case]:
    sizes = args.sizes or [args.size]
    sized = len(sizes) > 1
    cases = []
    for scenario in scenarios:
        if scenario in SIZED:
            cases += [Case(scenario, size, sized) for size in sizes]
        else:
            cases.append(Case(scenario, args.size, False))
    return cases


def workload(args: argparse.Namespace, client: str, scenario: str, size: int | None = None) -> tuple[int, int]:
    """(n, message size) for one client in one scenario (a and b: at ``size``, --size by default)."""
    size = args.size if size is None else size
    if scenario in SIZED:
        if scenario == "a" and client == "pika":  # not pipelined: it is scenario c again, so it gets c's n
            n = args.n_serial
        else:
            n = args.peer_n if client in INFO_PEERS else args.n
        # Big bodies: fewer messages, so the broker never holds more than the budget (b fills a queue).
        return max(1, min(n, args.bytes_budget // max(size, 1))), size
    if scenario == "c":
        return args.n_serial, args.size
    if scenario == "d":
        return args.n_big, args.big_size
    return args.n_declares, args.size


#: What is measured of every run: its wall-clock throughput, and the client's CPU efficiency.
METRICS = {
    "rate": "throughput (wall clock)",
    "cpu": "units per CPU-second of the client process",
}


def units(result: dict) -> float:
    """The work a run did, in its scenario's unit (messages, MiB or declares)."""
    if result["scenario"] == "d":
        return result["count"] * result["size"] / MIB
    return result["count"]


def measure(result: dict) -> dict[str, float | None]:
    """The metrics of one worker result."""
    cpu = result.get("cpu_seconds")
    return {
        "rate": units(result) / result["seconds"],
        "cpu": units(result) / cpu if cpu else None,
    }


def cpu_cost(units_per_cpu_second: float | None, scenario: str) -> str:
    """A CPU efficiency as a cost: µs per message or declare, ms per MiB."""
    if not units_per_cpu_second:
        return "-"
    if scenario == "d":
        return "%.3g ms/MiB" % (1e3 / units_per_cpu_second)
    return "%.3g µs" % (1e6 / units_per_cpu_second)


def run_worker(args: argparse.Namespace, client: str, scenario: str, n: int, size: int, profile: int = 0) -> dict:
    """Run one worker once; returns its JSON result, or ``{"error": ...}``."""
    spec = CLIENTS[client]
    cmd = [spec.python, os.path.join(BENCH_DIR, spec.script), *spec.args, "--scenario", scenario]
    cmd += ["--n", str(n), "--size", str(size), "--prefetch", str(args.prefetch), "--url", args.url]
    if profile:
        cmd += ["--profile", str(profile)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("PYTHONPATH", None)  # each worker sees only its own venv (and puka's worker adds the repo)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=BENCH_DIR)
    except subprocess.TimeoutExpired:
        return {"client": client, "scenario": scenario, "error": "timed out after %gs" % args.timeout}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-20:] or [""]
        error = "exit %d: %s" % (done.returncode, tail[-1])
        return {"client": client, "scenario": scenario, "error": error, "stderr": tail}
    try:
        result = json.loads(lines[-1])
        result["client"] = client  # puka-base runs puka's worker, which names itself puka
        return result
    except ValueError:
        return {"client": client, "scenario": scenario, "error": "bad output: %r" % lines[-1][:200]}


def run_once(args: argparse.Namespace, client: str, scenario: str, n: int, size: int) -> dict:
    """Run a worker; when it failed because the broker stopped answering, wait for it and run again once."""
    result = run_worker(args, client, scenario, n, size)
    if "error" in result and wait_for_broker(args.url, args.broker_wait):
        result = dict(run_worker(args, client, scenario, n, size), retried=result["error"])
    return result


def stats(values: list[float]) -> dict:
    """Median, range and spread ((max - min) / median: how far apart the repetitions were)."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / median if median else 0.0,
        "values": values,
    }


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def summarize(data: dict, clients: list[str], cases: list[Case]) -> dict:
    """summary[metric][case label][client] = stats over the repetitions."""
    summary: dict = {}
    for metric in METRICS:
        for case in cases:
            for client in clients:
                values = [v for v in data[metric][case.label][client] if v is not None]
                if values:
                    summary.setdefault(metric, {}).setdefault(case.label, {})[client] = stats(values)
    return summary


def paired_ratio(series: dict, num: str, den: str) -> dict | None:
    """Stats of num/den over the repetitions where both ran (each pair ran close together in time)."""
    pairs = [a / b for a, b in zip(series.get(num, []), series.get(den, [])) if a is not None and b]
    return stats(pairs) if pairs else None


def ratios(data: dict, clients: list[str], cases: list[Case]) -> list[dict]:
    rows = []
    for case in cases:
        scenario = case.scenario
        wanted = [(num, den, goal) for s, num, den, goal in GOALS if s == scenario]
        wanted += [("puka", peer, None) for peer in INFO_PEERS]
        for num, den, goal in wanted:
            if num not in clients or den not in clients:
                continue
            if scenario not in CLIENTS[num].scenarios or scenario not in CLIENTS[den].scenarios:
                continue
            row = {"case": case.label, "title": case.title, "ratio": "%s/%s" % (num, den), "goal": goal}
            for metric in METRICS:
                row[metric] = paired_ratio(data[metric][case.label], num, den)
            found = row["rate"]
            if found is None:
                row["verdict"] = "n/a"
            elif goal is None:
                row["verdict"] = "info"
            else:
                row["verdict"] = "PASS" if found["median"] >= goal else "MISS"
                if found["min"] < goal <= found["max"]:
                    row["verdict"] += "*"  # the paired ratios straddle the goal
            rows.append(row)
    return rows


def floor_ratios(data: dict, clients: list[str], cases: list[Case], goal: float) -> list[dict]:
    """Client CPU per message over the floor's, per repetition, for every client in a and b.

    puka's rows get PASS/MISS: the median cost ratio at most ``goal``; * when the
    per-repetition ratios straddle it.  The other clients' rows are for information.
    """
    rows = []
    for case in cases:
        if case.scenario not in SIZED or FLOOR not in clients:
            continue
        series = data["cpu"][case.label]
        for client in clients:
            if client == FLOOR or case.scenario not in CLIENTS[client].scenarios:
                continue
            found = paired_ratio(series, FLOOR, client)  # efficiency floor/client = cost client/floor
            row = {"case": case.label, "title": case.title, "client": client, "cost_ratio": found}
            if found is None:
                row["verdict"] = "n/a"
            elif client != "puka":
                row["verdict"] = "info"
            else:
                row["goal"] = goal
                row["verdict"] = "PASS" if found["median"] <= goal else "MISS"
                if found["min"] <= goal < found["max"]:
                    row["verdict"] += "*"
            rows.append(row)
    return rows


def print_tables(
    meta: dict,
    summary: dict,
    notes: dict,
    ratio_rows: list[dict],
    clients: list[str],
    cases: list[Case],
    floor_rows: list[dict],
    counters: dict,
) -> None:
    print()
    print(
        "puka end-to-end benchmark: %s, RabbitMQ %s, %d repetition(s), %s CPUs, load average %s"
        % (meta["url"], meta["broker"], meta["reps"], meta["cpus"], " -> ".join(meta["load"]))
    )
    width = 19
    title_width = max([38] + [len(case.title) + 1 for case in cases])
    header = "%-*s %-7s" % (title_width, "scenario", "unit") + "".join("%*s" % (width, c) for c in clients)
    print()
    print("THROUGHPUT: median per client, ± spread = (max-min)/median over the repetitions; higher is better")
    print(header)
    rates = summary.get("rate", {})
    for case in cases:
        if case.label in rates:
            cells = [
                "%s ±%2.0f%%" % (fmt_rate(cell["median"]), 100 * cell["spread"]) if cell else "-"
                for cell in (rates[case.label].get(client) for client in clients)
            ]
            unit = SCENARIOS[case.scenario][1]
            print("%-*s %-7s" % (title_width, case.title, unit) + "".join("%*s" % (width, c) for c in cells))
    print()
    print("CLIENT CPU COST: median CPU time of the worker process per message (d: per MiB, e: per declare); lower is")
    print("better.  Less sensitive to a busy machine than throughput; the broker's own CPU is not in it.")
    print("%-*s %-7s" % (title_width, "scenario", "") + "".join("%*s" % (width, c) for c in clients))
    cpus = summary.get("cpu", {})
    for case in cases:
        if case.label in cpus:
            cells = [
                "%s ±%2.0f%%" % (cpu_cost(cell["median"], case.scenario), 100 * cell["spread"]) if cell else "-"
                for cell in (cpus[case.label].get(client) for client in clients)
            ]
            print("%-*s %-7s" % (title_width, case.title, "") + "".join("%*s" % (width, c) for c in cells))
    print()
    print("WORKLOADS AND NOTES")
    for (label, client), note in sorted(notes.items()):
        print("  %-8s %-12s %s" % (label, client, note))
    if floor_rows:
        print_floor(floor_rows, cpus, counters, title_width)
    print()
    print("RATIOS, paired per repetition: median [min-max] of the per-repetition ratios.  The verdict compares the")
    print("throughput median with the goal; * = the per-repetition ratios straddle the goal (inconclusive run).")
    print("CPU = the same ratio of CPU efficiency (how many times less client CPU per unit puka needs).")
    print("%-14s %-*s %20s %6s  %-8s %20s" % ("ratio", title_width, "scenario", "throughput", "goal", "verdict", "CPU"))
    for row in ratio_rows:
        cells = []
        for metric in METRICS:
            found = row[metric]
            cells.append("%.2f [%.2f-%.2f]" % (found["median"], found["min"], found["max"]) if found else "-")
        goal = ">=%g" % row["goal"] if row["goal"] is not None else ""
        print(
            "%-14s %-*s %20s %6s  %-8s %20s"
            % (row["ratio"], title_width, row["title"], cells[0], goal, row["verdict"], cells[1])
        )


def print_floor(rows: list[dict], cpus: dict, counters: dict, title_width: int) -> None:
    """The table of goal 1: client CPU per message over the raw-socket floor's."""
    print()
    print("CPU PER MESSAGE AGAINST THE RAW-SOCKET FLOOR (%s): client CPU per message, median [min-max] over" % FLOOR)
    print("the repetitions; cost ratio = client/floor computed per repetition (runs close in time), median")
    print("[min-max]; puka's verdict: PASS when the median is at most the goal (* = the repetitions straddle it).")
    print("user/sys: median CPU split per message (os.times); faults: minor page faults per message.")
    print(
        "%-*s %-13s %24s %24s %8s  %-7s %22s %10s"
        % (
            title_width,
            "scenario",
            "client",
            "client CPU/msg",
            "cost ratio to floor",
            "goal",
            "verdict",
            "user/sys per msg",
            "faults",
        )
    )
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    for label, case_rows in by_case.items():
        for index, row in enumerate([None, *case_rows]):
            client = FLOOR if row is None else row["client"]
            cell = cpus.get(label, {}).get(client)
            cost = "%.3g µs [%.3g-%.3g]" % (1e6 / cell["median"], 1e6 / cell["max"], 1e6 / cell["min"]) if cell else "-"
            split = counters.get(label, {}).get(client)
            split_text = "%.3g / %.3g µs" % (split["user"], split["sys"]) if split else "-"
            faults = "%.2g" % split["faults"] if split else "-"
            if row is None:
                ratio, goal, verdict = "1 (the floor)", "", ""
            else:
                found = row["cost_ratio"]
                ratio = "%.2f [%.2f-%.2f]" % (found["median"], found["min"], found["max"]) if found else "-"
                goal = "<=%g" % row["goal"] if "goal" in row else ""
                verdict = row["verdict"]
            title = case_rows[0]["title"] if index == 0 else ""
            print(
                "%-*s %-13s %24s %24s %8s  %-7s %22s %10s"
                % (title_width, title, client, cost, ratio, goal, verdict, split_text, faults)
            )


def split_counters(runs: list[dict], cases: list[Case]) -> dict:
    """counters[case label][client] = median user and system µs per message and page faults per message."""
    by_key: dict = {}
    labels = {(case.scenario, case.size): case.label for case in cases}
    for run in runs:
        if "error" in run or "cpu_user" not in run:
            continue
        label = labels.get((run["scenario"], run["size"]))
        if label is None or not run["count"]:
            continue
        entry = by_key.setdefault(label, {}).setdefault(run["client"], {"user": [], "sys": [], "faults": []})
        entry["user"].append(1e6 * run["cpu_user"] / run["count"])
        entry["sys"].append(1e6 * run["cpu_sys"] / run["count"])
        entry["faults"].append(run["minor_faults"] / run["count"])
    return {
        label: {client: {k: statistics.median(v) for k, v in entry.items()} for client, entry in per.items()}
        for label, per in by_key.items()
    }


def broker_version(url: str) -> str:
    """The broker's version as it announces it; raises when it does not answer."""
    sys.path.insert(0, BENCH_DIR)
    try:
        import raw_amqp

        client = raw_amqp.RawClient(url)
        client.close()
        return client.server_version
    finally:
        sys.path.remove(BENCH_DIR)


def wait_for_broker(url: str, patience: float) -> bool:
    """After a failed run: True once the broker answers again if it did not (worth a rerun), else False."""
    try:
        broker_version(url)
        return False  # it answers: the failure was not an outage
    except (OSError, RuntimeError):
        pass
    print("the broker does not answer; waiting up to %gs for it" % patience, file=sys.stderr, flush=True)
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            broker_version(url)
            return True
        except (OSError, RuntimeError):
            pass
    return False


def redact(url: str) -> str:
    """The URL without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = "%s:***@%s" % (parts.username, parts.netloc.rpartition("@")[2])
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def git_state() -> dict:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "puka_dirty": bool(git("status", "--porcelain", "puka"))}


def load() -> str:
    return "%.1f" % os.getloadavg()[0]


def profile(args: argparse.Namespace, clients: list[str]) -> int:
    """Run scenarios a and b (or --scenarios) once per client under cProfile; print the top functions."""
    cases = make_cases(args, args.scenarios or ["a", "b"])
    failed = 0
    for client in clients:
        for case in cases:
            scenario = case.scenario
            if scenario not in CLIENTS[client].scenarios:
                continue
            n, size = workload(args, client, scenario, case.size)
            result = run_worker(args, client, scenario, n, size, profile=args.profile_top)
            print("=" * 100)
            if "error" in result:
                print("%s %s: %s" % (client, case.label, result["error"]))
                failed += 1
                continue
            print(
                "%s, scenario %s (%s), n=%d x %d B: %.3fs under cProfile, %s %s"
                % (
                    client,
                    scenario,
                    SCENARIOS[scenario][0],
                    n,
                    size,
                    result["seconds"],
                    fmt_rate(measure(result)["rate"]),
                    SCENARIOS[scenario][1],
                )
            )
            # Shorter file names: relative to the repository, or to the peer's site-packages.
            text = re.sub(r"\S*/site-packages/", "", result.get("profile", "(no profile)"))
            print(text.replace(ROOT + os.sep, ""))
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="broker (default: $AMQP_URL or %(default)s)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of every run (default %(default)s)")
    parser.add_argument("--n", type=int, default=50000, help="messages in a and b (default %(default)s)")
    parser.add_argument(
        "--peer-n",
        type=int,
        default=10000,
        help="messages in a and b for pika and aiormq, slow enough to need fewer (default %(default)s)",
    )
    parser.add_argument(
        "--n-serial",
        type=int,
        default=5000,
        help="messages in c, and in a for pika which cannot pipeline (default %(default)s)",
    )
    parser.add_argument("--size", type=int, default=100, help="message size in a-c (default %(default)s)")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(size) for size in s.split(",")],
        default=None,
        help="comma-separated body sizes: scenarios a and b run once per size, e.g. 100,4096,65536",
    )
    parser.add_argument(
        "--bytes-budget",
        type=int,
        default=64 * MIB,
        help="most body bytes one run of a or b moves: n shrinks for big bodies (default 64 MiB)",
    )
    parser.add_argument(
        "--floor-goal",
        type=float,
        default=1.5,
        help="goal: puka's client CPU per message at most this many times the floor's (default %(default)s)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the puka of another checkout (client puka-base) for an A/B comparison",
    )
    parser.add_argument("--n-big", type=int, default=20, help="messages in d (default %(default)s)")
    parser.add_argument("--big-size", type=int, default=16 * MIB, help="message size in d (default 16 MiB)")
    parser.add_argument("--n-declares", type=int, default=500, help="queue declares in e (default %(default)s)")
    parser.add_argument("--prefetch", type=int, default=1000, help="prefetch in b and d (default %(default)s)")
    parser.add_argument(
        "--clients",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated subset of %s (default: all; puka with --profile)" % ",".join(CLIENTS),
    )
    parser.add_argument(
        "--scenarios",
        type=lambda s: sorted(set(s.replace(",", ""))),
        default=None,
        help="subset of abcde, e.g. 'ab' (default: all; ab with --profile)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the run order shuffle")
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds one worker run may take (default %(default)s)"
    )
    parser.add_argument(
        "--broker-wait",
        type=float,
        default=120,
        help="when a run fails because the broker stopped answering, wait this long for it and rerun once",
    )
    parser.add_argument("--json", metavar="PATH", help="write every result, the summary and the ratios here")
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the short untimed run of each client first"
    )
    parser.add_argument(
        "--no-setup",
        dest="setup",
        action="store_false",
        help="do not create the peers' venvs; skip clients whose venv is missing",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: profile scenarios a and b with puka (or --clients) and print top functions",
    )
    parser.add_argument("--profile-top", type=int, default=30, help="functions shown per profile")
    args = parser.parse_args(argv)
    for client in args.clients or ():
        if client not in CLIENTS and not (client == "puka-base" and args.baseline):
            parser.error("unknown client %r (choose from %s)" % (client, ", ".join(CLIENTS)))
    for scenario in args.scenarios or ():
        if scenario not in SCENARIOS:
            parser.error("unknown scenario %r (choose from %s)" % (scenario, "".join(SCENARIOS)))
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.baseline:
        if not os.path.exists(os.path.join(args.baseline, "puka", "__init__.py")):
            parser.error("--baseline %s: no puka package there" % args.baseline)
        CLIENTS["puka-base"] = ClientSpec(
            "puka-base", "worker_puka.py", ["--impl", "puka", "--repo", os.path.abspath(args.baseline)]
        )
        if args.clients and "puka-base" not in args.clients:
            args.clients.append("puka-base")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clients = args.clients or (["puka"] if args.profile else list(CLIENTS))
    unusable = {}
    for client in clients:
        venv = CLIENTS[client].venv
        if venv is not None:
            why = venv.ensure(args.setup)
            if why:
                unusable[client] = why
    for client, why in unusable.items():
        print("skipping %s: %s" % (client, why), file=sys.stderr)
    clients = [c for c in clients if c not in unusable]
    if not clients:
        return 1
    if args.profile:
        return profile(args, clients)

    try:
        broker = broker_version(args.url)
    except (OSError, RuntimeError) as exc:
        print(
            "cannot open an AMQP connection to %s: %r (is the broker up? tools/ensure_broker.py)"
            % (redact(args.url), exc),
            file=sys.stderr,
        )
        return 2
    scenarios = args.scenarios or list(SCENARIOS)
    cases = make_cases(args, scenarios)
    rng = random.Random(args.seed)
    meta = {
        "url": redact(args.url),
        "broker": broker,
        "reps": args.reps,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git": git_state(),
        "args": dict(vars(args), url=redact(args.url)),
        "load": [load()],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    failures = []
    if args.warmup:  # fails early when a worker cannot run; primes caches
        for client in clients:
            result = run_worker(args, client, "a", 1000, min(args.sizes or [args.size]))
            if "error" in result:
                failures.append(result)
                print("warm-up of %s failed: %s" % (client, result["error"]), file=sys.stderr)

    runs: list[dict] = []
    notes: dict = {}
    data: dict = {m: {case.label: {c: [] for c in clients} for case in cases} for m in METRICS}
    started = time.monotonic()
    for rep in range(args.reps):
        order_of_cases = list(cases)
        if len(cases) > len(scenarios):
            rng.shuffle(order_of_cases)  # several sizes: their order changes too
        for case in order_of_cases:
            scenario, label = case.scenario, case.label
            order = [c for c in clients if scenario in CLIENTS[c].scenarios]
            rng.shuffle(order)
            for client in order:
                n, size = workload(args, client, scenario, case.size)
                result = run_once(args, client, scenario, n, size)
                result["rep"] = rep
                runs.append(result)
                if "error" in result:
                    failures.append(result)
                    for metric in METRICS:
                        data[metric][label][client].append(None)
                    print("rep %d %s %s: FAILED %s" % (rep + 1, label, client, result["error"]), file=sys.stderr)
                    continue
                values = measure(result)
                for metric in METRICS:
                    data[metric][label][client].append(values[metric])
                note = "n=%d x %d B" % (n, size)
                if result.get("note"):
                    note += "; " + result["note"]
                notes[(label, client)] = note
                print(
                    "rep %d/%d  %-8s %-12s %12s %-7s %7.3fs  CPU %s"
                    % (
                        rep + 1,
                        args.reps,
                        label,
                        client,
                        fmt_rate(values["rate"]),
                        SCENARIOS[scenario][1],
                        result["seconds"],
                        cpu_cost(values["cpu"], scenario),
                    ),
                    flush=True,
                )
        meta["load"].append(load())
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["versions"] = {r["client"]: r["versions"] for r in runs if r.get("versions")}

    summary = summarize(data, clients, cases)
    ratio_rows = ratios(data, clients, cases)
    floor_rows = floor_ratios(data, clients, cases, args.floor_goal)
    counters = split_counters(runs, cases)
    print_tables(meta, summary, notes, ratio_rows, clients, cases, floor_rows, counters)
    print()
    versions = ", ".join(
        "%s: %s" % (client, " ".join("%s %s" % kv for kv in meta["versions"][client].items()))
        for client in clients
        if client in meta["versions"]
    )
    print("versions: %s; %d runs in %.0fs" % (versions, len(runs), meta["seconds"]))
    retried = [r for r in runs if r.get("retried")]
    if retried:
        print("%d run(s) failed as the broker stopped answering, and were run again once it did" % len(retried))
    if failures:
        print("%d run(s) failed; see above" % len(failures))

    if args.json:
        document = {
            "meta": meta,
            "units": {s: unit for s, (_, unit) in SCENARIOS.items()},
            "metrics": METRICS,
            "workloads": {"%s/%s" % key: note for key, note in notes.items()},
            "summary": summary,
            "ratios": ratio_rows,
            "floor": floor_rows,
            "counters": counters,
            "runs": runs,
        }
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2, default=str)
        print("results written to %s" % args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
