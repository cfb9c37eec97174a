"""iter_queue: the consumer's side of the queue protocol and its linked CONSUMER span."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

import thunkscope
from support.fakes import HANG
from thunkscope import iter_queue, names, send_to_queue

pytestmark = pytest.mark.virtual_time  # sleeps and hangs take no real time


async def tokens(*items: Any, fail: BaseException | None = None) -> AsyncIterator[Any]:
    """Yield `items`, then raise `fail` if given."""
    for item in items:
        await asyncio.sleep(0)
        yield item
    if fail is not None:
        raise fail


async def hang() -> AsyncIterator[str]:
    """One item, then nothing for a long time."""
    yield "a"
    await asyncio.sleep(HANG)


async def read_into(received: list[Any], aqueue: asyncio.Queue[Any]) -> None:
    """Append what iter_queue yields to `received` until it ends or raises."""
    async for item in iter_queue(aqueue):
        received.append(item)


class Boom(Exception):
    """A backend failure."""


def producer_span(telemetry: Any) -> Any:
    """The one finished send_to_queue span."""
    (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
    return span


def consumer_span(telemetry: Any) -> Any:
    """The one finished process_queue span."""
    (span,) = telemetry.spans(names.SPAN_PROCESS_QUEUE)
    return span


class TestItems:
    async def test_items_until_the_sentinel(self) -> None:
        """Every item in order, and the iteration ends at the sentinel."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        producer = asyncio.create_task(send_to_queue(tokens("a", None, "c"), queue))
        received = [item async for item in iter_queue(queue)]
        await producer
        # A None item of the stream is the sentinel to any consumer of this protocol.
        assert received == ["a"]

    async def test_items_then_the_forwarded_exception(self) -> None:
        """Items come first, then the exception the producer forwarded is raised."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        error = Boom("backend failed")
        producer = asyncio.create_task(send_to_queue(tokens("a", "b", fail=error), queue))
        received: list[Any] = []
        with pytest.raises(Boom) as raised:
            await read_into(received, queue)
        await producer
        assert received == ["a", "b"]
        assert raised.value is error

    async def test_timeout_is_raised(self) -> None:
        """A chunk_timeout expiry reaches the consumer as the TimeoutError put on the queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        producer = asyncio.create_task(send_to_queue(hang(), queue, chunk_timeout=0.05))
        received: list[Any] = []
        with pytest.raises(TimeoutError, match="STREAM_TIMEOUT"):
            await read_into(received, queue)
        await producer
        assert received == ["a"]

    async def test_nothing_after_the_end(self) -> None:
        """After the terminator the iterator stays exhausted."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue("one", queue)
        iterator = iter_queue(queue)
        assert [item async for item in iterator] == ["one"]
        with pytest.raises(StopAsyncIteration):
            await iterator.__anext__()

    async def test_nothing_after_aclose(self) -> None:
        """A closed iterator yields nothing more, even with items left on the queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(tokens("a", "b"), queue)
        iterator = iter_queue(queue)
        assert await iterator.__anext__() == "a"
        await iterator.aclose()
        with pytest.raises(StopAsyncIteration):
            await iterator.__anext__()

    def test_not_a_queue(self) -> None:
        """Something without get() is a TypeError naming what was given."""
        with pytest.raises(TypeError, match="got list"):
            iter_queue([])  # type: ignore[arg-type]

    def test_public_names(self) -> None:
        """iter_queue is exported at the top level."""
        assert thunkscope.iter_queue is iter_queue


