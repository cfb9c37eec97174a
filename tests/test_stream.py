"""The queue protocol of send_to_queue, rule by rule (SPEC section 1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

import thunkscope
from conftest import Telemetry
from support.fakes import HANG, agen, drain
from support.waiting import until
from thunkscope import DEFAULT_CHUNK_TIMEOUT, _inflight, names, send_to_queue

pytestmark = pytest.mark.virtual_time  # sleeps and hangs take no real time


class Boom(Exception):
    """A backend failure."""


class StalledIterator:
    """An async iterator that gives one item, then never another; records how it is closed."""

    def __init__(self, *, close_kind: str = "aclose", close_raises: bool = False) -> None:
        self.given = 0
        self.closed_with: str | None = None
        self._close_raises = close_raises
        if close_kind == "aclose":
            self.aclose = self._aclose
        elif close_kind == "close":
            self.close = self._close
        elif close_kind == "close_awaitable":
            self.close = self._close_awaitable

    def __aiter__(self) -> StalledIterator:
        return self

    async def __anext__(self) -> str:
        if self.given == 0:
            self.given = 1
            return "first"
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def _aclose(self) -> None:
        self.closed_with = "aclose"
        if self._close_raises:
            raise RuntimeError("close failed")

    def _close(self) -> None:
        self.closed_with = "close"
        if self._close_raises:
            raise RuntimeError("close failed")

    def _close_awaitable(self) -> Awaitable[None]:
        async def closing() -> None:
            await asyncio.sleep(0)
            self.closed_with = "close, awaited"

        return closing()


class TestResponses:
    def test_default_chunk_timeout(self) -> None:
        """DEFAULT_CHUNK_TIMEOUT is 120 seconds and is exported at the top level."""
        assert DEFAULT_CHUNK_TIMEOUT == 120.0
        assert thunkscope.DEFAULT_CHUNK_TIMEOUT is DEFAULT_CHUNK_TIMEOUT

    async def test_coroutine_returning_iterator(self) -> None:
        """A coroutine is awaited and the async iterator it returns is streamed, then None."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def backend() -> AsyncIterator[str]:
            return agen("a", "b", "c")

        await send_to_queue(backend(), queue)
        assert drain(queue) == ["a", "b", "c", None]

    async def test_iterator_handed_directly(self) -> None:
        """An async iterator passed directly is streamed in order, then None."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(agen(1, 2, 3, 4), queue)
        assert drain(queue) == [1, 2, 3, 4, None]

    async def test_empty_iterator(self) -> None:
        """An iterator with no items yields only the sentinel."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(agen(), queue)
        assert drain(queue) == [None]

    async def test_coroutine_returning_value(self) -> None:
        """A coroutine's non-iterator result is put as one item, then None."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def backend() -> dict[str, str]:
            return {"text": "hello"}

        await send_to_queue(backend(), queue)
        assert drain(queue) == [{"text": "hello"}, None]

    async def test_plain_value(self) -> None:
        """A plain value is the response itself: one item, then None."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue("just text", queue)
        assert drain(queue) == ["just text", None]

    async def test_falsy_items_are_passed_through(self) -> None:
        """Items are put as they are, falsy ones too: none of them ends the stream early."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(agen(0, "", [], 0.0), queue)
        assert drain(queue) == [0, "", [], 0.0, None]


class TestErrors:
    async def test_exception_while_awaiting(self) -> None:
        """An exception raised by the coroutine is put on the queue, with no sentinel after it."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        error = Boom("connection refused")

        async def backend() -> str:
            raise error

        result = await send_to_queue(backend(), queue)
        assert result is None
        assert drain(queue) == [error]

    async def test_exception_while_iterating(self) -> None:
        """Items before a mid-stream exception are kept; the exception instance ends the stream."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        error = Boom("reset")

        async def backend() -> AsyncIterator[str]:
            yield "a"
            yield "b"
            raise error

        await send_to_queue(backend(), queue)
        items = drain(queue)
        assert items == ["a", "b", error]
        assert items[-1] is error

    async def test_backend_timeout_error_is_forwarded(self) -> None:
        """A TimeoutError from the backend itself is forwarded as is; on_timeout is not called."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        error = TimeoutError("backend's own read timeout")
        calls: list[str] = []

        async def backend() -> AsyncIterator[str]:
            yield "a"
            raise error

        await send_to_queue(backend(), queue, chunk_timeout=5, on_timeout=lambda: calls.append("x"))
        assert drain(queue) == ["a", error]
        assert calls == []

    async def test_cancellation_is_not_swallowed(self) -> None:
        """Cancelling the producer task propagates CancelledError and puts nothing more."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(agen("a", "b", delay=HANG), queue))
        await until(lambda: _inflight.registered() == 1, what="the producer started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert drain(queue) == []

    async def test_base_exception_is_not_swallowed(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """A BaseException other than Exception propagates to the caller, and the stream is
        recorded as ending in that error, not as completed."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        class Fatal(BaseException):
            pass

        async def backend() -> AsyncIterator[str]:
            yield "a"
            raise Fatal

        with pytest.raises(Fatal):
            await send_to_queue(backend(), queue)
        assert drain(queue) == ["a"]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert span.attributes is not None
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_ERROR
        assert span.attributes[names.ERROR_TYPE] == Fatal.__qualname__
        assert span.status.status_code == StatusCode.ERROR
        (duration,) = telemetry.points(names.STREAM_DURATION.name)
        assert duration.attributes[names.STREAM_OUTCOME] == names.OUTCOME_ERROR
        (end,) = [e for e in log_events if e["event"] != names.LOG_STREAM_STARTED][-1:]
        assert (end["log_level"], end["error_type"]) == ("warning", Fatal.__qualname__)


