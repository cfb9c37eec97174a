"""thunkscope's overhead, measured as ratios against baselines timed in the same run.

Usage::

    python benchmarks/bench.py                 # full run (30-45 s on 2 cores)
    python benchmarks/bench.py --quick         # a few seconds, to keep the script working
    python benchmarks/bench.py --json out.json # also write the results as JSON
    python benchmarks/bench.py --only mellea --callgrind  # + instructions per chunk

Every figure is a ratio against a baseline timed in the same process: each repetition
times the thunkscope operation and its baseline back to back, and the figure is the
median over the repetitions of their ratio, so it holds on a shared, noisy machine
where absolute nanoseconds do not (the ns columns are plain medians, for reading).
Blocks are timed by the process's CPU time (``--clock wall`` for the wall clock), so
time spent descheduled by other processes is not charged to either side; the SDK's
export threads are in the same process, so their work is charged.
Global OpenTelemetry provider state cannot be undone inside a process, so each group
runs in a subprocess of its own (``--worker NAME``):

- ``nosdk``: no provider set anywhere (the API's no-op defaults);
- ``sdk``: a TracerProvider with a BatchSpanProcessor sized as `thunkscope.configure()`
  sizes it, exporting to a counting exporter, and a MeterProvider with a periodic reader;
- ``rss``: many streams run one after another, RSS and the in-flight registry checked;
- ``concurrent``: many concurrent streams, every item and every span accounted for;
- ``mellea``: per chunk, mellea 0.8's own ``send_to_queue`` against the same function
  instrumented (fast path, and wrapping), SDK on; run by the interpreter of
  ``.venv-mellea08`` (``--mellea-python``), left out with a note where there is none.
  ``--callgrind`` adds instructions per chunk counted by ``valgrind --tool=callgrind``
  (load-independent): each variant runs 1 and then 6 streams after a warm-up stream, in
  two valgrind runs, and the difference over 5 streams' chunks is the per-chunk count.

The exit status is 0 whatever the figures say, unless ``--check`` asks for 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# --- sizes ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each measurement does; `quick` keeps the whole run to seconds."""

    reps: int = 15
    stream_items: int = 20_000
    one_item_streams: int = 2_000
    spans: int = 2_000
    cache_gets: int = 100_000
    cache_gets_sdk: int = 2_000
    gathers: int = 200
    gather_width: int = 100
    rss_streams: int = 100_000
    concurrent_streams: int = 1_000
    concurrent_items: int = 1_000
    mellea_items: int = 2_000
    mellea_streams: int = 5  # per timed block

    @classmethod
    def quick(cls) -> Sizes:
        """A few seconds in all: enough to exercise every path, too little to trust."""
        return cls(
            reps=3,
            one_item_streams=300,
            spans=300,
            cache_gets=20_000,
            cache_gets_sdk=300,
            gathers=20,
            rss_streams=3_000,
            concurrent_streams=50,
            concurrent_items=200,
            mellea_streams=1,
        )


RSS_LIMIT_MB = 5.0
# The batch span processor may hold thousands of ended spans (up to configure()'s
# SPAN_QUEUE_SIZE) when its worker thread lags behind: flushing every so many streams
# keeps that backlog, which is the SDK's and bounded, from reading as thunkscope's growth.
RSS_FLUSH_EVERY = 1_000
CHUNK_TIMEOUT = 120.0
STALL_AFTER = 30.0
SUSPEND_EVERY = 100  # sequential one-item streams: let the event loop run this often


# --- results -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Figure:
    """One ratio of the table: a thunkscope operation against its baseline.

    `ratio` is the median of the per-repetition ratios: each repetition times the
    operation and its baseline back to back, so a slow spell of the machine lands on
    both sides of one ratio instead of on one side of the medians. `value_ns` and
    `baseline_ns` are the plain medians, for reading the absolute costs.
    """

    name: str
    value_ns: float
    baseline: str
    baseline_ns: float
    target: float
    ratio: float
    passed: bool
    samples_ns: list[float] = field(default_factory=list)
    baseline_samples_ns: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Check:
    """One resource check: a yes or no, with the numbers behind it."""

    name: str
    passed: bool
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Part:
    """A share of a figure, in units of its baseline: where the cost goes, not a target."""

    name: str
    value_ns: float
    ratio: float
    unit: str


def paired_ratio(samples: Sequence[float], baseline_samples: Sequence[float]) -> float:
    """The median over repetitions of each repetition's ratio to its own baseline."""
    return statistics.median(
        value / base if base > 0 else math.inf
        for value, base in zip(samples, baseline_samples, strict=True)
    )


def part(name: str, samples: Sequence[float], baseline_samples: Sequence[float], unit: str) -> Part:
    """A part from paired samples (ns), one pair per repetition."""
    return Part(name, statistics.median(samples), paired_ratio(samples, baseline_samples), unit)


