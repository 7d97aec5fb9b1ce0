"""What OpenTelemetry tracing costs puka: pipelined confirmed publish, with and without it.

Run: ``python -m pytest benchmarks/test_tracing_overhead.py --benchmark-only``.  Each case
publishes ``N`` messages (100-byte bodies) to a fresh queue without waiting, then waits for
every confirm; the queue is purged between rounds (outside the timing).  The cases:

* ``plain``: no middleware;
* ``otel-noop``: :class:`~puka.tracing.otel.OpenTelemetryMiddleware` with no provider given and
  none configured globally (what a library user gets until the application sets up an SDK);
* ``otel-sdk``: an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` and an exporter that
  drops everything (metrics still go to the global no-op meter);
* ``otel-sdk-metrics``: the same plus an SDK ``MeterProvider`` (informational).

Shared machines drift, so every round of every case is paired with a round of a plain
client run just before it (in the round's setup, timed separately): a case's ratio is the best
paired plain round over the case's best round, i.e. its throughput relative to no tracing at
the same moment.  The last test prints the ratios.  Goals: ``otel-noop`` >= 0.9x,
``otel-sdk`` >= 0.5x; printed, not enforced, unless ``PUKA_BENCH_ENFORCE=1``.

What the SDK itself costs (``test_sdk_floor``, one test per number of publishes in flight,
``PUKA_BENCH_TRACING_IN_FLIGHT``, default 2000, 20000 and 50000): ``traced`` is the
``otel-sdk`` case, publishing that many messages before waiting for their confirms;
``floor`` is the same loop on a client without middleware, where each publish also starts
and ends one bare SDK span with the same name, kind and attributes as ``traced``'s publish
span and injects its context into the message headers -- what OpenTelemetry costs by
itself, with the span ended at once instead of at the confirm; ``open`` is ``floor`` with
each span ended once its publish is confirmed (as ``wait`` returns it), i.e. what the SDK
costs for spans that live as long as the traced client's, without puka's middleware.
``traced`` and the others have their own providers, configured alike.  Every round of
``traced`` is paired with a ``floor`` and an ``open`` round run just before it, and a full
garbage collection precedes each round (outside the timing).  Figures: client CPU per
message (``time.process_time``: the client's and the SDK's threads), medians over the
rounds with their range, and the share of it spent in the garbage collector
(``gc.callbacks``).  Goals: ``traced`` CPU per message at most
1/0.85 of ``floor``'s at 20,000 in flight (floor / traced >= 0.85), and ``traced`` CPU
per message within 15% from 2,000 to 50,000 in flight (largest / smallest <= 1.15).
The last test prints them with PASS or MISS.

As a script, the same measurement with the order of the cases reversed every other round::

    python benchmarks/test_tracing_overhead.py [--rounds 5] [--in-flight 2000,20000,50000]
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
import uuid

import pytest

import puka

pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (pip install 'puka[otel]' opentelemetry-sdk)")

from opentelemetry import trace  # noqa: E402
from opentelemetry.propagate import get_global_textmap  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from puka.tracing.otel import OpenTelemetryMiddleware  # noqa: E402

AMQP_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
N = int(os.environ.get("PUKA_BENCH_TRACING_N", "5000"))
#: rounds per case (the SDK cases are slow and less noisy relative to their cost: fewer rounds)
ROUNDS = int(os.environ.get("PUKA_BENCH_TRACING_ROUNDS", "10"))
CASE_ROUNDS = {"plain": ROUNDS, "otel-noop": ROUNDS, "otel-sdk": max(3, ROUNDS // 2), "otel-sdk-metrics": 3}
BODY = b"x" * 100
GOALS = {"otel-noop": 0.9, "otel-sdk": 0.5}
#: publishes in flight of the SDK floor comparison
IN_FLIGHT = tuple(int(n) for n in os.environ.get("PUKA_BENCH_TRACING_IN_FLIGHT", "2000,20000,50000").split(","))
#: rounds of each of floor and traced per number in flight
FLOOR_ROUNDS = int(os.environ.get("PUKA_BENCH_TRACING_FLOOR_ROUNDS", "5"))
#: traced / floor goal: floor CPU per message / traced CPU per message at this many in flight
FLOOR_GOAL = (20000, 0.85)
#: flatness goal: traced CPU per message, largest / smallest over IN_FLIGHT
FLAT_GOAL = 1.15
#: the cases of the floor comparison, in the order of a round (traced last: the benchmarked one)
CASES = ("floor", "open", "traced")

#: case -> best round (seconds), filled by the benchmarks, read by test_ratios.
RESULTS: dict[str, float] = {}
#: case -> best plain round run next to that case's rounds (seconds).
PAIRED: dict[str, float] = {}
#: case -> (best CPU time of the case's rounds, best CPU time of the paired plain rounds), seconds.
CPU: dict[str, tuple[float, float]] = {}


class DropExporter(SpanExporter):
    """Counts the spans, keeps nothing."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans):  # type: ignore[no-untyped-def]
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _middleware(case: str) -> tuple[list[object], list[object]]:
    """(middleware list, things to shut down) for a case."""
    if case == "plain":
        return [], []
    if case == "otel-noop":
        return [OpenTelemetryMiddleware()], []
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter(), max_queue_size=N * 2, max_export_batch_size=512))
    if case == "otel-sdk":
        return [OpenTelemetryMiddleware(tracer_provider=provider)], [provider]
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return [OpenTelemetryMiddleware(tracer_provider=provider, meter_provider=meters)], [provider, meters]