class TestChunkTimeout:
    async def test_stall_times_out_with_message(self) -> None:
        """A stalled iterator yields its items, then one TimeoutError naming the setting."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        iterator = StalledIterator()
        await send_to_queue(iterator, queue, chunk_timeout=0.05)
        items = drain(queue)
        assert items[0] == "first"
        assert len(items) == 2
        error = items[1]
        assert type(error) is TimeoutError
        message = str(error)
        assert "0.05 seconds" in message
        assert "first item" in message
        assert "between items" in message
        assert "STREAM_TIMEOUT" in message
        assert "None" in message

    async def test_first_item_is_covered(self) -> None:
        """chunk_timeout bounds the wait for the first item too."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def slow_start() -> AsyncIterator[str]:
            await asyncio.sleep(HANG)
            yield "never"

        await send_to_queue(slow_start(), queue, chunk_timeout=0.05)
        (error,) = drain(queue)
        assert isinstance(error, TimeoutError)

    async def test_stalled_iterator_is_closed_with_aclose(self) -> None:
        """On timeout the iterator is closed with aclose()."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        iterator = StalledIterator(close_kind="aclose")
        await send_to_queue(iterator, queue, chunk_timeout=0.05)
        assert iterator.closed_with == "aclose"

    async def test_stalled_iterator_is_closed_with_close(self) -> None:
        """An iterator with only close() is closed with it."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        iterator = StalledIterator(close_kind="close")
        await send_to_queue(iterator, queue, chunk_timeout=0.05)
        assert iterator.closed_with == "close"

    async def test_close_returning_an_awaitable_is_awaited(self) -> None:
        """A close() that returns an awaitable has it awaited before send_to_queue returns."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        iterator = StalledIterator(close_kind="close_awaitable")
        await send_to_queue(iterator, queue, chunk_timeout=0.05)
        assert iterator.closed_with == "close, awaited"
        first, error = drain(queue)
        assert first == "first"
        assert isinstance(error, TimeoutError)

    async def test_raising_close_is_logged_and_suppressed(
        self, log_events: list[dict[str, Any]]
    ) -> None:
        """A close() that raises is logged at warning with its type; the TimeoutError stands."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        iterator = StalledIterator(close_kind="close", close_raises=True)
        await send_to_queue(iterator, queue, chunk_timeout=0.05)
        assert iterator.closed_with == "close"
        first, error = drain(queue)
        assert first == "first"
        assert isinstance(error, TimeoutError)
        failures = [e for e in log_events if e["event"] == names.LOG_STREAM_CLOSE_FAILED]
        assert [(e["log_level"], e["error_type"]) for e in failures] == [
            ("warning", "RuntimeError")
        ]

    async def test_close_error_is_suppressed(self) -> None:
        """An iterator whose aclose raises still ends the stream with the TimeoutError."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        iterator = StalledIterator(close_raises=True)
        await send_to_queue(iterator, queue, chunk_timeout=0.05)
        items = drain(queue)
        assert items[0] == "first"
        assert isinstance(items[1], TimeoutError)
        assert iterator.closed_with == "aclose"

    async def test_on_timeout_called_once(self) -> None:
        """on_timeout is called exactly once when the deadline expires, before the error is put."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        seen: list[int] = []
        await send_to_queue(
            StalledIterator(),
            queue,
            chunk_timeout=0.05,
            on_timeout=lambda: seen.append(queue.qsize()),
        )
        assert seen == [1]  # only "first" was on the queue when it ran
        assert isinstance(drain(queue)[-1], TimeoutError)

    async def test_raising_on_timeout_is_suppressed(self, log_events: list[dict[str, Any]]) -> None:
        """An exception from on_timeout is logged and the TimeoutError still reaches the queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def on_timeout() -> None:
            raise RuntimeError("cancel event already set")

        await send_to_queue(StalledIterator(), queue, chunk_timeout=0.05, on_timeout=on_timeout)
        items = drain(queue)
        assert items[0] == "first"
        assert isinstance(items[1], TimeoutError)
        failures = [e for e in log_events if e["event"] == "stream.on_timeout_failed"]
        assert [(e["log_level"], e["error_type"]) for e in failures] == [("error", "RuntimeError")]

    async def test_none_disables_timeout(self) -> None:
        """chunk_timeout=None arms no deadline at all: a stalled stream is left to run."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(
            send_to_queue(StalledIterator(), queue, chunk_timeout=None, stall_after=None, name="nt")
        )
        await until(lambda: queue.qsize() == 1, what="the first item arrived")
        (watch,) = [w for w in _inflight._registry.values() if w.name == "nt"]
        assert watch.timeout is None
        assert watch._check is None  # no check: neither a deadline nor a stall watch
        assert not task.done()
        assert drain(queue) == ["first"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def test_items_arriving_in_time_never_time_out(self) -> None:
        """A stream slower in total than chunk_timeout but with short gaps completes."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # 10 gaps of 0.2 s outlast chunk_timeout=1.5 s together, never alone; each gap's margin
        # (1.3 s) is what a busy machine may delay an item before this would fail.
        await send_to_queue(agen(*range(10), delay=0.2), queue, chunk_timeout=1.5)
        assert drain(queue) == [*range(10), None]

    async def test_timeout_does_not_apply_to_awaiting_the_coroutine(self) -> None:
        """chunk_timeout applies to iterator responses only, not to awaiting the coroutine."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def slow_single() -> str:
            await asyncio.sleep(0.1)
            return "done"

        await send_to_queue(slow_single(), queue, chunk_timeout=0.03)
        assert drain(queue) == ["done", None]

    async def test_timeout_in_a_task_with_cancel_requests_pending(self) -> None:
        """A task that caught an earlier cancel without uncancel() still gets a real timeout."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def worker() -> int:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(HANG)  # an earlier job, cancelled; carries on, no uncancel
            assert task.cancelling() == 1
            await send_to_queue(StalledIterator(), queue, chunk_timeout=0.05)
            return task.cancelling()

        assert await asyncio.create_task(worker()) == 1  # as it was: the deadline's own undone
        first, error = drain(queue)
        assert first == "first"
        assert isinstance(error, TimeoutError)

    @pytest.mark.parametrize("swallow", ["ends", "late_item", "raises"])
    async def test_backend_swallowing_the_deadline_still_times_out(self, swallow: str) -> None:
        """A backend that catches the deadline's cancel (and ends, sends an item anyway, or
        raises an error of its own) still gets the timeout path: on_timeout, the TimeoutError,
        the iterator closed, and the task's cancel count as it was."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        calls: list[int] = []

        class Swallowing(StalledIterator):
            async def __anext__(self) -> str:
                self.given += 1
                if self.given == 1:
                    return "first"
                if self.given > 2:
                    raise StopAsyncIteration
                try:
                    await asyncio.sleep(HANG)
                except asyncio.CancelledError:
                    if swallow == "ends":
                        raise StopAsyncIteration from None
                    if swallow == "raises":
                        raise Boom("connection torn down") from None
                return "late"

        iterator = Swallowing()

        async def producer() -> int:
            await send_to_queue(
                iterator, queue, chunk_timeout=0.05, on_timeout=lambda: calls.append(1)
            )
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()

        assert await asyncio.wait_for(producer(), 5 * HANG) == 0
        first, error = drain(queue)
        assert first == "first"
        assert isinstance(error, TimeoutError)
        assert calls == [1]
        assert iterator.closed_with == "aclose"

    async def test_outer_cancellation_during_timeout_window_propagates(self) -> None:
        """A cancellation from outside is never mistaken for the deadline."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(StalledIterator(), queue, chunk_timeout=10))
        await until(lambda: queue.qsize() == 1, what="the first item arrived")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert drain(queue) == ["first"]


class TestQueues:
    async def test_overridden_put_gets_every_item(self) -> None:
        """A queue subclass whose put() is overridden sees every item and the sentinel."""

        class Recording(asyncio.Queue[Any]):
            def __init__(self) -> None:
                super().__init__()
                self.through_put: list[Any] = []

            async def put(self, item: Any) -> None:
                self.through_put.append(item)
                await super().put(item)

        queue = Recording()
        await send_to_queue(agen(1, 2, 3), queue)
        assert queue.through_put == [1, 2, 3, None]
        assert drain(queue) == [1, 2, 3, None]


class TestBackpressure:
    async def test_slow_consumer_does_not_trip_chunk_timeout(self) -> None:
        """Time blocked on a full bounded queue does not count against chunk_timeout."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        producer = asyncio.create_task(send_to_queue(agen(0, 1, 2), queue, chunk_timeout=0.05))
        received = []
        while True:
            await asyncio.sleep(0.15)  # each blocked put waits three times chunk_timeout
            item = await queue.get()
            received.append(item)
            if item is None:
                break
        await producer
        assert received == [0, 1, 2, None]

    async def test_blocked_producer_is_reported_as_blocked_on_put(self) -> None:
        """A producer waiting on a full queue shows as blocked_on_put in the in-flight view."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        producer = asyncio.create_task(send_to_queue(agen("a", "b"), queue, name="bp"))

        def blocked() -> bool:
            return [s["state"] for s in thunkscope.inflight() if s["name"] == "bp"] == [
                "blocked_on_put"
            ]

        await until(blocked, what="the producer blocked on its full queue")
        (snapshot,) = [s for s in thunkscope.inflight() if s["name"] == "bp"]
        assert snapshot["items"] == 2
        assert [await queue.get() for _ in range(3)] == ["a", "b", None]
        await producer
        assert [s for s in thunkscope.inflight() if s["name"] == "bp"] == []


class TestBadArguments:
    @pytest.mark.parametrize("value", [-1, 0, "10", float("nan"), True, [1]])
    async def test_bad_chunk_timeout_reaches_the_queue(
        self, value: object, log_events: list[dict[str, Any]]
    ) -> None:
        """A bad chunk_timeout is a ValueError naming it, put on the queue and logged."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def backend() -> str:
            return "never awaited"

        co = backend()
        await send_to_queue(co, queue, chunk_timeout=value)  # type: ignore[arg-type]
        (error,) = drain(queue)
        assert isinstance(error, ValueError)
        assert "chunk_timeout" in str(error)
        assert repr(value) in str(error)
        assert co.cr_frame is None  # closed, so Python does not warn it was never awaited
        bad = [e for e in log_events if e["event"] == "stream.bad_argument"]
        assert [(e["log_level"], e["error_type"]) for e in bad] == [("error", "ValueError")]

    async def test_non_callable_on_timeout(self) -> None:
        """A non-callable on_timeout is a TypeError naming it, put on the queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(agen("a"), queue, on_timeout="stop")  # type: ignore[arg-type]
        (error,) = drain(queue)
        assert isinstance(error, TypeError)
        assert "on_timeout" in str(error)

    async def test_queue_without_put(self) -> None:
        """Something that is not a queue is a TypeError naming aqueue, raised at once."""
        with pytest.raises(TypeError, match="aqueue"):
            await send_to_queue(agen("a"), [])  # type: ignore[arg-type]