def figure(
    name: str,
    samples: Sequence[float],
    baseline: str,
    baseline_samples: Sequence[float],
    target: float,
) -> Figure:
    """A figure from paired per-operation samples (ns), one pair per repetition."""
    ratio = paired_ratio(samples, baseline_samples)
    return Figure(
        name=name,
        value_ns=statistics.median(samples),
        baseline=baseline,
        baseline_ns=statistics.median(baseline_samples),
        target=target,
        ratio=ratio,
        passed=ratio <= target,
        samples_ns=[round(s, 1) for s in samples],
        baseline_samples_ns=[round(s, 1) for s in baseline_samples],
    )


# --- timing helpers ------------------------------------------------------------------------------


CLOCKS: dict[str, Callable[[], int]] = {
    "cpu": time.process_time_ns,  # this process's CPU time: immune to being descheduled
    "wall": time.perf_counter_ns,
}
_clock = CLOCKS["cpu"]


def use_clock(name: str) -> None:
    """Time every block with this clock from now on (``cpu`` or ``wall``)."""
    global _clock
    _clock = CLOCKS[name]


def _settle() -> None:
    """Start every timed block from the same place: garbage collected, nothing pending."""
    gc.collect()


def time_sync(call: Callable[[Any], object], arg: Any, count: int) -> float:
    """Nanoseconds per `call(arg)`, the loop's own overhead included (as timeit does)."""
    _settle()
    clock = _clock
    start = clock()
    for _ in itertools.repeat(None, count):
        call(arg)
    return (clock() - start) / count


async def time_async(block: Callable[[], Awaitable[object]], per: int) -> float:
    """Nanoseconds per unit of `block()`, which does `per` units of work."""
    _settle()
    clock = _clock
    start = clock()
    await block()
    return (clock() - start) / per


async def interleaved(
    reps: int, blocks: dict[str, tuple[Callable[[], Awaitable[float]], Callable[[], None]]]
) -> dict[str, list[float]]:
    """Run each block once per repetition, in turn, so noise falls on all alike.

    Each entry is ``(timed_block, between)``: `between` runs untimed before every timed
    block (a span flush, say), so no block pays for the previous one's leftovers. The
    event loop runs once in between too: the blocks never suspend, and the loop purges
    the timer handles they cancelled only when it runs.
    """
    samples: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(reps):
        for name, (block, between) in blocks.items():
            between()
            await asyncio.sleep(0)
            samples[name].append(await block())
    return samples


# --- workloads shared by the workers -------------------------------------------------------------


async def numbers(count: int) -> AsyncIterator[int]:
    """A backend stream that never suspends: the tightest loop the helpers can see."""
    for i in range(count):
        yield i


