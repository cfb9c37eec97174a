"""thunkscope.testing: in-memory telemetry and the virtual-time loop, as users get them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from thunkscope import names, send_to_queue, testing
from thunkscope._telemetry import telemetry


async def gappy(gaps: list[float]) -> Any:
    for index, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield index


class TestInMemoryTelemetry:
    async def test_records_spans_points_and_logs(self) -> None:
        """One stream's span, duration point and log events, recorded without a collector."""
        with testing.in_memory_telemetry(logs=True) as recorded:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            await send_to_queue(gappy([0.0, 0.0]), queue, name="rec")
        (span,) = recorded.spans(names.SPAN_SEND_TO_QUEUE)
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_COMPLETED
        (point,) = recorded.points(names.STREAM_DURATION.name)
        assert dict(point.attributes) == {
            names.STREAM_NAME: "rec",
            names.STREAM_OUTCOME: names.OUTCOME_COMPLETED,
        }
        assert [(e["event"], e["log_level"]) for e in recorded.logs] == [
            (names.LOG_STREAM_STARTED, "debug"),
            (names.LOG_STREAM_FIRST_ITEM, "debug"),
            (names.LOG_STREAM_COMPLETED, "info"),
        ]
        assert recorded.metric(names.STREAM_DURATION.name).unit == "s"
        with pytest.raises(AssertionError, match="not collected"):
            recorded.metric("no.such.metric")

    def test_providers_restored(self) -> None:
        """On leaving, thunkscope goes back to the global providers."""
        with testing.in_memory_telemetry():
            assert telemetry.own_providers
        assert not telemetry.own_providers


class TestVirtualTime:
    def test_sleep_takes_no_real_time_and_gaps_are_exact(self) -> None:
        """A 30 s stall is a stall of exactly 30 s, in no real time; the clock is restored."""
        real = time.monotonic()
        with testing.virtual_time() as loop, testing.in_memory_telemetry() as recorded:
            assert telemetry.clock == loop.time
            queue: asyncio.Queue[Any] = asyncio.Queue()
            loop.run_until_complete(
                send_to_queue(gappy([0.0, 30.0]), queue, chunk_timeout=None, stall_after=10.0)
            )
            assert loop.time() == 1030.0
        assert time.monotonic() - real < 30.0
        assert telemetry.clock is time.monotonic
        (span,) = recorded.spans(names.SPAN_SEND_TO_QUEUE)
        events = [(e.name, dict(e.attributes or {})) for e in span.events]
        frames = events[1][1].pop(names.STREAM_PRODUCER_STACK)
        assert [frame.rsplit(" in ", 1)[1] for frame in frames] == [
            "send_to_queue",
            "run_stream",
            "_pump",
            "gappy",
        ]
        assert events == [
            (names.EVENT_FIRST_ITEM, {}),
            (names.EVENT_STALLED, {names.STREAM_GAP: 10.0, names.STREAM_ITEMS: 1}),
            (names.EVENT_RESUMED, {names.STREAM_GAP: 30.0, names.STREAM_ITEMS: 1}),
            (names.EVENT_SENTINEL, {names.STREAM_ITEMS: 2}),
        ]
        assert span.attributes[names.STREAM_MAX_ITEM_GAP] == 30.0

    def test_deadline_in_virtual_time(self) -> None:
        """chunk_timeout expires at exactly its virtual deadline."""
        with testing.virtual_time() as loop:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            loop.run_until_complete(send_to_queue(gappy([3600.0]), queue, chunk_timeout=60.0))
            assert loop.time() == 1060.0
        assert isinstance(queue.get_nowait(), TimeoutError)

    def test_leftover_tasks_are_cancelled(self) -> None:
        """Leaving cancels what still runs, as asyncio.run does."""
        with testing.virtual_time() as loop:
            task = loop.create_task(asyncio.sleep(10))
        assert task.cancelled()
