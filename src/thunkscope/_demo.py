"""The demo workload: a simulated LLM backend driven through every helper.

Streaming and single responses, a stream that stalls into a short chunk_timeout, a
backend error, a gather of thunks, and a ClientCache of capacity 2 used from three
event loops (a background loop thread, as mellea runs, and the caller's
``asyncio.run`` loops) so that it evicts. The summary it prints is read back from
the telemetry itself, so what you see is what a dashboard would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricReader,
    NumberDataPoint,
)

from thunkscope import names
from thunkscope._cache import ClientCache
from thunkscope._gather import wait_for_all_mots
from thunkscope._loop import get_current_event_loop
from thunkscope._stream import send_to_queue

TOKENS = "The quick brown fox jumps over the lazy dog while the model streams".split()  # noqa: SIM905


class FakeClient:
    """A stand-in for an LLM SDK client: streams tokens with jittered latency."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    async def stream(self, tokens: int, *, stall_at: int | None = None) -> AsyncIterator[str]:
        await asyncio.sleep(self._rng.uniform(0.01, 0.04))  # time to first token
        for index in range(tokens):
            if index == stall_at:
                await asyncio.sleep(3600)  # the backend hangs: chunk_timeout must fire
            yield TOKENS[index % len(TOKENS)]
            await asyncio.sleep(self._rng.uniform(0.0, 0.004))

    async def failing_stream(self, tokens: int) -> AsyncIterator[str]:
        for index in range(tokens):
            yield TOKENS[index % len(TOKENS)]
        raise ConnectionResetError("upstream closed the connection")

    async def complete(self) -> str:
        await asyncio.sleep(self._rng.uniform(0.01, 0.03))
        return "a complete, non-streamed answer"