@pytest.fixture(scope="module", autouse=True)
def _no_global_provider():
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global TracerProvider is set: the otel-noop case would not be a no-op")


class Publisher:
    """A connected client and its own exclusive queue."""

    def __init__(self, middleware: list[object], case: str) -> None:
        self.client = client = puka.Client(AMQP_URL, middleware=middleware)
        client.wait(client.connect(), timeout=10)
        self.queue = "bench-tracing-%s-%s" % (case, uuid.uuid4().hex[:8])
        client.wait(client.queue_declare(queue=self.queue, exclusive=True))

    def timed(self, wall: list[float], cpu: list[float]) -> None:
        """publish_all, its wall-clock and CPU times appended to the lists."""
        started, started_cpu = time.perf_counter(), time.process_time()
        self.publish_all()
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)

    def publish_all(self) -> None:
        client, queue = self.client, self.queue
        publish = client.basic_publish
        promises = [publish("", queue, BODY) for _ in range(N)]
        wait = client.wait
        for promise in promises:
            wait(promise)

    def purge(self) -> None:
        self.client.wait(self.client.queue_purge(queue=self.queue))

    def close(self) -> None:
        self.client.wait(self.client.queue_delete(queue=self.queue), raise_errors=False)
        self.client.wait(self.client.close())


@pytest.fixture(scope="module")
def reference():
    """The plain client whose rounds are paired with every case's rounds."""
    publisher = Publisher([], "reference")
    publisher.publish_all()  # warm up
    yield publisher
    publisher.close()


@pytest.mark.parametrize("case", ["plain", "otel-noop", "otel-sdk", "otel-sdk-metrics"])
def test_pipelined_publish(benchmark, reference, case):
    middleware, providers = _middleware(case)
    publisher = Publisher(middleware, case)
    paired: list[float] = []
    paired_cpu: list[float] = []
    wall: list[float] = []
    cpu: list[float] = []

    def setup() -> None:
        reference.purge()
        reference.timed(paired, paired_cpu)
        publisher.purge()

    try:
        publisher.publish_all()  # warm up: caches, the publish channel, the SDK's first batch
        benchmark.group = "tracing-overhead pipelined publish x%d" % N
        benchmark.extra_info["messages"] = N
        benchmark.pedantic(publisher.timed, args=(wall, cpu), setup=setup, rounds=CASE_ROUNDS[case], iterations=1)
        RESULTS[case] = benchmark.stats.stats.min
        PAIRED[case] = min(paired)
        CPU[case] = (min(cpu), min(paired_cpu))
        benchmark.extra_info["paired_plain_min"] = PAIRED[case]
        benchmark.extra_info["cpu_min"] = CPU[case][0]
        benchmark.extra_info["paired_plain_cpu_min"] = CPU[case][1]
    finally:
        publisher.close()
        for provider in providers:
            provider.shutdown()  # type: ignore[attr-defined]


