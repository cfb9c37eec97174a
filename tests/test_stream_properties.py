"""Property test: every way a stream can go, producer and consumer, ends cleanly and once.

Hypothesis draws stream scripts (response kinds, item counts, delays of a few
milliseconds, failures, hangs past chunk_timeout, cancellations, bounded queues, slow,
early-stopping consumers, iterators whose aclose raises) and runs each one through
`send_to_queue` and `iter_queue` on a fresh event loop with fresh in-memory telemetry.
Whatever happened, the consumer saw the items in order and at most one terminator
(exactly one unless the producer was cancelled), each span ended exactly once with an
outcome matching what the consumer saw, and nothing is left in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan

from conftest import Telemetry, in_memory_telemetry
from support.waiting import until
from thunkscope import _inflight, iter_queue, names, send_to_queue, testing

HANG = 0.05  # a hang: longer than the short chunk_timeout, short enough for a test
NAME = "prop"


class Boom(Exception):
    """The scripted backend failure."""


@dataclass(frozen=True)
class Script:
    """One drawn stream: what the backend does, how it is watched, how it is read."""

    response: str  # "iterator", "coroutine_iterator", "coroutine_value", "coroutine_raises"
    answer_delay: float
    delays: tuple[float, ...]  # before each item
    fail_at: int | None  # raise Boom after this many items
    hang_at: int | None  # hang before this item
    aclose_raises: bool
    chunk_timeout: float | None
    stall_after: float | None
    cancel_after: float | None
    maxsize: int
    stop_after: int | None  # the consumer stops after this many items
    consumer_delay: float

    @property
    def items(self) -> list[str]:
        """What the backend would give if nothing went wrong."""
        if self.response == "coroutine_value":
            return ["value"]
        if self.response == "coroutine_raises":
            return []
        end = len(self.delays) if self.fail_at is None else min(self.fail_at, len(self.delays))
        return [f"item-{i}" for i in range(end)]


class ScriptedIterator:
    """An async iterator following a script; its aclose may raise."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.index = 0

    def __aiter__(self) -> ScriptedIterator:
        return self

    async def __anext__(self) -> str:
        script, index = self.script, self.index
        if script.fail_at is not None and index >= script.fail_at:
            raise Boom(f"failed after {index} items")
        if index >= len(script.delays):
            raise StopAsyncIteration
        if script.hang_at == index:
            await asyncio.sleep(HANG)
        if script.delays[index]:
            await asyncio.sleep(script.delays[index])
        self.index += 1
        return f"item-{index}"

    async def aclose(self) -> None:
        if self.script.aclose_raises:
            raise RuntimeError("aclose failed")


def backend(script: Script) -> Any:
    """The `co` argument the script asks for."""
    if script.response == "iterator":
        return ScriptedIterator(script)

    async def answer() -> Any:
        if script.answer_delay:
            await asyncio.sleep(script.answer_delay)
        if script.response == "coroutine_raises":
            raise Boom("no answer")
        if script.response == "coroutine_value":
            return "value"
        return ScriptedIterator(script)

    return answer()


delays = st.sampled_from([0.0, 0.0, 0.0005, 0.001, 0.003])


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """Random stream scripts, small and fast."""
    count = draw(st.integers(0, 8))
    return Script(
        response=draw(
            st.sampled_from(
                ["iterator", "coroutine_iterator", "coroutine_value", "coroutine_raises"]
            )
        ),
        answer_delay=draw(delays),
        delays=tuple(draw(st.lists(delays, min_size=count, max_size=count))),
        fail_at=draw(st.none() | st.integers(0, count)),
        hang_at=draw(st.none() | st.integers(0, max(count - 1, 0))),
        aclose_raises=draw(st.booleans()),
        chunk_timeout=draw(st.sampled_from([None, 0.02, 1.0])),
        stall_after=draw(st.sampled_from([None, 0.001, 0.01])),
        cancel_after=draw(st.none() | st.sampled_from([0.0, 0.001, 0.005, 0.02])),
        maxsize=draw(st.sampled_from([0, 1, 2])),
        stop_after=draw(st.none() | st.integers(0, 4)),
        consumer_delay=draw(st.sampled_from([0.0, 0.0, 0.001])),
    )


@dataclass
class Run:
    """What one script did: the producer's fate, what the consumer and the drain saw."""

    producer_cancelled: bool
    received: list[Any]
    ending: Any  # "sentinel", "abandoned", or the exception the consumer got
    leftover: list[Any]


async def run_script(script: Script) -> Run:
    """Run the producer, a consumer through iter_queue, and an optional canceller."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=script.maxsize)
    producer = asyncio.create_task(
        send_to_queue(
            backend(script),
            queue,
            chunk_timeout=script.chunk_timeout,
            stall_after=script.stall_after,
            name=NAME,
        )
    )
    received: list[Any] = []

    async def consume() -> Any:
        iterator = iter_queue(queue)
        try:
            async for item in iterator:
                received.append(item)
                if script.consumer_delay:
                    await asyncio.sleep(script.consumer_delay)
                if script.stop_after is not None and len(received) >= script.stop_after:
                    await iterator.aclose()
                    return "abandoned"
        except Exception as exc:
            return exc
        return "sentinel"

    async def cancel_later(delay: float) -> None:
        await asyncio.sleep(delay)
        producer.cancel()

    consumer = asyncio.create_task(consume())
    canceller = None
    if script.cancel_after is not None:
        canceller = asyncio.create_task(cancel_later(script.cancel_after))

    leftover: list[Any] = []
    deadline = time.monotonic() + 5.0
    while not producer.done():
        assert time.monotonic() < deadline, f"producer never ended: {script}"
        if consumer.done():  # the consumer left: whoever owns the queue drains it
            while not queue.empty():
                leftover.append(queue.get_nowait())
        await asyncio.wait([producer], timeout=0.001)
    if canceller is not None:
        canceller.cancel()
    # Let the consumer read what is left; with no terminator coming, cancel it.
    for _ in range(100_000):
        if consumer.done() or queue.empty():
            break
        await asyncio.sleep(0)
    if not consumer.done():
        await asyncio.wait([consumer], timeout=0.01 if producer.cancelled() else 2.0)
    if not consumer.done():
        consumer.cancel()
    await asyncio.wait([consumer])
    ending = "cancelled" if consumer.cancelled() else consumer.result()
    while not queue.empty():
        leftover.append(queue.get_nowait())
    return Run(producer.cancelled(), received, ending, leftover)


class SpanEnds(logging.Handler):
    """Collects the SDK's complaints about spans ended twice."""

    def __init__(self) -> None:
        super().__init__()
        self.twice: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "ended span" in record.getMessage():
            self.twice.append(record.getMessage())


