"""Telemetry that fails never reaches the application: a misbehaving collector, a throwing pipeline.

Collector faults run in a fresh interpreter each (``configure()`` sets OTel's global
providers, which can be set once per process) against the loopback collectors of
``support.faulty``. "One warning" means: of every record at WARNING or above that the
process logs on any logger (OTel's exporters and the ``py.warnings`` logger included),
exactly one is about telemetry, and it comes from ``thunkscope`` (thunkscope's own
helper events, such as a forwarded backend error, are not counted).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics._internal.aggregation import Aggregation
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from support.fakes import Thunk
from support.faulty import MODES, FaultyCollector, Mode, run_python
from thunkscope import (
    ClientCache,
    _telemetry,
    get_current_event_loop,
    send_to_queue,
    wait_for_all_mots,
)
from thunkscope._export import Exporters

# Stream timings and the shutdown time are printed figures, never compared with a bound here
# (a busy machine stretches them): that shutdown gives up on a provider that never finishes
# is tested in test_config (TestConfigureSettings), and TestStopRetries counts the attempts.

FAULT_SCRIPT = r"""
import asyncio, json, logging, os, time, urllib.request

records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append({
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, "thunkscope_event", None),
            "message": record.getMessage(),
        })

logging.captureWarnings(True)
logging.getLogger().addHandler(Keep(level=logging.WARNING))

import thunkscope
from thunkscope import ClientCache, send_to_queue, wait_for_all_mots

ENDPOINT = os.environ["FAULT_ENDPOINT"]
MODE = os.environ["FAULT_MODE"]
ITEMS = 1000

async def backend(n):
    for i in range(n):
        await asyncio.sleep(0)  # a network stream hands control back between chunks
        yield i

class Thunk:
    def __init__(self, value):
        self.value = value
    async def avalue(self):
        return self.value

async def failing():
    raise ValueError("backend failed")

async def one_stream():
    queue = asyncio.Queue()
    started = time.perf_counter()
    await send_to_queue(backend(ITEMS), queue, name="faults")
    elapsed = time.perf_counter() - started
    got = [queue.get_nowait() for _ in range(queue.qsize())]
    assert got == [*range(ITEMS), None], "queue protocol broken"
    return elapsed

async def workload(rounds):
    times = []
    cache = ClientCache(2, name="faults")
    for _ in range(rounds):
        times.append(await one_stream())
        queue = asyncio.Queue()
        await send_to_queue(failing(), queue)
        error = queue.get_nowait()
        assert isinstance(error, ValueError) and queue.empty(), "error protocol broken"
        assert await wait_for_all_mots([Thunk(1), Thunk(2)]) is None
        assert cache.get(1) in (None, "client")
        cache.put(1, "client")
        assert cache.get(1) == "client"
        assert thunkscope.get_current_event_loop() is asyncio.get_running_loop()
    return times

asyncio.run(workload(3))  # warm-up
off = asyncio.run(workload(7))
handle = thunkscope.configure(
    service_name="faults", endpoint=ENDPOINT, metric_export_interval_s=0.2, log_level="info"
)
on = asyncio.run(workload(7))
if MODE == "vanish":
    handle.force_flush()  # delivered while the collector is up
    urllib.request.urlopen(ENDPOINT + "/vanish", timeout=5).read()
# Keep calling the helpers while export after export fails (spans every 1 s, metrics every 0.2 s).
later = []
deadline = time.monotonic() + 1.5
while not later or time.monotonic() < deadline:
    later += asyncio.run(workload(2))
started = time.monotonic()
handle.shutdown()
shutdown_s = time.monotonic() - started
result = {"off": off, "on": on, "later": later, "shutdown_s": shutdown_s, "records": records}
print(json.dumps(result))
"""


# Each test sees report_failure's once-per-place-and-type log from scratch.
pytestmark = pytest.mark.usefixtures("fresh_failure_reports")


def failure_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records report_failure logged."""
    return [r for r in caplog.records if hasattr(r, "thunkscope_failure")]