# --- the SDK floor: traced publishes against bare SDK spans, by number in flight -------------------------


def _sdk_provider(in_flight: int) -> TracerProvider:
    """An SDK provider whose batch processor never drops a span of a round."""
    provider = TracerProvider()
    processor = BatchSpanProcessor(DropExporter(), max_queue_size=4 * in_flight, max_export_batch_size=512)
    provider.add_span_processor(processor)
    return provider


class GcClock:
    """Time spent in the garbage collector (``gc.callbacks``), with the number of full collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started
            if info["generation"] == 2:
                self.full += 1

    def __enter__(self) -> GcClock:
        self.seconds, self.full = 0.0, 0
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


class FloorPair:
    """A traced client and a floor client, publishing ``in_flight`` messages per round.

    ``traced`` has an OpenTelemetryMiddleware on an SDK provider; ``floor`` has no middleware
    and, per publish, starts and ends a bare span of another provider configured alike, with
    the name, kind and attributes of the traced client's publish span to the floor's queue
    (taken from a span recorded once), and injects it into the message headers.
    """

    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight
        self.providers = [_sdk_provider(in_flight), _sdk_provider(in_flight)]
        self.traced = Publisher([OpenTelemetryMiddleware(tracer_provider=self.providers[0])], "traced")
        self.floor = Publisher([], "floor")
        self.tracer = self.providers[1].get_tracer("floor")
        self.name, self.kind, self.attributes = self._publish_span(self.floor.queue)
        #: what each round measured: (CPU seconds, wall seconds, GC CPU seconds, full collections)
        self.rounds: dict[str, list[tuple[float, float, float, int]]] = {case: [] for case in CASES}

    @staticmethod
    def _publish_span(queue: str) -> tuple[str, trace.SpanKind, dict[str, object]]:
        """Name, kind and attributes of the publish span OpenTelemetryMiddleware records for ``queue``."""
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        client = puka.Client(AMQP_URL, middleware=[OpenTelemetryMiddleware(tracer_provider=provider)])
        try:
            client.wait(client.connect(), timeout=10)
            client.wait(client.basic_publish("", queue, BODY), timeout=10)
        finally:
            client.wait(client.close(), timeout=10)
            provider.shutdown()
        [span] = exporter.get_finished_spans()
        return span.name, span.kind, dict(span.attributes or {})

    def publish_traced(self) -> None:
        client, queue = self.traced.client, self.traced.queue
        publish = client.basic_publish
        promises = [publish("", queue, BODY) for _ in range(self.in_flight)]
        wait = client.wait
        for promise in promises:
            wait(promise)

    def publish_floor(self) -> None:
        client, queue = self.floor.client, self.floor.queue
        publish = client.basic_publish
        start_span, name, kind, attributes = self.tracer.start_span, self.name, self.kind, self.attributes
        inject, in_context = get_global_textmap().inject, trace.set_span_in_context
        promises = []
        for _ in range(self.in_flight):
            span = start_span(name, kind=kind, attributes=attributes)
            headers: dict[str, object] = {}
            inject(headers, context=in_context(span))
            span.end()
            promises.append(publish("", queue, BODY, headers))
        wait = client.wait
        for promise in promises:
            wait(promise)

    def publish_open(self) -> None:
        """The floor's spans, each ended once its publish is confirmed, as the traced client's are."""
        client, queue = self.floor.client, self.floor.queue
        publish = client.basic_publish
        start_span, name, kind, attributes = self.tracer.start_span, self.name, self.kind, self.attributes
        inject, in_context = get_global_textmap().inject, trace.set_span_in_context
        promises = []
        spans = []
        for _ in range(self.in_flight):
            span = start_span(name, kind=kind, attributes=attributes)
            headers: dict[str, object] = {}
            inject(headers, context=in_context(span))
            spans.append(span)
            promises.append(publish("", queue, BODY, headers))
        wait = client.wait
        for promise, span in zip(promises, spans):
            wait(promise)
            span.end()

    def prepare(self, case: str) -> None:
        """Before a round (not timed): an empty queue, no garbage left over."""
        (self.traced if case == "traced" else self.floor).purge()
        gc.collect()

    def run(self, case: str) -> None:
        """One timed round of ``case``, recorded in ``rounds``."""
        work = {"floor": self.publish_floor, "open": self.publish_open, "traced": self.publish_traced}[case]
        with GcClock() as gc_clock:
            started, started_cpu = time.perf_counter(), time.process_time()
            work()
            cpu = time.process_time() - started_cpu
            wall = time.perf_counter() - started
        self.rounds[case].append((cpu, wall, gc_clock.seconds, gc_clock.full))

    def warm_up(self) -> None:
        self.publish_traced()
        self.publish_floor()
        self.publish_open()

    def close(self) -> None:
        self.traced.close()
        self.floor.close()
        for provider in self.providers:
            provider.shutdown()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per case: CPU per message (median, min, max, microseconds), wall seconds (median),
        GC share of the CPU and full collections per round (medians)."""
        out = {}
        n = self.in_flight
        for case, rounds in self.rounds.items():
            per_message = [cpu / n * 1e6 for cpu, _, _, _ in rounds]
            out[case] = {
                "cpu_us": statistics.median(per_message),
                "cpu_min": min(per_message),
                "cpu_max": max(per_message),
                "wall": statistics.median(wall for _, wall, _, _ in rounds),
                "gc_share": statistics.median(gc_cpu / cpu for cpu, _, gc_cpu, _ in rounds if cpu > 0),
                "full_gcs": statistics.median(full for _, _, _, full in rounds),
            }
        return out


