"""The thunkscope.stream.oldest_idle gauge: read from the in-flight registry at collection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from support.waiting import until, until_sync
from thunkscope import _inflight, names, send_to_queue
from thunkscope._telemetry import telemetry as state
from thunkscope.testing import Recorded


async def first_then_hang(release: asyncio.Event, item: Any) -> AsyncIterator[Any]:
    """Yield one item, then give nothing until `release` is set."""
    yield item
    await release.wait()


def idle_by_name(telemetry: Recorded) -> dict[str, float]:
    """The gauge's value per stream name, as one collection sees it."""
    return {
        p.attributes[names.STREAM_NAME]: p.value
        for p in telemetry.points(names.STREAM_OLDEST_IDLE.name)
    }


class TestOldestIdle:
    def test_contract_names(self) -> None:
        """The gauge is in the contract with unit s, the stream name label, and its
        Prometheus series name."""
        metric = names.STREAM_OLDEST_IDLE
        assert (metric.name, metric.kind, metric.unit, metric.attributes) == (
            "thunkscope.stream.oldest_idle",
            "gauge",
            "s",
            (names.STREAM_NAME,),
        )
        assert metric.prometheus_name == "thunkscope_stream_oldest_idle_seconds"
        assert metric in names.METRICS

    @pytest.mark.virtual_time
    async def test_exact_values_on_a_virtual_clock(self, telemetry: Recorded) -> None:
        """Each collection reports, per name, the time since the stalest running stream's
        last item, exactly; a name seen whose streams all ended reports 0."""
        await send_to_queue(["x"], asyncio.Queue(), name="idle-ended")
        release = asyncio.Event()

        async def late_then_hang() -> AsyncIterator[str]:
            await asyncio.sleep(1.5)
            yield "late"
            await release.wait()

        tasks = [
            asyncio.create_task(send_to_queue(backend, asyncio.Queue(), name="idle-hung"))
            for backend in (first_then_hang(release, "early"), late_then_hang())
        ]
        try:
            await asyncio.sleep(2.0)  # items at 0 and 1.5 s: idle 2.0 and 0.5 s
            first = idle_by_name(telemetry)
            await asyncio.sleep(2.5)
            second = idle_by_name(telemetry)
            assert (first["idle-hung"], second["idle-hung"]) == (2.0, 4.5)
            assert first["idle-ended"] == second["idle-ended"] == 0.0
        finally:
            release.set()
            await asyncio.gather(*tasks)
        assert idle_by_name(telemetry)["idle-hung"] == 0.0

    def test_wired_to_the_registry(self) -> None:
        """The package hands the registry's oldest_idle_by_name to the gauge."""
        assert state.oldest_idle is _inflight.oldest_idle_by_name

    async def test_grows_while_the_loop_is_blocked(self, telemetry: Recorded) -> None:
        """With the event loop blocked by time.sleep in a coroutine, two collections on
        another thread see the stalled stream's idle time grow."""
        release = asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(
            send_to_queue(first_then_hang(release, "a"), queue, name="idle-blocked")
        )
        await until(lambda: queue.qsize() == 1, what="the first item")
        (watch,) = [w for w in _inflight.in_flight_watches() if w.name == "idle-blocked"]
        seen: list[float] = []
        done = threading.Event()

        def collect_twice() -> None:
            try:
                seen.append(idle_by_name(telemetry)["idle-blocked"])
                # Only once more time has passed than the first value: the second must be larger.
                until_sync(lambda: time.monotonic() - watch.last > seen[0], what="time passing")
                seen.append(idle_by_name(telemetry)["idle-blocked"])
            finally:
                done.set()

        async def block_the_loop() -> int:
            ticks_before = ticks[0]
            collector = threading.Thread(target=collect_twice)
            collector.start()
            while not done.is_set():
                time.sleep(0.01)  # noqa: ASYNC251 - the point: nothing else runs on this loop
            collector.join()
            return ticks[0] - ticks_before

        ticks = [0]

        async def ticker() -> None:
            while True:
                ticks[0] += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        await until(lambda: ticks[0] > 0, what="the ticker")
        try:
            assert await block_the_loop() == 0  # the loop really was blocked throughout
            assert len(seen) == 2
            assert seen[1] > seen[0] > 0.0
        finally:
            ticking.cancel()
            release.set()
            await task