@pytest.mark.slow
class TestCollectorMisbehaves:
    @pytest.mark.parametrize("mode", MODES)
    def test_helpers_unaffected_one_warning_bounded_shutdown(self, mode: Mode) -> None:
        """Refused, hanging, 500, 503, gone: protocol kept, every round done, one warning, exit."""
        with FaultyCollector(mode) as collector:
            env = {"FAULT_ENDPOINT": collector.endpoint, "FAULT_MODE": mode}
            if mode == "hang":
                # A hanging collector fails an export only when its window (10 s by default)
                # ends: a 1 s window lets the script see that within its 1.5 s of later calls.
                env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"
            result = run_python(FAULT_SCRIPT, env=env)
            requests = list(collector.requests)
        # The script asserted the queue protocol of every call and raised nothing: every round
        # ran to its end, also while export after export failed. Timings are figures only.
        assert (len(result["off"]), len(result["on"])) == (7, 7)
        assert len(result["later"]) >= 2
        for elapsed in (*result["off"], *result["on"], *result["later"], result["shutdown_s"]):
            assert math.isfinite(elapsed)
            assert elapsed >= 0
        telemetry_warnings = [r for r in result["records"] if r["event"] is None]
        (warning,) = telemetry_warnings
        assert warning["logger"] == "thunkscope"
        assert collector.endpoint in warning["message"]
        assert "failed" in warning["message"]
        if mode == "vanish":
            assert {"/v1/traces", "/v1/metrics", "/v1/logs"} <= set(requests)
        if mode in ("500", "503", "hang"):
            assert requests  # the exporters did reach it