async def plain_loop(iterator: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
    """Baseline: the queue protocol with nothing else, ``async for`` and ``put``."""
    async for item in iterator:
        await queue.put(item)
    await queue.put(None)


async def timeout_loop(
    iterator: AsyncIterator[Any], queue: asyncio.Queue[Any], chunk_timeout: float | None
) -> None:
    """Baseline: upstream mellea's loop, an ``asyncio.timeout`` block around every ``anext``."""
    ait = aiter(iterator)
    while True:
        try:
            async with asyncio.timeout(chunk_timeout):
                item = await anext(ait)
        except StopAsyncIteration:
            break
        await queue.put(item)
    await queue.put(None)


async def contract_calls_loop(
    iterator: AsyncIterator[Any], queue: asyncio.Queue[Any], tracer: Any, instruments: Any
) -> None:
    """The plain loop plus exactly the SDK calls SPEC section 2 asks of a completed stream.

    Its span (two attributes at the start, the first-item and sentinel events, six at the
    end), made current while the stream runs, and the three histogram records of a stream
    that never blocked (duration, time to first item, items) inside its context. Nothing
    else: no watch, no registry, no log. What this costs beyond the plain loop is the
    floor under `send_to_queue`'s fixed cost that no code of thunkscope's can go below.
    """
    from opentelemetry import context as otel_context
    from opentelemetry import trace as trace_api
    from opentelemetry.trace import SpanKind

    from thunkscope import names

    start = time.monotonic()
    span = tracer.start_span(
        names.SPAN_SEND_TO_QUEUE,
        kind=SpanKind.PRODUCER,
        attributes={names.STREAM_NAME: "default", names.STREAM_ID: "bench-1"},
    )
    token = otel_context.attach(trace_api.set_span_in_context(span))
    items, first = 0, start
    async for item in iterator:
        if not items:
            first = time.monotonic()
            span.add_event(names.EVENT_FIRST_ITEM)
        items += 1
        await queue.put(item)
    await queue.put(None)
    span.add_event(names.EVENT_SENTINEL, {names.STREAM_ITEMS: items})
    duration = time.monotonic() - start
    span.set_attributes(
        {
            names.STREAM_ITEMS: items,
            names.STREAM_OUTCOME: names.OUTCOME_COMPLETED,
            names.STREAM_MAX_ITEM_GAP: 0.0,
            names.STREAM_PUT_WAIT: 0.0,
            names.STREAM_STALL_COUNT: 0,
            names.STREAM_MODE: names.MODE_ITERATOR,
            names.STREAM_TIME_TO_FIRST_ITEM: first - start,
        }
    )
    span.end()
    context = otel_context.get_current()
    by_name = {names.STREAM_NAME: "default"}
    instruments.stream_duration.record(
        duration, {**by_name, names.STREAM_OUTCOME: names.OUTCOME_COMPLETED}, context
    )
    instruments.stream_ttfi.record(first - start, by_name, context)
    instruments.stream_items.record(items, by_name, context)
    otel_context.detach(token)


async def contract_calls_gather(thunks: Sequence[Any], tracer: Any, instruments: Any) -> None:
    """A bare gather inside exactly the SDK calls SPEC section 2 asks of `wait_for_all_mots`.

    Its span (the size at the start, the outcome at the end), current while the thunks'
    tasks are made, and its two histogram records. The floor under that figure.
    """
    from opentelemetry import context as otel_context
    from opentelemetry import trace as trace_api

    from thunkscope import names

    start = time.monotonic()
    span = tracer.start_span(
        names.SPAN_WAIT_FOR_ALL_MOTS, attributes={names.GATHER_SIZE: len(thunks)}
    )
    token = otel_context.attach(trace_api.set_span_in_context(span))
    await asyncio.gather(*(thunk.avalue() for thunk in thunks))
    span.set_attribute(names.GATHER_OUTCOME, names.OUTCOME_COMPLETED)
    span.end()
    instruments.gather_duration.record(
        time.monotonic() - start, {names.GATHER_OUTCOME: names.OUTCOME_COMPLETED}
    )
    instruments.gather_size.record(len(thunks))
    otel_context.detach(token)


class PlainLRU:
    """Baseline: an OrderedDict LRU with the smallest possible hit path."""

    __slots__ = ("cache",)

    def __init__(self) -> None:
        self.cache: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        """The value or None; a hit moves the entry to the most recent end."""
        cache = self.cache
        try:
            cache.move_to_end(key)
        except KeyError:
            return None
        return cache[key]


class Thunk:
    """A model output thunk whose value is already there."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    async def avalue(self) -> int:
        """The value, at once."""
        return self.value


# --- the SDK as an application would set it up ---------------------------------------------------


class CountingSpanExporter:
    """A span exporter that keeps only counts (and, optionally, pays for OTLP encoding)."""

    def __init__(self, *, encode: bool = False) -> None:
        self.exported = 0
        self.by_name: dict[str, int] = {}
        self.encoded_bytes = 0
        self._encode = encode

    def export(self, spans: Sequence[Any]) -> Any:
        """Count the batch (and serialise it as OTLP would, if asked)."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.exported += len(spans)
        for span in spans:
            self.by_name[span.name] = self.by_name.get(span.name, 0) + 1
        if self._encode:
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            self.encoded_bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here."""
        return True


class EndedSpans:
    """A span processor that counts spans as they end, before any batching can drop them."""

    def __init__(self) -> None:
        self.ended: dict[str, int] = {}

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """Nothing to do at the start."""

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        """Count the span by name."""
        self.ended[span.name] = self.ended.get(span.name, 0) + 1

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here."""
        return True


@dataclass(slots=True)
class Sdk:
    """The providers a worker set globally, and the exporter's counts."""

    tracer_provider: Any
    meter_provider: Any
    exporter: CountingSpanExporter
    ended: EndedSpans
    batch_settings: dict[str, float]

    def span_queue(self) -> Sized:
        """The batch span processor's queue of ended spans waiting for export."""
        for processor in self.tracer_provider._active_span_processor._span_processors:
            batch = getattr(processor, "_batch_processor", None)
            if batch is not None:
                queue: Sized = batch._queue
                return queue
        return ()

    def flush(self) -> None:
        """Export every ended span now, so the next timed block starts with an empty queue."""
        self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        """Flush and stop both providers."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def batch_settings() -> dict[str, float]:
    """The BatchSpanProcessor settings `thunkscope.configure()` chooses (read from it)."""
    from thunkscope import _config
    from thunkscope._settings import export_timeout_s

    return {
        "max_queue_size": _config.SPAN_QUEUE_SIZE,
        "max_export_batch_size": _config.SPAN_BATCH_SIZE,
        "schedule_delay_millis": 1000,  # configure()'s, written there as a literal
        "export_timeout_millis": export_timeout_s("traces") * 1000,  # moot: nothing is sent
    }


def install_sdk(*, encode: bool = False) -> Sdk:
    """Set global providers as `configure()` does, exporting to counting sinks."""
    from opentelemetry import metrics as metrics_api
    from opentelemetry import trace as trace_api
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from thunkscope import _telemetry

    class NullMetricExporter(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **_: Any) -> Any:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
            return None

    settings = batch_settings()
    exporter = CountingSpanExporter(encode=encode)
    ended = EndedSpans()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(ended)  # type: ignore[arg-type]
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter, **settings))  # type: ignore[arg-type]
    reader = PeriodicExportingMetricReader(NullMetricExporter(), export_interval_millis=10_000)
    meter_provider = MeterProvider(metric_readers=[reader])
    trace_api.set_tracer_provider(tracer_provider)
    metrics_api.set_meter_provider(meter_provider)
    _telemetry.use_providers()  # drop anything cached before the globals were set
    return Sdk(tracer_provider, meter_provider, exporter, ended, settings)


# --- workers -------------------------------------------------------------------------------------


def worker_nosdk(sizes: Sizes) -> dict[str, Any]:
    """ClientCache.get hits with the API's no-op providers, against a plain OrderedDict LRU."""
    from opentelemetry import trace as trace_api

    from thunkscope import ClientCache, _telemetry

    assert getattr(trace_api, "_TRACER_PROVIDER", None) is None, "a tracer provider is set"
    assert not _telemetry.telemetry.tracing(), "thunkscope thinks someone is tracing"
    cache: ClientCache[int, object] = ClientCache(4)
    plain = PlainLRU()
    client = object()
    for key in range(4):
        cache.put(key, client)
        plain.cache[key] = client
    count = sizes.cache_gets
    samples: dict[str, list[float]] = {"thunkscope": [], "plain": []}
    for _ in range(sizes.reps):
        samples["plain"].append(time_sync(plain.get, 3, count))
        samples["thunkscope"].append(time_sync(cache.get, 3, count))
    return {
        "figures": [
            asdict(
                figure(
                    "ClientCache.get hit, no SDK (API no-op)",
                    samples["thunkscope"],
                    "plain OrderedDict LRU get",
                    samples["plain"],
                    2.0,
                )
            )
        ]
    }


async def _sdk_figures(sizes: Sizes, sdk: Sdk) -> tuple[list[Figure], list[Part]]:
    from thunkscope import ClientCache, send_to_queue, wait_for_all_mots

    tracer = sdk.tracer_provider.get_tracer("bench")
    flush = sdk.flush
    n_items = sizes.stream_items

    # -- per stream item ---------------------------------------------------------------------
    async def stream_plain() -> float:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        return await time_async(lambda: plain_loop(numbers(n_items), queue), n_items)

    async def stream_timeout() -> float:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        return await time_async(
            lambda: timeout_loop(numbers(n_items), queue, CHUNK_TIMEOUT), n_items
        )

    async def stream_thunkscope() -> float:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        return await time_async(
            lambda: send_to_queue(
                numbers(n_items), queue, chunk_timeout=CHUNK_TIMEOUT, stall_after=STALL_AFTER
            ),
            n_items,
        )

    await stream_thunkscope()  # warm up: instruments, tracer, first-call caches
    per_item = await interleaved(
        sizes.reps,
        {
            "plain": (stream_plain, flush),
            "timeout": (stream_timeout, flush),
            "thunkscope": (stream_thunkscope, flush),
        },
    )

    # -- fixed cost of a one-item stream, against one bare span --------------------------------
    n_streams, n_spans = sizes.one_item_streams, sizes.spans

    from thunkscope._telemetry import telemetry

    instruments, stream_tracer = telemetry.instruments, telemetry.tracer

    def one_item_block(
        run: Callable[[AsyncIterator[int], asyncio.Queue[Any]], Awaitable[None]],
    ) -> Callable[[], Awaitable[float]]:
        """A timed block of `n_streams` one-item streams, each through `run(source, queue)`."""

        async def timed() -> float:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            sources = [numbers(1) for _ in range(n_streams)]

            async def block() -> None:
                for i, source in enumerate(sources):
                    await run(source, queue)
                    if i % SUSPEND_EVERY == 0:
                        await asyncio.sleep(0)

            return await time_async(block, n_streams)

        return timed

    one_item_streams = one_item_block(
        lambda source, queue: send_to_queue(
            source, queue, chunk_timeout=CHUNK_TIMEOUT, stall_after=STALL_AFTER
        )
    )
    plain_one_item_loops = one_item_block(plain_loop)
    contract_calls = one_item_block(
        lambda source, queue: contract_calls_loop(source, queue, stream_tracer, instruments)
    )

    async def bare_spans() -> float:
        async def block() -> None:
            for i in range(n_spans):
                tracer.start_span("bench.span").end()
                if i % SUSPEND_EVERY == 0:
                    await asyncio.sleep(0)

        return await time_async(block, n_spans)

    await one_item_streams()
    fixed = await interleaved(
        sizes.reps,
        {
            "span": (bare_spans, flush),
            "plain": (plain_one_item_loops, flush),
            "contract": (contract_calls, flush),
            "stream": (one_item_streams, flush),
        },
    )
    # What thunkscope adds to a one-item stream: the same stream through the plain loop
    # is subtracted, repetition by repetition.
    fixed_cost = [ts - plain for ts, plain in zip(fixed["stream"], fixed["plain"], strict=True)]
    # The same, split: the SDK calls the contract asks for, and what thunkscope adds to them.
    contract_cost = [
        calls - plain for calls, plain in zip(fixed["contract"], fixed["plain"], strict=True)
    ]
    own_cost = [ts - calls for ts, calls in zip(fixed["stream"], fixed["contract"], strict=True)]
    breakdown = [
        part(
            "of the fixed cost: the SDK calls SPEC section 2 asks of a one-item stream, alone",
            contract_cost,
            fixed["span"],
            "bare spans",
        ),
        part(
            "of the fixed cost: what send_to_queue adds to those calls",
            own_cost,
            fixed["span"],
            "bare spans",
        ),
    ]

    # -- ClientCache.get hit with the SDK, against one bare span --------------------------------
    cache: ClientCache[int, object] = ClientCache(4)
    for key in range(4):
        cache.put(key, object())
    n_gets = sizes.cache_gets_sdk

    def span_once(_: object) -> None:
        tracer.start_span("bench.span").end()

    async def cache_gets() -> float:
        return time_sync(cache.get, 3, n_gets)

    async def cache_spans() -> float:
        return time_sync(span_once, None, n_gets)

    cache_sdk = await interleaved(
        sizes.reps, {"span": (cache_spans, flush), "cache": (cache_gets, flush)}
    )

    # -- wait_for_all_mots of N thunks, against a bare gather ----------------------------------
    thunks = [Thunk(i) for i in range(sizes.gather_width)]
    n_gathers = sizes.gathers

    async def gathers() -> float:
        async def block() -> None:
            for _ in range(n_gathers):
                await asyncio.gather(*(thunk.avalue() for thunk in thunks))

        return await time_async(block, n_gathers)

    async def waits() -> float:
        async def block() -> None:
            for _ in range(n_gathers):
                await wait_for_all_mots(thunks)

        return await time_async(block, n_gathers)

    async def contract_gathers() -> float:
        async def block() -> None:
            for _ in range(n_gathers):
                await contract_calls_gather(thunks, stream_tracer, instruments)

        return await time_async(block, n_gathers)

    await waits()
    gather = await interleaved(
        sizes.reps,
        {
            "gather": (gathers, flush),
            "contract": (contract_gathers, flush),
            "thunkscope": (waits, flush),
        },
    )
    breakdown.append(
        part(
            "wait_for_all_mots: the SDK calls SPEC section 2 asks of it around a bare gather, "
            "alone",
            gather["contract"],
            gather["gather"],
            "x the bare gather",
        )
    )

    width = sizes.gather_width
    figures = [
        figure(
            f"send_to_queue per item (SDK, chunk_timeout=120, stall watch, {n_items:,} items)",
            per_item["thunkscope"],
            "plain async for + queue.put",
            per_item["plain"],
            1.2,
        ),
        figure(
            f"send_to_queue per item (SDK, chunk_timeout=120, stall watch, {n_items:,} items)",
            per_item["thunkscope"],
            "per-chunk asyncio.timeout loop (upstream)",
            per_item["timeout"],
            0.10,
        ),
        figure(
            "send_to_queue fixed cost: one-item stream less the plain loop's (SDK)",
            fixed_cost,
            "one bare SDK span start+end",
            fixed["span"],
            3.0,
        ),
        figure(
            "ClientCache.get hit (SDK)",
            cache_sdk["cache"],
            "one bare SDK span start+end",
            cache_sdk["span"],
            1.5,
        ),
        figure(
            f"wait_for_all_mots of {width} thunks (SDK)",
            gather["thunkscope"],
            f"bare asyncio.gather of {width}",
            gather["gather"],
            1.2,
        ),
    ]
    return figures, breakdown


def worker_sdk(sizes: Sizes) -> dict[str, Any]:
    """Every figure that needs the SDK configured, in one process with global providers."""
    sdk = install_sdk()
    try:
        figures, breakdown = asyncio.run(_sdk_figures(sizes, sdk))
        sdk.flush()
        ended = sum(sdk.ended.ended.values())
        exported = sdk.exporter.exported
    finally:
        sdk.shutdown()
    return {
        "figures": [asdict(f) for f in figures],
        "breakdown": [asdict(p) for p in breakdown],
        "spans": {"ended": ended, "exported": exported, "dropped": ended - exported},
        "batch_settings": sdk.batch_settings,
    }


def _rss_bytes() -> int:
    """The resident set size now (not the high-water mark)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the high-water mark is the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def suspending_numbers(count: int) -> AsyncIterator[int]:
    """A backend stream that suspends before its first item, as a network stream would."""
    await asyncio.sleep(0)
    for i in range(count):
        yield i


def worker_rss(sizes: Sizes) -> dict[str, Any]:
    """Streams one after another, SDK on: memory must stay flat, the registry must empty."""
    from thunkscope import _inflight, send_to_queue

    sdk = install_sdk()

    span_queue = sdk.span_queue()
    peak = 0

    async def run(count: int) -> None:
        nonlocal peak
        for i in range(count):
            queue: asyncio.Queue[Any] = asyncio.Queue()
            await send_to_queue(suspending_numbers(3), queue, chunk_timeout=CHUNK_TIMEOUT)
            if queue.qsize() != 4:
                raise AssertionError(f"expected 3 items and a sentinel, got {queue.qsize()}")
            if i % RSS_FLUSH_EVERY == 0:
                peak = max(peak, len(span_queue))
                sdk.flush()

    async def main() -> dict[str, Any]:
        warmup = min(20_000, sizes.rss_streams)
        await run(warmup)  # reach the steady state: caches, allocator arenas
        sdk.flush()
        _settle()
        before = _rss_bytes()
        blocks_before = sys.getallocatedblocks()
        start = time.perf_counter()
        await run(sizes.rss_streams)
        elapsed = time.perf_counter() - start
        sdk.flush()
        _settle()
        after = _rss_bytes()
        blocks_after = sys.getallocatedblocks()
        return {
            "streams": sizes.rss_streams,
            "warmup_streams": warmup,
            "rss_before_mb": round(before / 2**20, 2),
            "rss_after_mb": round(after / 2**20, 2),
            "rss_growth_mb": round((after - before) / 2**20, 3),
            "allocated_blocks_growth": blocks_after - blocks_before,
            "registered_after": _inflight.registered(),
            "span_queue_peak": peak,
            "span_flush_every": RSS_FLUSH_EVERY,
            "us_per_stream": round(elapsed / sizes.rss_streams * 1e6, 2),
        }

    try:
        detail = asyncio.run(main())
    finally:
        sdk.shutdown()
    passed = detail["rss_growth_mb"] < RSS_LIMIT_MB and detail["registered_after"] == 0
    summary = (
        f"{detail['streams']:,} sequential streams: RSS {detail['rss_growth_mb']:+.2f} MB "
        f"(limit {RSS_LIMIT_MB:g}), {detail['allocated_blocks_growth']:+,} allocated blocks, "
        f"in-flight registry {detail['registered_after']}"
    )
    return {"checks": [asdict(Check("sequential streams", passed, summary, detail))]}


async def chunked_numbers(count: int, every: int) -> AsyncIterator[int]:
    """A backend stream that suspends every `every` items, so concurrent streams interleave."""
    for i in range(count):
        if i % every == 0:
            await asyncio.sleep(0)
        yield i


def worker_concurrent(sizes: Sizes) -> dict[str, Any]:
    """Many streams at once, SDK on with OTLP encoding: every item in order, every span out."""
    from thunkscope import send_to_queue

    sdk = install_sdk(encode=True)
    n_streams, n_items = sizes.concurrent_streams, sizes.concurrent_items

    async def consume(queue: asyncio.Queue[Any]) -> tuple[int, bool]:
        expected = 0
        in_order = True
        while True:
            item = await queue.get()
            if item is None:
                return expected, in_order
            if item != expected:
                in_order = False
            expected += 1

    async def main() -> tuple[list[tuple[int, bool]], float]:
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue(maxsize=64) for _ in range(n_streams)]
        start = time.perf_counter()
        producers = [
            asyncio.create_task(
                send_to_queue(chunked_numbers(n_items, 16), queue, name="bench.concurrent")
            )
            for queue in queues
        ]
        results = await asyncio.gather(*(consume(queue) for queue in queues))
        await asyncio.gather(*producers)
        return results, time.perf_counter() - start

    try:
        results, elapsed = asyncio.run(main())
        sdk.flush()
        ended = sdk.ended.ended.get("send_to_queue", 0)
        exported = sdk.exporter.by_name.get("send_to_queue", 0)
        all_ended = sum(sdk.ended.ended.values())
        all_exported = sdk.exporter.exported
    finally:
        sdk.shutdown()
    complete = sum(1 for count, in_order in results if count == n_items and in_order)
    detail = {
        "streams": n_streams,
        "items_per_stream": n_items,
        "streams_complete_in_order": complete,
        "stream_spans_ended": ended,
        "stream_spans_exported": exported,
        "spans_dropped": all_ended - all_exported,
        "otlp_bytes_encoded": sdk.exporter.encoded_bytes,
        "seconds": round(elapsed, 2),
        "batch_settings": sdk.batch_settings,
    }
    passed = complete == n_streams and exported == n_streams and all_ended == all_exported
    summary = (
        f"{n_streams:,} concurrent streams x {n_items:,} items: {complete:,} complete and in "
        f"order, {exported:,}/{n_streams:,} stream spans exported, "
        f"{detail['spans_dropped']} dropped (queue {sdk.batch_settings['max_queue_size']:,}, "
        f"batch {sdk.batch_settings['max_export_batch_size']:,})"
    )
    return {"checks": [asdict(Check("concurrent streams", passed, summary, detail))]}


# --- mellea: its own loop, and the instrumented one ----------------------------------------------

MELLEA_VARIANTS = ("mellea", "fast", "wrapping")
MELLEA_CALLGRIND_STREAMS = (1, 6)  # streams measured after the warm-up, one valgrind run each


def mellea_functions() -> dict[str, Callable[..., Awaitable[None]]]:
    """mellea's own send_to_queue, the fast path's stand-in (from instrument(fast_path=True))
    and the wrapping path's wrapper of it, all on the installed mellea (0.8)."""
    import wrapt
    from mellea.helpers import async_helpers

    from thunkscope.instrumentation import MelleaInstrumentor
    from thunkscope.instrumentation._stream import make_send_to_queue_wrapper

    original = async_helpers.send_to_queue
    instrumentor = MelleaInstrumentor()
    instrumentor.instrument(fast_path=True)
    if not instrumentor.fast_path_active:
        raise RuntimeError("the mellea fast path did not take over: see the log line above")
    return {
        "mellea": original,
        "fast": async_helpers.send_to_queue,
        "wrapping": wrapt.FunctionWrapper(
            original, make_send_to_queue_wrapper("mellea", CHUNK_TIMEOUT)
        ),
    }


async def mellea_streams(
    function: Callable[..., Awaitable[None]], streams: int, items: int
) -> None:
    """`streams` streams of `items` never-suspending chunks, each into a fresh thunk's
    unbounded queue, as a mellea 0.8 backend feeds them; every chunk and the sentinel land."""
    from mellea.core import ModelOutputThunk

    for _ in range(streams):
        mot = ModelOutputThunk(None)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        mot._gen.queue = queue
        await function(numbers(items), mot, chunk_timeout=CHUNK_TIMEOUT)
        if queue.qsize() != items + 1:
            raise RuntimeError(f"{queue.qsize()} of {items + 1} puts landed")


async def _mellea_figures(sizes: Sizes, sdk: Sdk) -> tuple[list[Figure], list[Part]]:
    functions = mellea_functions()
    streams, items = sizes.mellea_streams, sizes.mellea_items

    def block(name: str) -> Callable[[], Awaitable[float]]:
        async def timed() -> float:
            function = functions[name]
            return await time_async(
                lambda: mellea_streams(function, streams, items), streams * items
            )

        return timed

    for name in MELLEA_VARIANTS:
        await mellea_streams(functions[name], 1, items)  # warm up
    samples = await interleaved(
        sizes.reps, {name: (block(name), sdk.flush) for name in MELLEA_VARIANTS}
    )
    label = f"SDK, chunk_timeout=120, {items:,} never-suspending chunks"
    figures = [
        figure(
            f"mellea 0.8 send_to_queue per chunk, instrumented, fast path ({label})",
            samples["fast"],
            "mellea 0.8's own send_to_queue (per-chunk asyncio.timeout)",
            samples["mellea"],
            0.2,
        )
    ]
    parts = [
        part(
            "mellea 0.8 send_to_queue per chunk, instrumented by wrapping (no fast path)",
            samples["wrapping"],
            samples["mellea"],
            "x mellea's own",
        )
    ]
    return figures, parts


def worker_mellea(sizes: Sizes) -> dict[str, Any]:
    """The per-chunk cost of mellea's send_to_queue, its own and instrumented, SDK on."""
    sdk = install_sdk()
    try:
        figures, parts = asyncio.run(_mellea_figures(sizes, sdk))
        sdk.flush()
    finally:
        sdk.shutdown()
    return {"figures": [asdict(f) for f in figures], "breakdown": [asdict(p) for p in parts]}


def mellea_instructions_run(variant: str, streams: int, items: int) -> None:
    """What one valgrind run executes: the SDK, a warm-up stream, then `streams` streams."""
    sdk = install_sdk()

    async def main() -> None:
        function = mellea_functions()[variant]
        await mellea_streams(function, 1, items)
        sdk.flush()
        await mellea_streams(function, streams, items)

    try:
        asyncio.run(main())
    finally:
        sdk.shutdown()


def callgrind_per_chunk(python: str, items: int) -> dict[str, float]:
    """Instructions per chunk of each variant, from two callgrind runs apiece."""
    per_chunk: dict[str, float] = {}
    low, high = MELLEA_CALLGRIND_STREAMS
    for variant in MELLEA_VARIANTS:
        counts = []
        for streams in (low, high):
            command = [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                python,
                str(Path(__file__).resolve()),
                "--instructions",
                f"{variant},{streams},{items}",
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            found = [line for line in done.stderr.splitlines() if "Collected :" in line]
            if done.returncode != 0 or not found:
                raise RuntimeError(f"callgrind run failed:\n{done.stderr.strip()[-3000:]}")
            counts.append(int(found[-1].rsplit(":", 1)[1]))
        per_chunk[variant] = (counts[1] - counts[0]) / ((high - low) * items)
    return per_chunk


def mellea_python(given: str | None) -> str | None:
    """The interpreter of the mellea 0.8 environment, if there is one."""
    if given:
        return given
    candidate = Path(__file__).resolve().parent.parent / ".venv-mellea08" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


WORKERS: dict[str, Callable[[Sizes], dict[str, Any]]] = {
    "nosdk": worker_nosdk,
    "sdk": worker_sdk,
    "rss": worker_rss,
    "concurrent": worker_concurrent,
    "mellea": worker_mellea,
}


# --- the parent: run the workers, print the table ------------------------------------------------


def run_worker(name: str, quick: bool, clock: str, python: str = sys.executable) -> dict[str, Any]:
    """Run one worker in a fresh interpreter and return what it printed as JSON."""
    command = [python, str(Path(__file__).resolve()), "--worker", name, "--clock", clock]
    if quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"worker {name} failed ({done.returncode}):\n{done.stderr.strip()[-4000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from importlib import metadata

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "opentelemetry_sdk": version("opentelemetry-sdk"),
        "structlog": version("structlog"),
        "thunkscope": version("thunkscope"),
    }


def _ns(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def table(figures: Iterable[dict[str, Any]]) -> str:
    """The figures as a Markdown table (the README shows the same)."""
    rows = [
        "| figure | ns | baseline | baseline ns | ratio | target | result |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for f in figures:
        rows.append(
            f"| {f['name']} | {_ns(f['value_ns'])} | {f['baseline']} | {_ns(f['baseline_ns'])} "
            f"| {f['ratio']:.3f} | <= {f['target']:g} | {'pass' if f['passed'] else 'FAIL'} |"
        )
    return "\n".join(rows)


def breakdown_lines(parts: Iterable[dict[str, Any]]) -> str:
    """Where a figure's cost goes, one line per part, in units of its baseline."""
    return "\n".join(
        f"* {p['name']}: {_ns(p['value_ns'])} ns, {p['ratio']:.2f} {p['unit']}" for p in parts
    )


def checks_table(checks: Iterable[dict[str, Any]]) -> str:
    """The resource checks, one line each."""
    return "\n".join(f"- {'pass' if c['passed'] else 'FAIL'}: {c['summary']}" for c in checks)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every worker, print the table and the checks, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds; figures untrusted")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="time blocks by this process's CPU time (default) or by the wall clock",
    )
    parser.add_argument(
        "--only",
        metavar="GROUPS",
        help=f"comma-separated groups to run, of {','.join(WORKERS)} (default: all)",
    )
    parser.add_argument(
        "--mellea-python",
        metavar="PATH",
        help="the interpreter of a mellea 0.8 environment (default: .venv-mellea08's)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="with the mellea group: instructions per chunk under valgrind --tool=callgrind",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--instructions", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    use_clock(args.clock)

    if args.worker:
        print(json.dumps(WORKERS[args.worker](sizes)))
        return 0
    if args.instructions:
        variant, streams, items = args.instructions.split(",")
        mellea_instructions_run(variant, int(streams), int(items))
        return 0

    started = time.perf_counter()
    figures: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    breakdown: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    groups = args.only.split(",") if args.only else list(WORKERS)
    unknown = set(groups) - set(WORKERS)
    if unknown:
        parser.error(f"unknown groups: {', '.join(sorted(unknown))}")
    notes: list[str] = []
    mellea = mellea_python(args.mellea_python)
    for name in groups:
        python = sys.executable
        if name == "mellea":
            if mellea is None:
                notes.append(
                    "mellea group left out: no .venv-mellea08 (bash scripts/install-mellea-envs.sh"
                    " or --mellea-python)"
                )
                continue
            python = mellea
        result = run_worker(name, args.quick, args.clock, python)
        figures.extend(result.get("figures", []))
        checks.extend(result.get("checks", []))
        breakdown.extend(result.get("breakdown", []))
        if "spans" in result:
            extra["sdk_worker_spans"] = result["spans"]
    if args.callgrind and mellea is not None and "mellea" in groups:
        per_chunk = callgrind_per_chunk(mellea, sizes.mellea_items)
        extra["mellea_instructions_per_chunk"] = per_chunk
        notes.append(
            "instructions per chunk (callgrind, SDK on): "
            + ", ".join(f"{name} {count:,.0f}" for name, count in per_chunk.items())
            + f"; fast/mellea {per_chunk['fast'] / per_chunk['mellea']:.3f}, "
            f"wrapping/mellea {per_chunk['wrapping'] / per_chunk['mellea']:.3f}"
        )
    elapsed = time.perf_counter() - started
    report = {
        "mode": "quick" if args.quick else "full",
        "reps": sizes.reps,
        "clock": args.clock,
        "machine": machine(),
        "figures": figures,
        "checks": checks,
        "breakdown": breakdown,
        "all_passed": all(f["passed"] for f in figures) and all(c["passed"] for c in checks),
        "elapsed_s": round(elapsed, 1),
        "notes": notes,
        **extra,
    }
    info = report["machine"]
    print(
        f"thunkscope benchmark ({report['mode']}, median of {sizes.reps}, "
        f"{args.clock} time): "
        f"Python {info['python']}, OTel SDK {info['opentelemetry_sdk']}, "
        f"{info['cpus']} CPUs ({info['cpu']})"
    )
    print()
    print(table(figures))
    print()
    if breakdown:
        print(breakdown_lines(breakdown))
        print()
    if checks:
        print(checks_table(checks))
        print()
    for note in notes:
        print(note)
    if notes:
        print()
    print(
        f"{'all targets met' if report['all_passed'] else 'TARGETS MISSED'} "
        f"in {report['elapsed_s']} s"
    )
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if args.check and not report["all_passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
