"""Spans, metrics and log events of every helper, through in-memory exporters (SPEC section 2)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum
from opentelemetry.trace import SpanKind, StatusCode

from conftest import BrokenMeterProvider, Telemetry, events_of, in_memory_providers
from support.fakes import HANG, Thunk, agen
from support.waiting import until
from thunkscope import (
    ClientCache,
    _events,
    _inflight,
    _telemetry,
    get_current_event_loop,
    inflight,
    names,
    send_to_queue,
    wait_for_all_mots,
)
from thunkscope._telemetry import telemetry as state

pytestmark = pytest.mark.virtual_time  # sleeps and hangs take no real time


class NonNegativeFloat:
    """Equal to any float >= 0: for durations inside otherwise exact attribute dicts."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and other >= 0.0

    def __repr__(self) -> str:
        return "<float >= 0>"


SECONDS = NonNegativeFloat()


class TestSendToQueueSpan:
    async def test_completed_stream(self, telemetry: Telemetry) -> None:
        """A completed stream is one PRODUCER span with the contract's exact attributes."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(agen("a", "b", "c"), queue, name="chat")
        (span,) = telemetry.spans()
        assert span.name == names.SPAN_SEND_TO_QUEUE
        assert span.kind == SpanKind.PRODUCER
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "thunkscope"
        attributes = dict(span.attributes or {})
        assert attributes == {
            names.STREAM_ID: attributes[names.STREAM_ID],
            names.STREAM_NAME: "chat",
            names.STREAM_MODE: names.MODE_ITERATOR,
            names.STREAM_ITEMS: 3,
            names.STREAM_OUTCOME: names.OUTCOME_COMPLETED,
            names.STREAM_TIME_TO_FIRST_ITEM: SECONDS,
            names.STREAM_MAX_ITEM_GAP: SECONDS,
            names.STREAM_PUT_WAIT: 0.0,
            names.STREAM_STALL_COUNT: 0,
        }
        assert isinstance(attributes[names.STREAM_ID], str)
        assert attributes[names.STREAM_ID]
        assert events_of(span) == [
            (names.EVENT_FIRST_ITEM, {}),
            (names.EVENT_SENTINEL, {names.STREAM_ITEMS: 3}),
        ]
        assert span.status.status_code == StatusCode.UNSET

    async def test_single_response(self, telemetry: Telemetry) -> None:
        """A single response is mode=single with one item."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def backend() -> str:
            return "answer"

        await send_to_queue(backend(), queue, name="single")
        (span,) = telemetry.spans()
        attributes = dict(span.attributes or {})
        assert attributes == {
            names.STREAM_ID: attributes[names.STREAM_ID],
            names.STREAM_NAME: "single",
            names.STREAM_MODE: names.MODE_SINGLE,
            names.STREAM_ITEMS: 1,
            names.STREAM_OUTCOME: names.OUTCOME_COMPLETED,
            names.STREAM_TIME_TO_FIRST_ITEM: SECONDS,
            names.STREAM_MAX_ITEM_GAP: 0.0,
            names.STREAM_PUT_WAIT: 0.0,
            names.STREAM_STALL_COUNT: 0,
        }

    async def test_forwarded_error(self, telemetry: Telemetry) -> None:
        """A backend error sets error.type, status ERROR and a stream.error_forwarded event."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def backend() -> AsyncIterator[str]:
            yield "a"
            raise ConnectionResetError("secret prompt text")

        await send_to_queue(backend(), queue, name="chat")
        (span,) = telemetry.spans()
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_OUTCOME] == names.OUTCOME_ERROR
        assert attributes[names.ERROR_TYPE] == "ConnectionResetError"
        assert attributes[names.STREAM_ITEMS] == 1
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "backend raised ConnectionResetError"
        assert events_of(span) == [
            (names.EVENT_FIRST_ITEM, {}),
            (names.EVENT_ERROR_FORWARDED, {names.ERROR_TYPE: "ConnectionResetError"}),
        ]

    async def test_timeout(self, telemetry: Telemetry) -> None:
        """A chunk timeout ends the span as outcome=timeout, status ERROR, with its event."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def stalls() -> AsyncIterator[str]:
            yield "a"
            await asyncio.sleep(HANG)
            yield "b"

        await send_to_queue(stalls(), queue, chunk_timeout=0.05, stall_after=None, name="chat")
        (span,) = telemetry.spans()
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_OUTCOME] == names.OUTCOME_TIMEOUT
        assert attributes[names.ERROR_TYPE] == "TimeoutError"
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "no item from the backend within chunk_timeout=0.05s"
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_TIMEOUT,
        ]

    async def test_cancelled(self, telemetry: Telemetry) -> None:
        """A cancelled producer ends its span once, as outcome=cancelled, status unset."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(agen("a", delay=HANG), queue, name="chat"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (span,) = telemetry.spans()
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_OUTCOME] == names.OUTCOME_CANCELLED
        assert names.ERROR_TYPE not in attributes
        assert span.status.status_code == StatusCode.UNSET

    async def test_child_of_active_span_and_current_during_backend_call(
        self, telemetry: Telemetry
    ) -> None:
        """The span is a child of the caller's span and is current while the backend runs."""
        tracer = telemetry.tracer_provider.get_tracer("app")
        seen: list[Any] = []

        async def backend() -> str:
            seen.append(trace_api.get_current_span().get_span_context())
            return "x"

        with tracer.start_as_current_span("request") as parent:
            await send_to_queue(backend(), asyncio.Queue())
        (producer,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert producer.parent is not None
        assert producer.parent.span_id == parent.get_span_context().span_id
        assert producer.context.trace_id == parent.get_span_context().trace_id
        assert seen == [producer.context]


class TestOtherSpans:
    def test_cache_spans(self, telemetry: Telemetry) -> None:
        """Cache get and put spans carry name, result or evicted, size; evictions are events."""
        cache: ClientCache[str, str] = ClientCache(1, name="spans-cache")
        cache.get("a")
        cache.put("a", "client-a")
        cache.get("a")
        cache.put("b", "client-b")
        spans = telemetry.spans()
        assert [(s.name, dict(s.attributes or {})) for s in spans] == [
            (
                names.SPAN_CACHE_GET,
                {names.CACHE_NAME: "spans-cache", names.CACHE_SIZE: 0, names.CACHE_RESULT: "miss"},
            ),
            (
                names.SPAN_CACHE_PUT,
                {names.CACHE_NAME: "spans-cache", names.CACHE_SIZE: 1, names.CACHE_EVICTED: False},
            ),
            (
                names.SPAN_CACHE_GET,
                {names.CACHE_NAME: "spans-cache", names.CACHE_SIZE: 1, names.CACHE_RESULT: "hit"},
            ),
            (
                names.SPAN_CACHE_PUT,
                {names.CACHE_NAME: "spans-cache", names.CACHE_SIZE: 1, names.CACHE_EVICTED: True},
            ),
        ]
        assert all(s.kind == SpanKind.INTERNAL for s in spans)
        assert events_of(spans[3]) == [
            (names.EVENT_CACHE_EVICTED, {names.CACHE_NAME: "spans-cache"})
        ]
        assert events_of(spans[1]) == []

    def test_in_trace_mode_skips_cheap_spans_outside_a_trace(self, telemetry: Telemetry) -> None:
        """With spans=in_trace, cache and loop lookups emit spans only inside a trace."""
        state.settings.span_mode = "in_trace"
        cache: ClientCache[str, str] = ClientCache(2, name="in-trace")
        cache.get("outside")
        get_current_event_loop()
        assert telemetry.spans() == []
        tracer = telemetry.tracer_provider.get_tracer("app")
        with tracer.start_as_current_span("request"):
            cache.get("inside")
            get_current_event_loop()
        assert [s.name for s in telemetry.spans()] == [
            names.SPAN_CACHE_GET,
            names.SPAN_GET_CURRENT_EVENT_LOOP,
            "request",
        ]

    async def test_in_trace_mode_keeps_stream_spans(self, telemetry: Telemetry) -> None:
        """in_trace mode never drops the spans of streams and gathers."""
        state.settings.span_mode = "in_trace"
        await send_to_queue(agen(1), asyncio.Queue())
        await wait_for_all_mots([Thunk(1)])
        assert [s.name for s in telemetry.spans()] == [
            names.SPAN_SEND_TO_QUEUE,
            names.SPAN_WAIT_FOR_ALL_MOTS,
        ]


KIND = {"histogram": Histogram, "counter": Sum, "up_down_counter": Sum, "gauge": Gauge}


class TestMetrics:
    async def test_known_stream_workload(self, telemetry: Telemetry) -> None:
        """Three completed streams and one failed one give exact counts per attribute set."""
        for count in (1, 2, 3):
            await send_to_queue(agen(*range(count)), asyncio.Queue(), name="wl")

        async def fails() -> AsyncIterator[int]:
            yield 1
            raise ValueError("no")

        await send_to_queue(fails(), asyncio.Queue(), name="wl")
        durations = telemetry.by_attributes(names.STREAM_DURATION.name)
        completed = durations[
            frozenset({names.STREAM_NAME: "wl", names.STREAM_OUTCOME: "completed"}.items())
        ]
        failed = durations[
            frozenset(
                {
                    names.STREAM_NAME: "wl",
                    names.STREAM_OUTCOME: "error",
                    names.ERROR_TYPE: "ValueError",
                }.items()
            )
        ]
        assert (completed.count, failed.count) == (3, 1)
        (items,) = telemetry.points(names.STREAM_ITEM_COUNT.name)
        assert (items.count, items.sum, items.min, items.max) == (4, 1 + 2 + 3 + 1, 1, 3)
        (ttfi,) = telemetry.points(names.STREAM_TTFI.name)
        assert ttfi.count == 4
        (gap,) = telemetry.points(names.STREAM_MAX_GAP.name)
        assert gap.count == 2  # only streams with two items or more have a gap
        # No stream blocked on its unbounded queue: none has a put_wait to record.
        assert telemetry.points(names.QUEUE_PUT_WAIT.name) == []
        active = {
            p.attributes[names.STREAM_NAME]: p.value
            for p in telemetry.points(names.STREAM_ACTIVE.name)
        }
        assert active["wl"] == 0

    async def test_put_wait_counts_only_streams_that_blocked(self, telemetry: Telemetry) -> None:
        """Of two streams into full queues and one into an empty one, put_wait counts two."""

        async def drain_later(queue: asyncio.Queue[Any]) -> list[Any]:
            await asyncio.sleep(0.02)  # the producer meets a full queue and waits
            return [queue.get_nowait() for _ in range(queue.qsize())] + [await queue.get()]

        for name in ("blocked", "blocked"):
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
            drained = asyncio.create_task(drain_later(queue))
            await send_to_queue(agen("a"), queue, name=name)
            assert await drained == ["a", None]
        await send_to_queue(agen("a"), asyncio.Queue(maxsize=5), name="free")
        (point,) = telemetry.points(names.QUEUE_PUT_WAIT.name)
        assert dict(point.attributes) == {names.STREAM_NAME: "blocked"}
        assert point.count == 2
        spans = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        free = [s for s in spans if s.attributes[names.STREAM_NAME] == "free"]
        assert [s.attributes[names.STREAM_PUT_WAIT] for s in free] == [0.0]
        # The histogram holds exactly the two blocked streams' waits (how long depends on load).
        waits = [s.attributes[names.STREAM_PUT_WAIT] for s in spans if s not in free]
        assert len(waits) == 2
        assert all(wait > 0 for wait in waits), waits
        assert point.sum == pytest.approx(sum(waits))

    async def test_active_streams_while_running(self, telemetry: Telemetry) -> None:
        """thunkscope.stream.active counts streams in flight and returns to zero."""
        release = asyncio.Event()

        async def held() -> AsyncIterator[int]:
            await release.wait()
            yield 1

        tasks = [
            asyncio.create_task(send_to_queue(held(), asyncio.Queue(), name="held"))
            for _ in range(3)
        ]
        await until(lambda: _inflight.registered() == 3, what="three streams started")
        by_name = {
            p.attributes[names.STREAM_NAME]: p.value
            for p in telemetry.points(names.STREAM_ACTIVE.name)
        }
        assert by_name["held"] == 3
        release.set()
        await asyncio.gather(*tasks)
        by_name = {
            p.attributes[names.STREAM_NAME]: p.value
            for p in telemetry.points(names.STREAM_ACTIVE.name)
        }
        assert by_name["held"] == 0

    def test_cache_metrics(self, telemetry: Telemetry) -> None:
        """Lookups by result, evictions, entries and limit match a known cache workload."""
        cache: ClientCache[int, str] = ClientCache(2, name="metrics-cache")
        cache.get(1)  # miss
        cache.put(1, "a")
        cache.get(1)  # hit
        cache.get(1)  # hit
        cache.put(2, "b")
        cache.put(3, "c")  # evicts 1
        cache.get(1)  # miss
        lookups = {
            p.attributes[names.CACHE_RESULT]: p.value
            for p in telemetry.points(names.CACHE_LOOKUPS.name)
            if p.attributes[names.CACHE_NAME] == "metrics-cache"
        }
        assert lookups == {"hit": 2, "miss": 2}
        values = {
            name.name: [
                p.value
                for p in telemetry.points(name.name)
                if p.attributes[names.CACHE_NAME] == "metrics-cache"
            ]
            for name in (names.CACHE_EVICTIONS, names.CACHE_ENTRY_COUNT, names.CACHE_ENTRY_LIMIT)
        }
        assert values == {
            names.CACHE_EVICTIONS.name: [1],
            names.CACHE_ENTRY_COUNT.name: [2],
            names.CACHE_ENTRY_LIMIT.name: [2],
        }

    async def test_gather_and_loop_metrics(self, telemetry: Telemetry) -> None:
        """Gather duration and size, and loop lookups, count exactly what was done."""
        before = (state.loop_stats.found, state.loop_stats.missing)
        await wait_for_all_mots([Thunk(1), Thunk(2)])
        await wait_for_all_mots([Thunk(1), Thunk(2), Thunk(3), Thunk(4)])
        for _ in range(5):
            get_current_event_loop()
        (size,) = telemetry.points(names.GATHER_SIZE_METRIC.name)
        assert (size.count, size.sum) == (2, 6)
        (duration,) = telemetry.points(names.GATHER_DURATION.name)
        assert (dict(duration.attributes), duration.count) == (
            {names.GATHER_OUTCOME: "completed"},
            2,
        )
        lookups = {
            p.attributes[names.EVENT_LOOP_FOUND]: p.value
            for p in telemetry.points(names.EVENT_LOOP_LOOKUPS.name)
        }
        assert lookups == {True: before[0] + 5, False: before[1]}

    async def test_every_metric_has_its_contract_unit_and_instrument(
        self, telemetry: Telemetry
    ) -> None:
        """Each metric of the contract is emitted with its name, unit and instrument kind."""
        cache: ClientCache[int, int] = ClientCache(1, name="units")
        cache.get(1)
        cache.put(1, 1)
        get_current_event_loop()
        await wait_for_all_mots([Thunk(1)])

        async def stalls() -> AsyncIterator[int]:
            yield 1
            await asyncio.sleep(0.08)
            yield 2

        await send_to_queue(stalls(), asyncio.Queue(), stall_after=0.03, name="units")
        full: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        blocked = asyncio.create_task(send_to_queue(agen(1), full, name="units"))
        # The terminator waits for room: a put_wait to record.
        await until(lambda: [s["state"] for s in inflight()] == ["blocked_on_put"])
        assert (full.get_nowait(), await full.get()) == (1, None)
        await blocked
        for metric in names.METRICS:
            collected = telemetry.metric(metric.name)
            assert collected.unit == metric.unit, metric.name
            assert isinstance(collected.data, KIND[metric.kind]), metric.name
            if isinstance(collected.data, Sum):
                assert collected.data.is_monotonic == (metric.kind == "counter"), metric.name
            for point in collected.data.data_points:
                assert set(point.attributes) <= set(metric.attributes), metric.name


class TestLogEvents:
    async def test_stream_events_carry_the_span_ids(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """stream.started, first_item and completed carry the stream span's trace and span ids."""
        await send_to_queue(agen("a", "b"), asyncio.Queue(), name="logs")
        (span,) = telemetry.spans()
        trace_id = trace_api.format_trace_id(span.context.trace_id)
        span_id = trace_api.format_span_id(span.context.span_id)
        assert [(e["event"], e["log_level"]) for e in log_events] == [
            (names.LOG_STREAM_STARTED, "debug"),
            (names.LOG_STREAM_FIRST_ITEM, "debug"),
            (names.LOG_STREAM_COMPLETED, "info"),
        ]
        for event in log_events:
            assert (event["trace_id"], event["span_id"]) == (trace_id, span_id)
            assert event["stream"] == "logs"
            assert event["stream_id"] == span.attributes[names.STREAM_ID]
        assert log_events[-1]["items"] == 2
        assert "a" not in log_events[-1].values()

    async def test_event_loop_lookup_event_carries_its_span_ids(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """event_loop.lookup carries the ids of the get_current_event_loop span it emitted."""
        get_current_event_loop()
        (span,) = telemetry.spans(names.SPAN_GET_CURRENT_EVENT_LOOP)
        assert log_events == [
            {
                "event": names.LOG_EVENT_LOOP_LOOKUP,
                "log_level": "debug",
                "found": True,
                "trace_id": trace_api.format_trace_id(span.context.trace_id),
                "span_id": trace_api.format_span_id(span.context.span_id),
            }
        ]

    async def test_levels_by_outcome(self, log_events: list[dict[str, Any]]) -> None:
        """Forwarded errors warn, timeouts are errors, cancellations warn."""

        async def fails() -> AsyncIterator[int]:
            raise OSError("x")
            yield 1

        await send_to_queue(fails(), asyncio.Queue())

        async def stalls() -> AsyncIterator[int]:
            await asyncio.sleep(HANG)
            yield 1

        await send_to_queue(stalls(), asyncio.Queue(), chunk_timeout=0.03, stall_after=None)
        task = asyncio.create_task(send_to_queue(stalls(), asyncio.Queue(), stall_after=None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ends = [
            (e["event"], e["log_level"], e.get("error_type"))
            for e in log_events
            if e["event"] not in (names.LOG_STREAM_STARTED, names.LOG_STREAM_FIRST_ITEM)
        ]
        assert ends == [
            (names.LOG_STREAM_ERROR_FORWARDED, "warning", "OSError"),
            (names.LOG_STREAM_TIMED_OUT, "error", "TimeoutError"),
            (names.LOG_STREAM_CANCELLED, "warning", "CancelledError"),
        ]

    def test_cache_events(self, log_events: list[dict[str, Any]]) -> None:
        """Cache misses and evictions log at info, hits and puts at debug."""
        cache: ClientCache[int, str] = ClientCache(1, name="log-cache")
        cache.get(1)
        cache.put(1, "a")
        cache.get(1)
        cache.put(2, "b")
        assert [(e["event"], e["log_level"], e["cache"]) for e in log_events] == [
            (names.LOG_CACHE_MISS, "info", "log-cache"),
            (names.LOG_CACHE_PUT, "debug", "log-cache"),
            (names.LOG_CACHE_HIT, "debug", "log-cache"),
            (names.LOG_CACHE_PUT, "debug", "log-cache"),
            (names.LOG_CACHE_EVICTED, "info", "log-cache"),
        ]

    async def test_gather_and_loop_events(self, log_events: list[dict[str, Any]]) -> None:
        """Gathers log completed (info) or failed (warning); loop lookups log at debug."""
        get_current_event_loop()
        await wait_for_all_mots([Thunk(1)])
        with pytest.raises(KeyError):
            await wait_for_all_mots([Thunk(KeyError("k"))])
        assert [(e["event"], e["log_level"]) for e in log_events] == [
            (names.LOG_EVENT_LOOP_LOOKUP, "debug"),
            (names.LOG_GATHER_COMPLETED, "info"),
            (names.LOG_GATHER_FAILED, "warning"),
        ]
        assert log_events[2]["error_type"] == "KeyError"

    async def test_unconfigured_structlog_goes_to_stdlib_logger(
        self, stdlib_records: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without structlog configured, events go to the stdlib logger, not to stdout."""
        await send_to_queue(agen(1), asyncio.Queue(), name="stdlib")
        messages = [r.getMessage().split(" ")[0] for r in stdlib_records.records]
        assert messages == [
            names.LOG_STREAM_STARTED,
            names.LOG_STREAM_FIRST_ITEM,
            names.LOG_STREAM_COMPLETED,
        ]
        assert stdlib_records.records[-1].levelname == "INFO"
        assert capsys.readouterr().out == ""

    async def test_stdlib_logger_is_silent_below_warning_by_default(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With default logging, routine events are not emitted; warnings are."""
        caplog.set_level(logging.WARNING)
        await send_to_queue(agen(1), asyncio.Queue())

        async def fails() -> AsyncIterator[int]:
            raise OSError("x")
            yield 1

        await send_to_queue(fails(), asyncio.Queue())
        assert [r.getMessage().split(" ")[0] for r in caplog.records if r.name == "thunkscope"] == [
            names.LOG_STREAM_ERROR_FORWARDED
        ]


class TestUnderAutoInstrumentation:
    async def test_structlog_set_up_only_by_otel_stays_on_stdlib(
        self, stdlib_records: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """structlog configured only by the OTel structlog instrumentation is not the app's."""
        from opentelemetry.instrumentation.structlog import StructlogInstrumentor

        instrumentor = StructlogInstrumentor()
        instrumentor.instrument()
        try:
            await send_to_queue(agen(1), asyncio.Queue(), name="auto")
            structlog.configure(processors=[structlog.testing.LogCapture()])  # now the app's
            assert _events.enabled(_events.DEBUG) is True
        finally:
            instrumentor.uninstrument()
        assert capsys.readouterr().out == ""
        messages = [r.getMessage().split(" ")[0] for r in stdlib_records.records]
        assert messages == [
            names.LOG_STREAM_STARTED,
            names.LOG_STREAM_FIRST_ITEM,
            names.LOG_STREAM_COMPLETED,
        ]


def failure_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records report_failure logged."""
    return [r for r in caplog.records if hasattr(r, "thunkscope_failure")]


@pytest.mark.usefixtures("fresh_failure_reports")
class TestTelemetryThatThrows:
    async def test_instruments_failing_at_stream_start(
        self, stdlib_records: pytest.LogCaptureFixture
    ) -> None:
        """Instruments that cannot be made at a stream's start: protocol kept, span ended once,
        context detached, stream unregistered, the failure reported."""
        with in_memory_providers() as providers:
            _telemetry.use_providers(
                tracer_provider=providers.tracer_provider, meter_provider=BrokenMeterProvider()
            )
            try:
                before = trace_api.get_current_span()
                queue: asyncio.Queue[Any] = asyncio.Queue()
                await send_to_queue(agen("a", "b"), queue, name="broken-meter")
                assert [queue.get_nowait() for _ in range(queue.qsize())] == ["a", "b", None]
                assert trace_api.get_current_span() is before
                assert [s for s in inflight() if s["name"] == "broken-meter"] == []
                (span,) = providers.exporter.get_finished_spans()
                assert span.attributes is not None
                assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_COMPLETED
            finally:
                _telemetry.use_providers()
        places = {r.thunkscope_failure for r in failure_warnings(stdlib_records)}  # type: ignore[attr-defined]
        assert "stream start" in places
        assert all("broke" not in r.getMessage() for r in failure_warnings(stdlib_records))

    @pytest.mark.parametrize("ending", ["sentinel", "error", "timeout"])
    async def test_span_events_that_throw(
        self, ending: str, stdlib_records: pytest.LogCaptureFixture
    ) -> None:
        """A span whose add_event throws changes nothing of the queue protocol: the stream
        ends with its sentinel, its forwarded error or its TimeoutError, the span ends once."""
        with throwing_span_events() as ended:
            queue: asyncio.Queue[Any] = asyncio.Queue()

            async def backend() -> AsyncIterator[str]:
                yield "a"
                if ending == "error":
                    raise ConnectionResetError("reset")
                if ending == "timeout":
                    await asyncio.sleep(HANG)

            await asyncio.wait_for(
                send_to_queue(backend(), queue, chunk_timeout=0.05, stall_after=None), 5 * HANG
            )
            items = [queue.get_nowait() for _ in range(queue.qsize())]
        expected = {"sentinel": None, "error": ConnectionResetError, "timeout": TimeoutError}
        assert items[0] == "a"
        assert len(items) == 2
        if ending == "sentinel":
            assert items[1] is None
        else:
            assert type(items[1]) is expected[ending]
        assert ended == [1]
        warnings = failure_warnings(stdlib_records)
        places = {r.thunkscope_failure for r in warnings}  # type: ignore[attr-defined]
        assert "span event" in places
        assert all("RuntimeError" in r.getMessage() for r in warnings)


class EventlessSpan(trace_api.NonRecordingSpan):
    """A vendor span that says it records, but throws on add_event."""

    def __init__(self, ended: list[int]) -> None:
        super().__init__(trace_api.SpanContext(1, 2, False, trace_api.TraceFlags(1)))
        self._ended = ended

    def is_recording(self) -> bool:
        return True

    def add_event(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("span event broke")

    def end(self, end_time: int | None = None) -> None:
        self._ended.append(1)


@contextmanager
def throwing_span_events() -> Iterator[list[int]]:
    """thunkscope's spans, for a while, are EventlessSpans; yields how many of them ended."""
    ended: list[int] = []

    class Tracer(trace_api.NoOpTracer):
        def start_span(self, *args: Any, **kwargs: Any) -> trace_api.Span:
            return EventlessSpan(ended)

    class Provider(trace_api.NoOpTracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace_api.Tracer:
            return Tracer()

    _telemetry.use_providers(tracer_provider=Provider())
    try:
        yield ended
    finally:
        _telemetry.use_providers()