class RaisingProcessor(SpanProcessor):
    """A span processor that throws on start or on end."""

    def __init__(self, *, on: str) -> None:
        self.on = on

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.on == "start":
            raise RuntimeError("span processor broke on start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.on == "end":
            raise RuntimeError("span processor broke on end")


class BrokenAggregation(Aggregation):
    """A metric reader's aggregation that throws when a measurement arrives."""

    def _create_aggregation(self, *args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("metric reader broke")


async def agen(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def run_every_helper(rounds: int = 3) -> None:
    """Call every helper `rounds` times and check each one's result is what it would be anyway."""
    cache: ClientCache[str, str] = ClientCache(1, name="faults")
    for _ in range(rounds):
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(agen("a", "b"), queue, name="faults")
        assert [queue.get_nowait() for _ in range(3)] == ["a", "b", None]
        assert await wait_for_all_mots([Thunk(1), Thunk(2)]) is None
        assert get_current_event_loop() is asyncio.get_running_loop()
        assert cache.get("k") in (None, "v")
        cache.put("k", "v")
        assert cache.get("k") == "v"
        cache.put("other", "w")  # evicts "k"
        assert cache.get("k") is None


class TestPipelineThrows:
    @pytest.mark.parametrize("on", ["start", "end"])
    async def test_span_processor(self, on: str, stdlib_records: pytest.LogCaptureFixture) -> None:
        """A span processor that throws changes no result and is logged once, with its type."""
        provider = TracerProvider()
        provider.add_span_processor(RaisingProcessor(on=on))
        _telemetry.use_providers(tracer_provider=provider)
        try:
            await run_every_helper()
        finally:
            _telemetry.use_providers()
        (warning,) = failure_warnings(stdlib_records)
        assert warning.levelno == logging.WARNING
        assert warning.thunkscope_failure == f"span {on}"  # type: ignore[attr-defined]
        assert "RuntimeError" in warning.getMessage()
        assert "broke" not in warning.getMessage()  # the type, never the message

    async def test_metric_reader(self, stdlib_records: pytest.LogCaptureFixture) -> None:
        """A metric reader whose aggregation throws changes no stream result; one warning."""
        reader = InMemoryMetricReader(preferred_aggregation={Histogram: BrokenAggregation()})
        provider = MeterProvider(metric_readers=[reader])
        _telemetry.use_providers(meter_provider=provider)
        try:
            for name in ("m1", "m2", "m3"):
                queue: asyncio.Queue[Any] = asyncio.Queue()
                await send_to_queue(agen(1, 2, 3), queue, name=name)
                assert [queue.get_nowait() for _ in range(4)] == [1, 2, 3, None]
        finally:
            _telemetry.use_providers()
            provider.shutdown()
        (warning,) = failure_warnings(stdlib_records)
        assert warning.thunkscope_failure == "stream metrics"  # type: ignore[attr-defined]
        assert "ZeroDivisionError" in warning.getMessage()

    async def test_structlog_processor(self, stdlib_records: pytest.LogCaptureFixture) -> None:
        """A structlog processor that throws changes no result; one warning names its type."""

        def broken(_: Any, __: str, event_dict: Any) -> Any:
            raise KeyError("processor broke")

        structlog.configure(processors=[broken], cache_logger_on_first_use=False)
        try:
            await run_every_helper()
        finally:
            structlog.reset_defaults()
        (warning,) = failure_warnings(stdlib_records)
        assert warning.thunkscope_failure == "logging"  # type: ignore[attr-defined]
        assert "KeyError" in warning.getMessage()

    async def test_logging_handler(
        self, stdlib_records: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A logging handler that throws changes no result; the failure is reported once."""

        class Broken(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                raise OSError("handler broke")

        logger = logging.getLogger("thunkscope")
        handler = Broken()
        logger.addHandler(handler)
        try:
            await run_every_helper()
        finally:
            logger.removeHandler(handler)
        # The broken handler sits on the very logger the warning would go to: the last
        # resort is stderr, once.
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "thunkscope telemetry failed" in line]
        assert len(lines) == 1, err
        assert "OSError" in lines[0]
        assert "handler broke" not in lines[0]

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_on_evict(self, kind: str, stdlib_records: pytest.LogCaptureFixture) -> None:
        """An on_evict that throws never reaches put(); one warning names its type."""
        evicted: list[str] = []

        def sync_hook(value: str) -> None:
            evicted.append(value)
            raise ConnectionError("close failed")

        async def async_hook(value: str) -> None:
            await asyncio.sleep(0)
            evicted.append(value)
            raise ConnectionError("close failed")

        hook = sync_hook if kind == "sync" else async_hook
        cache: ClientCache[int, str] = ClientCache(1, on_evict=hook)
        for key in range(4):
            cache.put(key, f"client-{key}")
        for _ in range(3):
            await asyncio.sleep(0)
        assert evicted == ["client-0", "client-1", "client-2"]
        assert list(cache.cache.items()) == [(3, "client-3")]
        (warning,) = failure_warnings(stdlib_records)
        assert warning.thunkscope_failure == "on_evict"  # type: ignore[attr-defined]
        assert "ConnectionError" in warning.getMessage()
        assert "close failed" not in warning.getMessage()

    def test_on_evict_async_without_a_loop(self, stdlib_records: pytest.LogCaptureFixture) -> None:
        """An async on_evict called outside any loop runs to completion; its error is logged."""
        closed: list[str] = []

        async def hook(value: str) -> None:
            closed.append(value)
            raise ConnectionError("close failed")

        cache: ClientCache[int, str] = ClientCache(1, on_evict=hook)
        cache.put(1, "a")
        cache.put(2, "b")
        assert closed == ["a"]
        (warning,) = failure_warnings(stdlib_records)
        assert "ConnectionError" in warning.getMessage()


def one_span() -> ReadableSpan:
    span = TracerProvider().get_tracer("faults").start_span("one")
    span.end()
    return span  # type: ignore[return-value]


def batch_of(signal: str) -> Any:
    """Something the exporter of `signal` sends as one request."""
    if signal == "spans":
        return [one_span()]
    if signal == "metrics":
        return MetricsData(resource_metrics=[])
    return []


class _RefusingService(grpc.GenericRpcHandler):
    """Answers every gRPC call UNAVAILABLE (retryable), counting the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def service(self, handler_call_details: Any) -> Any:
        self.calls.append(handler_call_details.method)

        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.UNAVAILABLE, "collector says no")
            raise AssertionError("abort returns no answer")  # pragma: no cover

        return grpc.unary_unary_rpc_method_handler(refuse)


@contextmanager
def refusing_grpc_collector() -> Iterator[tuple[str, _RefusingService]]:
    service = _RefusingService()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        server.stop(0)


@pytest.mark.parametrize("signal", ["spans", "metrics", "logs"])
class TestStopRetries:
    """stop_retries() ends the real OTLP exporters' retries: one attempt per export, counted
    at the collector (no timing). Without it each export below retries for up to 3 s."""

    def test_http_exporter_makes_one_attempt(self, signal: str) -> None:
        """After stop_retries, a retryable 503 is not retried; later exports still try once."""
        with FaultyCollector("503") as collector:
            exporters = Exporters("http/protobuf", collector.endpoint, {})
            exporter = getattr(exporters, signal)()
            try:
                exporters.health.stop_retries()
                exporter.export(batch_of(signal))
                assert len(collector.requests) == 1
                exporter.export(batch_of(signal))  # not shut down: one more attempt
                assert len(collector.requests) == 2
            finally:
                exporter.shutdown()

    def test_grpc_exporter_makes_one_attempt(self, signal: str) -> None:
        """After stop_retries, a retryable UNAVAILABLE is not retried; later exports try once."""
        with refusing_grpc_collector() as (endpoint, service):
            exporters = Exporters("grpc", endpoint, {})
            exporter = getattr(exporters, signal)()
            try:
                exporters.health.stop_retries()
                exporter.export(batch_of(signal))
                assert len(service.calls) == 1
                exporter.export(batch_of(signal))
                assert len(service.calls) == 2
            finally:
                exporter.shutdown()