@contextmanager
def fresh_telemetry() -> Iterator[tuple[Telemetry, SpanEnds]]:
    """In-memory providers for one example, and a watch on double span ends."""
    handler = SpanEnds()
    sdk_logger = logging.getLogger("opentelemetry.sdk.trace")
    sdk_logger.addHandler(handler)
    try:
        with in_memory_telemetry() as telemetry:
            yield telemetry, handler
    finally:
        sdk_logger.removeHandler(handler)


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    """The one span called `name`."""
    (span,) = [s for s in spans if s.name == name]
    return span


class TestEveryWayOut:
    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(script=scripts())
    def test_stream_scripts(self, script: Script) -> None:
        """Items in order, one terminator, spans ended once, nothing in flight afterwards."""
        with fresh_telemetry() as (telemetry, span_ends):
            with testing.virtual_time() as virtual:  # delays and hangs in no real time
                run = virtual.run_until_complete(run_script(script))
            spans = telemetry.spans()
            active = telemetry.points(names.STREAM_ACTIVE.name)
            stalls = telemetry.points(names.STREAM_STALLS.name)

        # What was put on the queue, in order: items, then at most one terminator.
        put = list(run.received)
        if run.ending == "sentinel":
            put.append(None)
        elif isinstance(run.ending, Exception):
            put.append(run.ending)
        put += run.leftover
        terminators = [x for x in put if x is None or isinstance(x, Exception)]
        items = [x for x in put if x not in terminators]
        assert put == items + terminators, "a terminator came before an item"
        assert items == script.items[: len(items)], "items out of order or unknown"

        producer = only(spans, names.SPAN_SEND_TO_QUEUE)
        outcome = producer.attributes[names.STREAM_OUTCOME]
        ending = run.ending if isinstance(run.ending, str) else type(run.ending).__name__
        event(f"producer {outcome}, consumer {ending}")
        if outcome == names.OUTCOME_CANCELLED:
            assert run.producer_cancelled
            assert terminators == [], "a cancelled stream put a terminator"
        else:
            # A producer cancelled after its terminator got through (closing a timed-out
            # iterator) reports what the consumer got: the timeout.
            assert not run.producer_cancelled or outcome == names.OUTCOME_TIMEOUT
            assert len(terminators) == 1, f"{len(terminators)} terminators"
            (terminator,) = terminators
            if outcome == names.OUTCOME_COMPLETED:
                assert terminator is None
                assert items == script.items
            elif outcome == names.OUTCOME_ERROR:
                assert isinstance(terminator, Boom)
                assert items == script.items
            else:
                assert outcome == names.OUTCOME_TIMEOUT
                assert type(terminator) is TimeoutError
                assert script.chunk_timeout is not None
        if outcome != names.OUTCOME_CANCELLED:
            assert producer.attributes[names.STREAM_ITEMS] == len(items)

        consumer = only(spans, names.SPAN_PROCESS_QUEUE)
        expected_consumer_outcome = (
            names.OUTCOME_COMPLETED
            if run.ending == "sentinel"
            else names.OUTCOME_ERROR
            if isinstance(run.ending, Exception)
            else names.OUTCOME_ABANDONED
        )
        assert consumer.attributes[names.QUEUE_OUTCOME] == expected_consumer_outcome
        assert consumer.attributes[names.QUEUE_ITEMS] == len(run.received)
        assert [link.context for link in consumer.links] == [producer.get_span_context()]

        events = [event.name for event in producer.events]
        assert events.count(names.EVENT_RESUMED) <= events.count(names.EVENT_STALLED)
        assert sum(p.value for p in stalls) == events.count(names.EVENT_STALLED)
        if script.stall_after is None:
            assert names.EVENT_STALLED not in events

        assert span_ends.twice == []
        assert _inflight.registered() == 0
        assert _inflight.inflight() == []
        assert [p.value for p in active if p.attributes[names.STREAM_NAME] == NAME] == [0]


class TestActiveCount:
    async def test_active_counts_running_streams(self, telemetry: Any) -> None:
        """thunkscope.stream.active reads the registry: 1 while a stream runs, 0 after."""
        release = asyncio.Event()

        async def stuck() -> Any:
            await release.wait()
            return "done"

        def active_by_name() -> dict[str, Any]:
            """thunkscope.stream.active per stream name, as collected now."""
            return {
                p.attributes[names.STREAM_NAME]: p.value
                for p in telemetry.points(names.STREAM_ACTIVE.name)
            }

        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(stuck(), queue, name="counted"))
        await until(lambda: _inflight.registered() == 1, what="the stream started")
        assert active_by_name()["counted"] == 1
        release.set()
        await task
        assert active_by_name()["counted"] == 0
