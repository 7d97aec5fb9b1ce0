"""What every end-to-end benchmark worker shares (stdlib only: it runs in each peer's venv).

A worker is one client library driving one scenario once, in its own process::

    <venv>/bin/python benchmarks/worker_<client>.py --scenario a --n 50000 --size 100

It connects, declares its own fresh queue, times only the scenario's work and
prints one JSON object on stdout (see :func:`main`); ``tools/bench.py``
collects them.  The scenarios:

``a``  pipelined confirmed publish: issue ``n`` publishes, then wait for every confirm;
``b``  consume ``n`` messages (queue filled before timing) with ``prefetch`` and an ack each;
``c``  one-at-a-time confirmed publish: wait for each confirm before the next publish;
``d``  round trip of ``n`` big messages: publish them confirmed, then consume and ack them;
``e``  ``n`` queue declares (server-named, exclusive) issued together, then all awaited.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
import uuid

SCENARIOS = {
    "a": "pipelined confirmed publish",
    "b": "consume + ack per message",
    "c": "one-at-a-time confirmed publish",
    "d": "big messages round trip",
    "e": "parallel queue declares",
}


#: Names of the profiled built-ins that wait for or move bytes through the socket.
IO_CALLS = ("select", "poll", "recv", "send", "_socket.socket", "_ssl.")


class Timer:
    """Times the ``with`` block it guards; profiles it too when asked.

    The worker's scenario function wraps exactly the measured work in
    ``with timer:``.  It records the wall-clock time and the CPU time of the
    worker process (user + system, all threads): the latter says what the
    client itself costs, and suffers less from a busy machine.
    """

    def __init__(self, profile_top: int = 0) -> None:
        self.profile_top = profile_top
        self.profiler: cProfile.Profile | None = None
        self.seconds: float | None = None
        self.cpu_seconds: float | None = None
        #: the CPU time split: user and system (kernel) seconds, and minor page faults
        self.counters: dict[str, float] = {}
        self._start = self._cpu_start = 0.0
        self._times = os.times()
        self._faults = 0

    def __enter__(self) -> Timer:
        if self.seconds is not None:
            raise RuntimeError("a scenario times one block only")
        if self.profile_top:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        self._faults = _minor_faults()
        self._times = os.times()
        self._cpu_start = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu_start
        times = os.times()
        self.counters = {
            "cpu_user": times.user - self._times.user,
            "cpu_sys": times.system - self._times.system,
            "minor_faults": _minor_faults() - self._faults,
        }
        if self.profiler is not None:
            self.profiler.disable()

    def profile_text(self) -> str | None:
        """The top functions by own time, after where the wall-clock time went."""
        if self.profiler is None:
            return None
        out = io.StringIO()
        stats = pstats.Stats(self.profiler, stream=out)
        io_time = sum(
            row[2]
            for (filename, _, name), row in stats.stats.items()  # type: ignore[attr-defined]
            if filename == "~" and any(word in name for word in IO_CALLS)
        )
        total = stats.total_tt  # type: ignore[attr-defined]
        out.write(
            "wall %.3fs, worker CPU %.3fs (the rest: waiting for the broker or for a CPU); "
            "%.3fs of the %.3fs profiled in socket I/O built-ins (select/recv/send)\n"
            % (self.seconds or 0, self.cpu_seconds or 0, io_time, total)
        )
        stats.sort_stats("tottime").print_stats(self.profile_top)
        return out.getvalue()


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def queue_name(client: str, scenario: str) -> str:
    """A queue of this run only: the workers never share one."""
    return "bench-%s-%s-%d-%s" % (client, scenario, os.getpid(), uuid.uuid4().hex[:8])


def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def parse_args(argv: list[str] | None = None, extra: dict[str, dict] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="One benchmark scenario with one client; JSON on stdout.")
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--n", type=int, required=True, help="messages (a-d) or declares (e)")
    parser.add_argument("--size", type=int, default=100, help="message body size in bytes")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP", help="cProfile the timed part")
    for flag, kwargs in (extra or {}).items():
        parser.add_argument(flag, **kwargs)
    return parser.parse_args(argv)


def main(client: str, scenarios: dict, args: argparse.Namespace, versions: dict[str, str] | None = None) -> None:
    """Run ``scenarios[args.scenario](args, timer)`` and print the JSON result.

    The scenario function returns a dict with at least ``count`` (messages or
    declares done) and optionally ``note``; the timer gives ``seconds``.
    """
    func = scenarios.get(args.scenario)
    if func is None:
        print(json.dumps({"client": client, "scenario": args.scenario, "skipped": True}))
        return
    timer = Timer(args.profile)
    result = func(args, timer)
    if timer.seconds is None:
        raise RuntimeError("the scenario never entered its timer")
    result.update(
        client=client,
        scenario=args.scenario,
        n=args.n,
        size=args.size,
        seconds=timer.seconds,
        cpu_seconds=timer.cpu_seconds,
        **timer.counters,
        python=sys.version.split()[0],
        versions=versions or {},
    )
    profile = timer.profile_text()
    if profile is not None:
        result["profile"] = profile
    print(json.dumps(result))
