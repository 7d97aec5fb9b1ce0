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
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

import puka

pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (pip install 'puka[otel]' opentelemetry-sdk)")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402

from puka.tracing.otel import OpenTelemetryMiddleware  # noqa: E402

AMQP_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
N = int(os.environ.get("PUKA_BENCH_TRACING_N", "5000"))
#: rounds per case (the SDK cases are slow and less noisy relative to their cost: fewer rounds)
ROUNDS = int(os.environ.get("PUKA_BENCH_TRACING_ROUNDS", "10"))
CASE_ROUNDS = {"plain": ROUNDS, "otel-noop": ROUNDS, "otel-sdk": max(3, ROUNDS // 2), "otel-sdk-metrics": 3}
BODY = b"x" * 100
GOALS = {"otel-noop": 0.9, "otel-sdk": 0.5}

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


def test_ratios(benchmark, capsys):
    benchmark.pedantic(lambda: None, rounds=1)  # a benchmark test, so that --benchmark-only keeps it
    if not RESULTS:
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
    with capsys.disabled():  # shown even without -s
        print("\n".join(lines))
    if os.environ.get("PUKA_BENCH_ENFORCE") == "1":
        assert not missed, "throughput goals missed: %s" % ", ".join(missed)