@dataclass
class Thunk:
    """A model output thunk: `avalue()` drains its queue like mellea's ModelOutputThunk."""

    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    async def avalue(self) -> str:
        parts = []
        while (item := await self.queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            parts.append(item)
        return " ".join(parts)


@dataclass
class Workload:
    """One demo run's knobs; the defaults take a few seconds."""

    duration_s: float = 5.0
    streams_per_loop: int = 4
    tokens: int = 40
    chunk_timeout_s: float = 0.3
    stall_after_s: float = 0.1
    seed: int = 7
    cache: ClientCache[int, FakeClient] = field(
        default_factory=lambda: ClientCache(2, name="demo-llm-clients")
    )

    def client(self) -> FakeClient:
        """One client per event loop, through the cache, as mellea's backends do it."""
        key = id(get_current_event_loop())
        client = self.cache.get(key)
        if client is None:
            client = FakeClient(random.Random(self.seed + key % 1000))
            self.cache.put(key, client)
        return client

    async def requests(self, *, with_failures: bool) -> None:
        """A burst of requests on the current loop: streams, a single answer, a gather.

        With failures: a stream that stalls into chunk_timeout, one the backend breaks,
        a failing gather, and a slow consumer on a bounded queue (backpressure).
        """
        thunks = [Thunk() for _ in range(self.streams_per_loop + 1)]
        producers = [
            send_to_queue(self.client().stream(self.tokens), thunk.queue, name="chat-stream")
            for thunk in thunks[:-1]
        ]
        single = send_to_queue(self.client().complete(), thunks[-1].queue, name="chat-single")
        producers.append(single)
        tasks = [asyncio.create_task(producer) for producer in producers]
        if with_failures:
            tasks.extend(await self._failures())
        await wait_for_all_mots(thunks)
        await asyncio.gather(*tasks)

    async def _failures(self) -> list[asyncio.Task[None]]:
        client = self.client()
        stalled, broken = Thunk(), Thunk()
        slow_reader = Thunk(asyncio.Queue(maxsize=2))
        tasks = [
            asyncio.create_task(
                send_to_queue(
                    client.stream(self.tokens, stall_at=5),
                    stalled.queue,
                    chunk_timeout=self.chunk_timeout_s,
                    stall_after=self.stall_after_s,
                    name="chat-stream",
                )
            ),
            asyncio.create_task(
                send_to_queue(client.failing_stream(3), broken.queue, name="chat-stream")
            ),
            asyncio.create_task(
                send_to_queue(client.stream(10), slow_reader.queue, name="chat-stream")
            ),
        ]
        with contextlib.suppress(ConnectionResetError):
            await wait_for_all_mots([broken])  # a gather that fails
        with contextlib.suppress(TimeoutError):
            await stalled.avalue()
        while (item := await slow_reader.queue.get()) is not None:
            await asyncio.sleep(0.005)  # a consumer slower than the backend
            del item
        return tasks

    def run(self) -> int:
        """Run rounds on three event loops until the duration is spent; return the rounds."""
        background = _BackgroundLoop()
        deadline = time.monotonic() + self.duration_s
        rounds = 0
        with asyncio.Runner() as first, asyncio.Runner() as second:
            try:
                while True:
                    background.run(self.requests(with_failures=rounds % 3 == 0))
                    first.run(self.requests(with_failures=False))
                    second.run(self.requests(with_failures=False))
                    rounds += 1
                    if time.monotonic() >= deadline:
                        return rounds
            finally:
                background.close()


class _BackgroundLoop:
    """An event loop in a thread of its own, like the one mellea runs its backends on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="demo-backend-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


# --- the summary ------------------------------------------------------------------------------


@dataclass
class Summary:
    """What the telemetry says the workload did."""

    streams: dict[str, int] = field(default_factory=dict)
    ttfi_max_s: float | None = None
    _ttfi_sum: float = field(default=0.0, repr=False)  # pooled over the stream names
    _ttfi_count: int = field(default=0, repr=False)
    stalls: int = 0
    blocked_on_put: int = 0  # streams that waited on a full queue (a slow consumer)
    cache: dict[str, int] = field(default_factory=dict)
    gathers: int = 0
    rounds: int = 0

    @property
    def ttfi_mean_s(self) -> float | None:
        """The mean time to first item of every stream, None when none had an item."""
        return self._ttfi_sum / self._ttfi_count if self._ttfi_count else None

    def as_dict(self) -> dict[str, Any]:
        """The public figures, for ``--json``."""
        figures = {key: value for key, value in vars(self).items() if not key.startswith("_")}
        figures["ttfi_mean_s"] = self.ttfi_mean_s
        return figures

    def render(self) -> str:
        lines = [f"thunkscope demo: {self.rounds} round(s) of simulated LLM traffic", ""]
        total = sum(self.streams.values())
        lines.append(f"streams            {total}")
        for outcome in (
            names.OUTCOME_COMPLETED,
            names.OUTCOME_ERROR,
            names.OUTCOME_TIMEOUT,
            names.OUTCOME_CANCELLED,
        ):
            lines.append(f"  {outcome:<16} {self.streams.get(outcome, 0)}")
        if self.ttfi_mean_s is not None and self.ttfi_max_s is not None:
            lines.append(
                f"time to first item mean {self.ttfi_mean_s * 1000:.1f} ms, "
                f"max {self.ttfi_max_s * 1000:.1f} ms"
            )
        lines.append(f"stall warnings     {self.stalls}")
        lines.append(f"blocked on put     {self.blocked_on_put}")
        lines.append(f"gathers            {self.gathers}")
        lines.append(
            "client cache       "
            f"hits {self.cache.get(names.RESULT_HIT, 0)}, "
            f"misses {self.cache.get(names.RESULT_MISS, 0)}, "
            f"evictions {self.cache.get('evictions', 0)}"
        )
        return "\n".join(lines)


def summarize(reader: InMemoryMetricReader, rounds: int) -> Summary:
    """Read the workload's figures back from the metrics the helpers recorded."""
    summary = Summary(rounds=rounds)
    data = reader.get_metrics_data()
    if data is None:
        return summary
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != names.SCOPE:
                continue
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    _add(summary, metric.name, point)
    return summary


def _add(summary: Summary, name: str, point: Any) -> None:
    attributes = dict(point.attributes or {})
    if name == names.STREAM_DURATION.name and isinstance(point, HistogramDataPoint):
        outcome = str(attributes.get(names.STREAM_OUTCOME))
        summary.streams[outcome] = summary.streams.get(outcome, 0) + point.count
    elif name == names.STREAM_TTFI.name and isinstance(point, HistogramDataPoint) and point.count:
        summary._ttfi_sum += point.sum  # one point per stream name: pool them
        summary._ttfi_count += point.count
        summary.ttfi_max_s = max(point.max, summary.ttfi_max_s or 0.0)
    elif name == names.STREAM_STALLS.name and isinstance(point, NumberDataPoint):
        summary.stalls += int(point.value)
    elif name == names.QUEUE_PUT_WAIT.name and isinstance(point, HistogramDataPoint):
        summary.blocked_on_put += point.count  # recorded only for streams that blocked
    elif name == names.GATHER_DURATION.name and isinstance(point, HistogramDataPoint):
        summary.gathers += point.count
    elif name == names.CACHE_LOOKUPS.name and isinstance(point, NumberDataPoint):
        result = str(attributes.get(names.CACHE_RESULT))
        summary.cache[result] = summary.cache.get(result, 0) + int(point.value)
    elif name == names.CACHE_EVICTIONS.name and isinstance(point, NumberDataPoint):
        summary.cache["evictions"] = summary.cache.get("evictions", 0) + int(point.value)


def prometheus_reader(port: int) -> MetricReader:
    """A reader serving the metrics at http://127.0.0.1:PORT/metrics for a scrape."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
    except ImportError:
        raise SystemExit(
            "--prometheus-port needs the prometheus extra: pip install 'thunkscope[prometheus]'"
        ) from None
    start_http_server(port, addr="127.0.0.1")
    return PrometheusMetricReader()
