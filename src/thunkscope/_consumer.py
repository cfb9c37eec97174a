"""iter_queue: the consumer's side of the queue protocol, with a span linked to the producer.

A trace of a streamed LLM call has two halves that run in different tasks: the
producer (`send_to_queue`, a PRODUCER span) and whoever reads the queue. Reading it
through `iter_queue` gives the reader a CONSUMER span ``process_queue``, a child of the
reader's own context and linked to the producer's span, with the items consumed and
how it ended: ``completed`` (the sentinel), ``error`` (a forwarded exception, raised
here) or ``abandoned`` (the reader stopped early: ``aclose()``, ``break``, cancellation)::

    queue: asyncio.Queue = asyncio.Queue()
    producer = asyncio.create_task(thunkscope.send_to_queue(client.chat(...), queue))
    async for chunk in thunkscope.iter_queue(queue):
        ...

Per item it does what a plain ``await queue.get()`` loop does, plus two comparisons and
a counter; the span is started and ended once per reader.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Final

from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode

from thunkscope import _events as events
from thunkscope import names
from thunkscope._inflight import Producer, producer_of
from thunkscope._telemetry import end_span, report_failure, telemetry

__all__ = ["QueueIterator", "iter_queue"]

_LOG_LEVEL: Final = {
    names.OUTCOME_COMPLETED: events.DEBUG,
    names.OUTCOME_ERROR: events.INFO,
    names.OUTCOME_ABANDONED: events.INFO,
}


def iter_queue(aqueue: asyncio.Queue[Any]) -> QueueIterator:
    """Iterate over what `send_to_queue` puts on `aqueue`, until its terminator.

    Yields every item up to the ``None`` sentinel; an exception the producer forwarded
    is raised instead. Use it with ``async for``; ``aclose()`` (or ``async with``)
    ends it early and deterministically, as ``abandoned``.
    """
    if not callable(getattr(aqueue, "get", None)):
        raise TypeError(
            f"aqueue must be an asyncio.Queue (or have an async get()), got {type(aqueue).__name__}"
        )
    return QueueIterator(aqueue)


class QueueIterator:
    """The async iterator `iter_queue` returns; one CONSUMER span per iterator."""

    __slots__ = (
        "__weakref__",
        "_done",
        "_items",
        "_linked",
        "_producer",
        "_queue",
        "_span",
        "_started",
    )

    def __init__(self, aqueue: asyncio.Queue[Any]) -> None:
        self._queue = aqueue
        self._started = False  # the span starts on the first __anext__
        self._span: Span | None = None  # None before the start and once ended
        self._producer: Producer | None = None
        self._linked = False
        self._items = 0
        self._done = False  # the terminator was read, or the reader closed us

    def __aiter__(self) -> QueueIterator:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        if not self._started:
            self._start()
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            # The reader was cancelled: it stopped reading here. Should it catch the
            # cancellation and read on, it still gets every item, past the span's end.
            self._end(names.OUTCOME_ABANDONED)
            raise
        if not self._linked:
            self._link()
        if item is None:
            self._done = True
            self._end(names.OUTCOME_COMPLETED)
            raise StopAsyncIteration
        if isinstance(item, Exception):
            self._done = True
            self._end(names.OUTCOME_ERROR, item)
            raise item
        self._items += 1
        return item

    async def aclose(self) -> None:
        """Stop reading: the span ends as ``abandoned`` unless it already ended."""
        self._done = True
        self._end(names.OUTCOME_ABANDONED)

    async def __aenter__(self) -> QueueIterator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A reader that broke out of `async for` without aclose(): end the span now,
        # rather than leave it open for good.
        with contextlib.suppress(Exception):
            self._end(names.OUTCOME_ABANDONED)

    # -- the span ------------------------------------------------------------------------------

    def _start(self) -> None:
        self._started = True
        self._span = INVALID_SPAN
        self._producer = producer_of(self._queue)
        if not telemetry.tracing():
            return
        try:
            producer = self._producer
            attributes: dict[str, str] = {}
            links: list[Link] = []
            if producer is not None:
                attributes = {names.STREAM_ID: producer.stream_id, names.STREAM_NAME: producer.name}
                links.append(Link(producer.span_context))
                self._linked = True
            self._span = telemetry.tracer.start_span(
                names.SPAN_PROCESS_QUEUE, kind=SpanKind.CONSUMER, attributes=attributes, links=links
            )
        except Exception as exc:
            report_failure("span start", exc)

    def _link(self) -> None:
        """The producer started after the reader: link to it on the first thing it sent."""
        self._linked = True
        producer = self._producer = producer_of(self._queue)
        span = self._span
        if producer is None or span is None or not span.is_recording():
            return
        try:
            span.add_link(producer.span_context)
            span.set_attributes(
                {names.STREAM_ID: producer.stream_id, names.STREAM_NAME: producer.name}
            )
        except Exception as exc:
            report_failure("span link", exc)

    def _end(self, outcome: str, error: BaseException | None = None) -> None:
        span = self._span
        if span is None:
            return  # never started, or already ended: a span ends once
        self._span = None
        items = self._items
        error_type = None if error is None else type(error).__qualname__
        try:
            if span.is_recording():
                attributes: dict[str, Any] = {
                    names.QUEUE_ITEMS: items,
                    names.QUEUE_OUTCOME: outcome,
                }
                if error_type is not None:
                    attributes[names.ERROR_TYPE] = error_type
                    span.set_status(
                        Status(StatusCode.ERROR, f"the producer forwarded {error_type}")
                    )
                span.set_attributes(attributes)
        except Exception as exc:
            report_failure("span attributes", exc)
        finally:
            end_span(span)
        fields: dict[str, Any] = {"items": items, "outcome": outcome}
        if self._producer is not None:
            fields["stream_id"] = self._producer.stream_id
            fields["stream"] = self._producer.name
        if error_type is not None:
            fields["error_type"] = error_type
        fields.update(events.span_ids(span))
        events.emit(_LOG_LEVEL[outcome], names.LOG_QUEUE_CONSUMED, **fields)