class TestSpan:
    async def test_completed_span_is_linked_to_the_producer(self, telemetry: Any) -> None:
        """A CONSUMER span process_queue, child of the reader's span, links to send_to_queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        tracer = telemetry.tracer_provider.get_tracer("test")
        producer = asyncio.create_task(send_to_queue(tokens("a", "b", "c"), queue, name="llm"))
        with tracer.start_as_current_span("reader") as reader:
            received = [item async for item in iter_queue(queue)]
        await producer
        assert received == ["a", "b", "c"]
        sent, span = producer_span(telemetry), consumer_span(telemetry)
        assert span.kind is SpanKind.CONSUMER
        assert dict(span.attributes) == {
            names.STREAM_ID: sent.attributes[names.STREAM_ID],
            names.STREAM_NAME: "llm",
            names.QUEUE_ITEMS: 3,
            names.QUEUE_OUTCOME: names.OUTCOME_COMPLETED,
        }
        (link,) = span.links
        assert link.context == sent.get_span_context()
        assert span.parent == reader.get_span_context()
        assert span.status.status_code is StatusCode.UNSET

    async def test_reader_started_before_the_producer(self, telemetry: Any) -> None:
        """A reader waiting before any producer started still links to it."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> list[Any]:
            return [item async for item in iter_queue(queue)]

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        await send_to_queue(tokens("a", "b"), queue, name="late")
        assert await reader == ["a", "b"]
        span = consumer_span(telemetry)
        (link,) = span.links
        assert link.context == producer_span(telemetry).get_span_context()
        assert span.attributes[names.STREAM_NAME] == "late"

    async def test_error(self, telemetry: Any) -> None:
        """A forwarded exception ends the span as error, with error.type and status ERROR."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(tokens("a", fail=Boom("no")), queue, name="bad")
        with pytest.raises(Boom):
            async for _ in iter_queue(queue):
                pass
        span = consumer_span(telemetry)
        assert dict(span.attributes) == {
            names.STREAM_ID: producer_span(telemetry).attributes[names.STREAM_ID],
            names.STREAM_NAME: "bad",
            names.QUEUE_ITEMS: 1,
            names.QUEUE_OUTCOME: names.OUTCOME_ERROR,
            names.ERROR_TYPE: "Boom",
        }
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "the producer forwarded Boom"

    async def test_timeout_is_an_error_outcome(self, telemetry: Any) -> None:
        """A chunk_timeout reaches the consumer span as error with error.type TimeoutError."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(hang(), queue, chunk_timeout=0.05)
        with pytest.raises(TimeoutError):
            async for _ in iter_queue(queue):
                pass
        span = consumer_span(telemetry)
        assert span.attributes[names.QUEUE_OUTCOME] == names.OUTCOME_ERROR
        assert span.attributes[names.ERROR_TYPE] == "TimeoutError"

    async def test_aclose_is_abandoned(self, telemetry: Any) -> None:
        """A reader that stops early and closes the iterator ends the span as abandoned."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(tokens("a", "b", "c"), queue)
        iterator = iter_queue(queue)
        async for item in iterator:
            assert item == "a"
            break
        await iterator.aclose()
        await iterator.aclose()
        span = consumer_span(telemetry)
        assert span.attributes[names.QUEUE_ITEMS] == 1
        assert span.attributes[names.QUEUE_OUTCOME] == names.OUTCOME_ABANDONED
        assert span.status.status_code is StatusCode.UNSET

    async def test_async_with_is_abandoned(self, telemetry: Any) -> None:
        """Leaving an `async with` block before the end ends the span as abandoned."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(tokens("a", "b"), queue)
        async with iter_queue(queue) as iterator:
            assert await iterator.__anext__() == "a"
        assert consumer_span(telemetry).attributes[names.QUEUE_OUTCOME] == names.OUTCOME_ABANDONED

    async def test_break_without_aclose_is_abandoned(self, telemetry: Any) -> None:
        """A reader that breaks out and drops the iterator still ends the span, as abandoned."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(tokens("a", "b"), queue)
        async for _ in iter_queue(queue):
            break
        gc.collect()
        assert consumer_span(telemetry).attributes[names.QUEUE_OUTCOME] == names.OUTCOME_ABANDONED

    async def test_cancelled_reader_is_abandoned(self, telemetry: Any) -> None:
        """A reader cancelled while waiting for the next item ends the span as abandoned."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            async for _ in iter_queue(queue):
                pass

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        span = consumer_span(telemetry)
        assert dict(span.attributes) == {
            names.QUEUE_ITEMS: 0,
            names.QUEUE_OUTCOME: names.OUTCOME_ABANDONED,
        }
        assert span.links == ()

    async def test_ends_once(self, telemetry: Any, caplog: pytest.LogCaptureFixture) -> None:
        """Closing, exhausting again and collecting a finished iterator end nothing twice."""
        caplog.set_level(logging.WARNING)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(tokens("a"), queue)
        iterator = iter_queue(queue)
        assert [item async for item in iterator] == ["a"]
        await iterator.aclose()
        del iterator
        gc.collect()
        assert len(telemetry.spans(names.SPAN_PROCESS_QUEUE)) == 1
        assert "ended span" not in caplog.text

    async def test_never_iterated_records_nothing(self, telemetry: Any) -> None:
        """An iterator that is made but never read starts no span."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        iterator = iter_queue(queue)
        await iterator.aclose()
        assert telemetry.spans(names.SPAN_PROCESS_QUEUE) == []

    async def test_log_event(self, telemetry: Any, log_events: list[dict[str, Any]]) -> None:
        """One queue.consumed event per reader, with the items, outcome and ids."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(tokens("a", "b"), queue, name="logged")
        assert [item async for item in iter_queue(queue)] == ["a", "b"]
        span = consumer_span(telemetry)
        ctx = span.get_span_context()
        (entry,) = [e for e in log_events if e["event"] == names.LOG_QUEUE_CONSUMED]
        assert entry == {
            "event": names.LOG_QUEUE_CONSUMED,
            "log_level": "debug",
            "items": 2,
            "outcome": names.OUTCOME_COMPLETED,
            "stream_id": span.attributes[names.STREAM_ID],
            "stream": "logged",
            "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
        }
