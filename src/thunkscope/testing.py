"""Test helpers for code that uses thunkscope: in-memory telemetry and virtual time.

Record what thunkscope emits, without a collector::

    from thunkscope import names, testing

    with testing.in_memory_telemetry(logs=True) as recorded:
        await thunkscope.send_to_queue(backend(), queue, name="llm")
    (span,) = recorded.spans(names.SPAN_SEND_TO_QUEUE)
    assert span.attributes[names.STREAM_OUTCOME] == "completed"
    assert [e["event"] for e in recorded.logs][-1] == names.LOG_STREAM_COMPLETED

Run a test in virtual time, where ``asyncio.sleep(30)`` and a stalled backend take no
real time and every measured gap is exact::

    with testing.virtual_time() as loop:
        loop.run_until_complete(scenario())

The virtual clock moves only when every task waits on a timer: it then jumps to the next
one. Code that waits on real I/O or threads runs as usual, but time may jump past a
timer while it waits; use virtual time for code that waits on the loop's timers only.
Only thunkscope's own telemetry and checks follow the virtual clock (the SDK stamps span
start and end times with the wall clock, as always).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from thunkscope._telemetry import telemetry, use_providers

__all__ = [
    "InMemoryProviders",
    "Recorded",
    "VirtualTimeLoop",
    "in_memory_providers",
    "in_memory_telemetry",
    "virtual_time",
]


# --- in-memory telemetry -------------------------------------------------------------------------


@dataclass
class Recorded:
    """Finished spans, collected metric points and (if asked for) log events of thunkscope."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    logs: list[MutableMapping[str, Any]] = field(default_factory=list)
    """thunkscope's structlog events as event dicts (``event``, ``log_level``, fields)."""

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans, oldest first, optionally only those called `name`."""
        spans = list(self.exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def points(self, metric_name: str) -> list[Any]:
        """Data points of one metric, as collected now (from every scope that has it)."""
        return [
            point for metric in self._collected(metric_name) for point in metric.data.data_points
        ]

    def metric(self, metric_name: str) -> Any:
        """The collected metric object (name, unit, data) of one metric."""
        for metric in self._collected(metric_name):
            return metric
        raise AssertionError(f"metric {metric_name} was not collected")

    def by_attributes(self, metric_name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """Data points of one metric keyed by their attribute set."""
        return {frozenset(p.attributes.items()): p for p in self.points(metric_name)}

    def _collected(self, metric_name: str) -> Iterator[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == metric_name:
                        yield metric


class InMemoryProviders(NamedTuple):
    """A tracer and a meter provider that keep what they record in memory."""

    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    meter_provider: MeterProvider


@contextmanager
def in_memory_providers() -> Iterator[InMemoryProviders]:
    """Fresh in-memory tracer and meter providers, shut down (meter first) on leaving."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    try:
        yield InMemoryProviders(exporter, tracer_provider, reader, meter_provider)
    finally:
        meter_provider.shutdown()
        tracer_provider.shutdown()


@contextmanager
def in_memory_telemetry(*, logs: bool = False) -> Iterator[Recorded]:
    """thunkscope pointed at fresh in-memory providers (and, with `logs`, structlog's events
    captured), and back at the global providers and structlog's defaults on leaving.

    The global OTel providers are not touched: only thunkscope's telemetry is recorded.
    """
    with in_memory_providers() as providers:
        use_providers(
            tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider
        )
        recorded = Recorded(providers.exporter, providers.reader, providers.tracer_provider)
        try:
            if logs:
                with structlog.testing.capture_logs() as captured:
                    recorded.logs = captured
                    yield recorded
                structlog.reset_defaults()  # capture_logs leaves structlog configured
            else:
                yield recorded
        finally:
            use_providers()


# --- virtual time --------------------------------------------------------------------------------


class _JumpingSelector:
    """The loop's selector, except that a wait for a timer jumps the virtual clock instead."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only real I/O or a thread can wake the loop
            return self._inner.select(None)
        self._loop.advance(timeout)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that jumps to the next timer when all tasks wait.

    `time()` starts at `start` and moves only by `advance` (called by the loop itself
    when nothing is ready). `install_clock()` makes it thunkscope's clock too, until the
    loop is closed.
    """

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__()
        self._now = start
        self._selector: Any = _JumpingSelector(self._selector, self)
        self._saved_clock: Any = None

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward by `seconds`, and at least onto the next timer: a
        float sum can fall an ulp short of it, and then the clock would never get there."""
        target = self._now + seconds
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled and self._now < scheduled[0].when() <= target + 1e-9:
            target = max(target, scheduled[0].when())
        self._now = target

    def install_clock(self) -> VirtualTimeLoop:
        """Make this loop's clock thunkscope's clock until the loop is closed; returns it."""
        if self._saved_clock is None:
            self._saved_clock = telemetry.clock
        telemetry.clock = self.time
        return self

    def close(self) -> None:
        if self._saved_clock is not None:
            telemetry.clock = self._saved_clock
            self._saved_clock = None
        super().close()


@contextmanager
def virtual_time(start: float = 1000.0) -> Iterator[VirtualTimeLoop]:
    """A virtual-time event loop, made thunkscope's clock, closed on leaving."""
    loop = VirtualTimeLoop(start).install_clock()
    try:
        yield loop
    finally:
        try:  # what asyncio.run does on its way out: no task or generator left half done
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