#: in flight -> the FloorPair's summary, filled by test_sdk_floor, read by test_ratios.
FLOOR: dict[int, dict[str, dict[str, float]]] = {}


@pytest.mark.parametrize("in_flight", IN_FLIGHT)
def test_sdk_floor(benchmark, in_flight):
    pair = FloorPair(in_flight)

    def setup() -> None:
        for case in CASES[:-1]:
            pair.prepare(case)
            pair.run(case)
        pair.prepare("traced")

    try:
        pair.warm_up()
        benchmark.group = "tracing-overhead SDK floor, by publishes in flight"
        benchmark.extra_info["in_flight"] = in_flight
        benchmark.pedantic(pair.run, args=("traced",), setup=setup, rounds=FLOOR_ROUNDS, iterations=1)
        FLOOR[in_flight] = summary = pair.summary()
        benchmark.extra_info.update({"%s_%s" % (case, k): v for case, fig in summary.items() for k, v in fig.items()})
    finally:
        pair.close()


def floor_report(floor: dict[int, dict[str, dict[str, float]]]) -> tuple[list[str], list[str]]:
    """The lines of the SDK floor table, and the goals missed."""
    lines = [
        "",
        "traced confirmed publish against the SDK floor (client CPU per message, median [range] over"
        " the rounds; gc: share of that CPU in the garbage collector, full: full collections per round):",
        "  %9s  %-37s %-37s %-37s %s" % ("in flight", "floor", "open", "traced", "floor/traced open/traced wall:f/t"),
    ]
    for in_flight in sorted(floor):
        fig = floor[in_flight]
        cells = []
        for case in CASES:
            f = fig[case]
            cells.append(
                "%5.1f us [%5.1f-%5.1f] gc %2.0f%% full %g"
                % (f["cpu_us"], f["cpu_min"], f["cpu_max"], 100 * f["gc_share"], f["full_gcs"])
            )
        traced = fig["traced"]
        lines.append(
            "  %9d  %-37s %-37s %-37s %.2fx        %.2fx       %.2fx"
            % (
                in_flight,
                *cells,
                fig["floor"]["cpu_us"] / traced["cpu_us"],
                fig["open"]["cpu_us"] / traced["cpu_us"],
                fig["floor"]["wall"] / traced["wall"],
            )
        )
    missed = []
    at, goal = FLOOR_GOAL
    if at in floor:
        ratio = floor[at]["floor"]["cpu_us"] / floor[at]["traced"]["cpu_us"]
        verdict = "PASS" if ratio >= goal else "MISS"
        lines.append("  goal: floor / traced CPU at %d in flight >= %.2f: %.2f %s" % (at, goal, ratio, verdict))
        if verdict == "MISS":
            missed.append("traced/floor at %d in flight" % at)
    if len(floor) > 1:
        for case in CASES:
            cpu = {n: floor[n][case]["cpu_us"] for n in floor}
            low, high = min(cpu, key=cpu.__getitem__), max(cpu, key=cpu.__getitem__)
            spread = cpu[high] / cpu[low]
            if case == "traced":
                verdict = "PASS" if spread <= FLAT_GOAL else "MISS"
                head = "goal: traced CPU per message flat, largest / smallest <= %.2f:" % FLAT_GOAL
                if verdict == "MISS":
                    missed.append("flat CPU per message")
            else:
                verdict = "(no goal)"
                head = "%s CPU per message, largest / smallest:" % case
            lines.append(
                "  %s %.2f (%.1f us at %d, %.1f us at %d) %s" % (head, spread, cpu[high], high, cpu[low], low, verdict)
            )
    return lines, missed


