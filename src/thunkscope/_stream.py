"""send_to_queue: the producer side of the queue protocol, with its span, metrics and logs.

The protocol a consumer relies on (SPEC section 1): every item of an async-iterator
response in order and then ``None``; any other response as one item and then
``None``; an exception instead of anything after it; cancellation never swallowed.
The per-item loop does a clock read and a few stores; everything else (span, metrics,
logs) happens once per stream, at its start and its end.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final

from thunkscope import _events as events
from thunkscope import names
from thunkscope._settings import optional_callable, seconds, text
from thunkscope._streamrec import (
    add_forwarded_error,
    add_sentinel,
    add_timeout,
    close_stream,
    open_stream,
)
from thunkscope._telemetry import telemetry
from thunkscope._watch import StreamWatch, backend_type_of

DEFAULT_CHUNK_TIMEOUT: Final = 120.0
"""Seconds `send_to_queue` waits for each item of a stream, the first one included."""

DEFAULT_STREAM_NAME: Final = "default"


class _Unset:
    def __repr__(self) -> str:
        return "<from THUNKSCOPE_STALL_AFTER>"


_UNSET: Final = _Unset()


def _seconds(argument: str, value: object) -> float | None:
    """A stream's seconds: positive, infinity allowed, or None. A wrong type is a ValueError
    too: the consumer sees it on the queue, one kind of bad-argument error."""
    result: float | None = seconds(
        argument, value, optional=True, finite=False, wrong_type=ValueError
    )
    return result


async def send_to_queue(
    co: Any,
    aqueue: asyncio.Queue[Any],
    *,
    chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT,
    on_timeout: Callable[[], object] | None = None,
    stall_after: float | _Unset | None = _UNSET,
    name: str = DEFAULT_STREAM_NAME,
) -> None:
    """Feed a backend's response into `aqueue`, ending it with ``None`` or an exception.

    `co` is a coroutine (awaited; its result is the response) or the response itself.
    An async-iterator response is streamed item by item; anything else is one item.
    `chunk_timeout` bounds each wait for the iterator's next item (first included);
    on expiry `on_timeout()` is called, a `TimeoutError` is put on the queue and the
    iterator is closed. `stall_after` seconds without an item produce a stall warning
    (span event, log, metric) but never abort; a producer blocked that long on a full
    queue gets a backpressure warning instead, as the consumer is the slow one. The
    default comes from THUNKSCOPE_STALL_AFTER (else 30 s); None turns both warnings off.
    `name` labels the stream's metrics: keep it low-cardinality (a backend or model
    family, never a request id).
    """
    if not callable(getattr(aqueue, "put", None)):
        _close_unawaited(co)
        raise TypeError(
            f"aqueue must be an asyncio.Queue (or have an async put()), got {type(aqueue).__name__}"
        )
    try:
        timeout = _seconds("chunk_timeout", chunk_timeout)
        stall = (
            telemetry.settings.stall_after
            if isinstance(stall_after, _Unset)
            else _seconds("stall_after", stall_after)
        )
        optional_callable("on_timeout", on_timeout)
        text("name", name, blank_ok=True)
    except (TypeError, ValueError) as exc:
        # The producer usually runs as a task nobody awaits: the consumer must see the
        # error on the queue rather than wait for a sentinel that never comes.
        _close_unawaited(co)
        events.emit(
            events.ERROR,
            names.LOG_STREAM_BAD_ARGUMENT,
            error_type=type(exc).__name__,
            reason=str(exc),
        )
        await aqueue.put(exc)
        return

    run = open_stream(name, aqueue, timeout=timeout, stall_after=stall)
    end = StreamEnd()
    try:
        await run_stream(co, aqueue, run.watch, end, on_timeout=on_timeout)
    finally:
        close_stream(run, end.mode, end.outcome, end.error)


class StreamEnd:
    """How a stream ended, filled in by `run_stream` as it happens, read by its close."""

    __slots__ = ("error", "mode", "outcome")

    def __init__(self) -> None:
        self.mode: str | None = None
        self.outcome: str = names.OUTCOME_COMPLETED
        self.error: BaseException | None = None


class Edges:
    """What a stream does at its edges: thunkscope's own rules, per SPEC section 1.

    The loop is the same for every front end; what differs between thunkscope's
    `send_to_queue` and the mellea releases it stands in for (the mellea
    instrumentation's fast path subclasses this) is only what happens at the edges:
    which object is iterated and closed, the timeout's exception, how ``on_timeout``
    and the close are called, and whether an item that arrives after the deadline's
    cancel was swallowed by the backend ends the stream (here) or goes on (mellea's
    per-chunk ``asyncio.timeout`` lets it through).
    """

    forgive_late = False

    def iterator(self, response: AsyncIterator[Any]) -> tuple[AsyncIterator[Any], Any]:
        """What the loop iterates (``async for``), and what a timeout closes."""
        return response, response

    def cancel_baseline(self, at_start: int) -> int:
        """The task's cancel requests that were not the deadline's, to tell its cancel
        apart: here, those it had when the stream started."""
        return at_start

    def timeout_error(self, timeout: float | None) -> BaseException:
        """The exception a consumer gets when chunk_timeout expires."""
        return _timeout_error(timeout)

    async def notify(self, on_timeout: Callable[[], object], watch: StreamWatch) -> None:
        """Tell the backend its stream timed out."""
        await _call_quietly(on_timeout, watch, events.ERROR, names.LOG_STREAM_ON_TIMEOUT_FAILED)

    async def close(self, iterator: Any, watch: StreamWatch) -> None:
        """Close a stalled iterator so its connection is released; never raise."""
        await _close_iterator(iterator, watch)


THUNKSCOPE_EDGES: Final = Edges()


async def run_stream(
    co: Any,
    aqueue: Any,
    watch: StreamWatch,
    end: StreamEnd,
    *,
    on_timeout: Callable[[], object] | None,
    edges: Edges = THUNKSCOPE_EDGES,
    on_item: Callable[[], object] | None = None,
) -> None:
    """Feed one opened stream into `aqueue`, noting in `end` how it ended.

    The caller opened the stream (`open_stream`) and closes it with `end`. `on_item`,
    if given, is called for each item before it is put (a front end's own per-item
    bookkeeping); `edges` are the rules at the stream's edges.
    """
    # Cancel requests the task had before this stream: the deadline's own cancel is told
    # apart from any other by the count coming back to this (as asyncio.timeout does).
    cancelling = 0 if watch.task is None else watch.task.cancelling()
    closable: Any = None
    try:
        if isinstance(co, Coroutine):  # only a response still to come needs watching
            watch.backend_type = backend_type_of(co)
            watch.arm()
            response = await co
        else:
            response = co
        watch.backend_type = backend_type_of(response)
        if isinstance(response, AsyncIterator):
            end.mode = names.MODE_ITERATOR
            iterator, closable = edges.iterator(response)
            watch.start_iterating(telemetry.clock())
            await _pump(iterator, aqueue, watch, edges.forgive_late, on_item)
        else:
            end.mode = names.MODE_SINGLE
            watch.note_item(telemetry.clock())
            watch.items = 1
            if not _put_at_once(aqueue, response):
                await watch.put(aqueue, response)
        watch.disarm()
        if not _put_at_once(aqueue, None):
            await watch.put(aqueue, None)
        add_sentinel(watch)
    except asyncio.CancelledError as exc:
        task = watch.task
        baseline = edges.cancel_baseline(cancelling)
        if not (watch.expired and task is not None and task.uncancel() <= baseline):
            end.outcome, end.error = names.OUTCOME_CANCELLED, exc
            raise
        end.outcome = names.OUTCOME_TIMEOUT
        end.error = error = edges.timeout_error(watch.timeout)
        watch.disarm()  # the deadline must not fire again while the iterator is closed
        try:
            add_timeout(watch, watch.timeout or 0.0)
            if on_timeout is not None:
                await edges.notify(on_timeout, watch)
            await watch.put(aqueue, error)
        except asyncio.CancelledError as cancelled:
            # Cancelled before the TimeoutError reached the queue: the consumer got nothing.
            end.outcome, end.error = names.OUTCOME_CANCELLED, cancelled
            raise
        await edges.close(closable, watch)
    except Exception as exc:
        end.outcome, end.error = names.OUTCOME_ERROR, exc
        watch.disarm()
        try:
            await watch.put(aqueue, exc)
        except asyncio.CancelledError as cancelled:
            # Cancelled while blocked on a full queue: the exception never got through.
            end.outcome, end.error = names.OUTCOME_CANCELLED, cancelled
            raise
        add_forwarded_error(watch, exc)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit, GeneratorExit: never kept
        end.outcome, end.error = names.OUTCOME_ERROR, exc
        raise


async def _pump(
    iterator: AsyncIterator[Any],
    aqueue: asyncio.Queue[Any],
    watch: StreamWatch,
    forgive_late: bool = False,
    on_item: Callable[[], object] | None = None,
) -> None:
    """The hot loop: one clock read, a comparison and two stores per item.

    A backend may catch the deadline's cancel and end, send an item after all, or raise
    an error of its own: the deadline has expired all the same, so its CancelledError is
    raised again for the timeout path (the late item is not put). With `forgive_late`
    (mellea's rule) the swallowed cancel is withdrawn instead and the stream goes on:
    the late item is put, the end is a normal end, the error is forwarded; only a
    TimeoutError still counts as the deadline's.
    """
    put = aqueue.put
    # asyncio.Queue.put is "wait while full, then put_nowait": call put_nowait directly,
    # sparing a coroutine per item, and wait (as backpressure) only when it says full.
    # A queue whose put is overridden gets its own put.
    put_nowait = aqueue.put_nowait if _stock_put(aqueue) else None
    bounded = put_nowait is None and is_bounded(aqueue)
    clock = telemetry.clock
    try:
        async for item in iterator:
            now = clock()
            if now - watch.last > watch.watermark:
                if watch.expired:  # the expiry lowered the watermark: this item is too late
                    if not forgive_late:
                        break
                    _withdraw_expiry(watch)
                    watch.note_item(now)
                    watch.last = now
                    watch.arm()
                else:
                    watch.note_item(now)  # first item, a new longest gap, or a stall's end
            watch.last = now
            watch.items += 1
            if on_item is not None:
                on_item()
            if put_nowait is not None:
                try:
                    put_nowait(item)
                except asyncio.QueueFull:
                    await watch.blocked_put(put, item)
            elif bounded and aqueue.full():
                await watch.blocked_put(put, item)
            else:
                await put(item)
    except Exception as exc:
        if not watch.expired:
            raise
        if forgive_late and not isinstance(exc, TimeoutError):
            _withdraw_expiry(watch)
            raise
    else:
        if watch.expired and forgive_late:
            _withdraw_expiry(watch)  # the iterator ended after all: a normal end
            return
    if watch.expired:
        raise asyncio.CancelledError  # the deadline's, which the backend did not let through


def _withdraw_expiry(watch: StreamWatch) -> None:
    """The backend swallowed the deadline's cancel: take the request back, as
    ``asyncio.timeout`` does on leaving its block, and watch the stream again."""
    watch.expired = False
    if watch.task is not None:
        watch.task.uncancel()


def _put_at_once(aqueue: Any, item: object) -> bool:
    """Put `item` now if `aqueue` is a stock asyncio.Queue with room; False if not done.

    That is all `asyncio.Queue.put` does then, without its coroutine and ours: a short
    stream's terminator is the common case, and every call counts in its fixed cost.
    """
    if _stock_put(aqueue) and not aqueue.full():
        aqueue.put_nowait(item)
        return True
    return False


def _stock_put(aqueue: Any) -> bool:
    """Whether `aqueue.put` is asyncio.Queue's own, which only waits while the queue is full."""
    return isinstance(aqueue, asyncio.Queue) and type(aqueue).put is asyncio.Queue.put


def is_bounded(aqueue: Any) -> bool:
    """Whether `put` may block: an asyncio.Queue with a maxsize, or any unknown queue."""
    maxsize = getattr(aqueue, "maxsize", None)
    return not (isinstance(maxsize, int) and maxsize <= 0) and callable(
        getattr(aqueue, "full", None)
    )


def _timeout_error(timeout: float | None) -> TimeoutError:
    return TimeoutError(
        f"The backend sent nothing for {timeout:g} seconds: chunk_timeout covers the wait "
        "for the first item and the gaps between items. Raise the STREAM_TIMEOUT model "
        "option, or set it to None to turn this guard off."
    )


async def _close_iterator(iterator: Any, watch: StreamWatch) -> None:
    """Close a stalled iterator so its connection is released; never raise."""
    close = getattr(iterator, "aclose", None) or getattr(iterator, "close", None)
    if close is not None:
        await _call_quietly(close, watch, events.WARNING, names.LOG_STREAM_CLOSE_FAILED)


async def _call_quietly(
    call: Callable[[], object], watch: StreamWatch, level: int, failed_event: str
) -> None:
    """Call a backend's hook (sync or async); an exception from it is logged, never raised."""
    try:
        result = call()
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        events.emit(
            level,
            failed_event,
            stream_id=watch.stream_id,
            stream=watch.name,
            error_type=type(exc).__qualname__,
        )


def _close_unawaited(co: object) -> None:
    """Close a coroutine we will never await, so Python does not warn about it."""
    if inspect.iscoroutine(co):
        co.close()