def test_ratios(benchmark, capsys):
    benchmark.pedantic(lambda: None, rounds=1)  # a benchmark test, so that --benchmark-only keeps it
    if not RESULTS and not FLOOR:
        pytest.skip("no case ran")
    lines = [
        "",
        "pipelined confirmed publish of %d messages, best round of each case (paired plain: best plain round"
        " run between that case's rounds; CPU: process time, client and SDK threads):" % N,
    ]
    missed = []
    for case, seconds in RESULTS.items():
        ratio = PAIRED[case] / seconds
        cpu, cpu_plain = CPU[case]
        goal = GOALS.get(case)
        verdict = "" if goal is None else ("  goal >= %.2fx %s" % (goal, "met" if ratio >= goal else "MISSED"))
        if goal is not None and ratio < goal:
            missed.append(case)
        lines.append(
            "  %-17s %7.1f ms %7.0f msg/s | paired plain %7.1f ms | %.3fx plain | CPU %6.1f ms vs %6.1f ms:"
            " %.3fx%s"
            % (
                case,
                seconds * 1e3,
                N / seconds,
                PAIRED[case] * 1e3,
                ratio,
                cpu * 1e3,
                cpu_plain * 1e3,
                cpu_plain / cpu,
                verdict,
            )
        )
    if FLOOR:
        floor_lines, floor_missed = floor_report(FLOOR)
        lines += floor_lines
        missed += floor_missed
    with capsys.disabled():  # shown even without -s
        print("\n".join(lines))
    if os.environ.get("PUKA_BENCH_ENFORCE") == "1":
        assert not missed, "goals missed: %s" % ", ".join(missed)


def main(argv: list[str]) -> int:
    """The SDK floor comparison as a script: each pair of rounds in alternating order."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=FLOOR_ROUNDS, help="rounds of each case per number in flight")
    parser.add_argument("--in-flight", default=",".join(map(str, IN_FLIGHT)), help="comma-separated")
    args = parser.parse_args(argv)
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        parser.error("a global TracerProvider is set")
    floor = {}
    for in_flight in (int(n) for n in args.in_flight.split(",")):
        pair = FloorPair(in_flight)
        try:
            pair.warm_up()
            for round_ in range(args.rounds):
                for case in CASES if round_ % 2 == 0 else CASES[::-1]:
                    pair.prepare(case)
                    pair.run(case)
            floor[in_flight] = pair.summary()
        finally:
            pair.close()
        print(floor_report({in_flight: floor[in_flight]})[0][3], flush=True)  # this one's row, as it comes
    lines, missed = floor_report(floor)
    print("\n".join(lines))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
