"""The stream watch: one lazily re-armed timer per stream, and the in-flight registry.

A single timer per stream serves both the stall warning and the chunk_timeout
deadline. The stream loop only stamps the time of each item; the timer, when it
fires, compares that stamp with its thresholds and either re-arms itself for the
next possible expiry, warns of a stall, or cancels the producing task on timeout.
Nothing is allocated and no timer is touched per item.

Every running stream is registered here, so `thunkscope.inflight()` can answer
"which stream is stuck right now, since when, and on what?" from any thread. The
registry holds no reference to the iterator, the queue or the items.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import traceback
from collections import Counter
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import trace as trace_api

from thunkscope import _events as events
from thunkscope import _names as n
from thunkscope._telemetry import report_failure, telemetry

if TYPE_CHECKING:
    from opentelemetry.trace import Span

State = Literal["awaiting_response", "awaiting_item", "stalled", "blocked_on_put"]
AWAITING_RESPONSE: Final = "awaiting_response"
AWAITING_ITEM: Final = "awaiting_item"
STALLED: Final = "stalled"
BLOCKED_ON_PUT: Final = "blocked_on_put"

_ids = itertools.count(1)
_id_prefix = os.urandom(4).hex()
_STACK_DEPTH: Final = 12


def new_stream_id() -> str:
    """A process-unique stream id, cheap to make: a random prefix and a counter."""
    return f"{_id_prefix}-{next(_ids)}"


class StreamWatch:
    """What one running stream is doing, and the timer that watches it.

    The stream loop writes `last`, `items` and `watermark`; the timer callback reads
    them. Both run on the stream's event loop, so no lock is needed.
    """

    __slots__ = (
        "_handle",
        "_loop",
        "backend_type",
        "backpressure_warned",
        "expired",
        "first_item_at",
        "items",
        "last",
        "max_gap",
        "name",
        "put_started",
        "put_wait",
        "span",
        "stall_after",
        "stall_started",
        "stalls",
        "started",
        "state",
        "stream_id",
        "task",
        "timeout",
        "trace_id",
        "watermark",
    )

    def __init__(
        self,
        *,
        stream_id: str,
        name: str,
        span: Span,
        timeout: float | None,
        stall_after: float | None,
        now: float,
    ) -> None:
        self.stream_id = stream_id
        self.name = name
        self.span = span
        ctx = span.get_span_context()
        self.trace_id = trace_api.format_trace_id(ctx.trace_id) if ctx.is_valid else None
        self.timeout = timeout
        self.stall_after = stall_after
        self.state: State = AWAITING_RESPONSE
        self.backend_type = ""
        self.started = now
        self.last = now
        self.first_item_at: float | None = None
        self.items = 0
        self.max_gap = 0.0
        # Items whose gap since the previous one exceeds the watermark take the slow
        # path in the stream loop: the first item, a new longest gap, the end of a stall.
        self.watermark = -1.0
        self.stall_started: float | None = None
        self.stalls = 0
        self.put_started: float | None = None
        self.put_wait = 0.0
        self.backpressure_warned = False
        self.expired = False
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None

    # -- the timer ---------------------------------------------------------------------------

    def arm(self, now: float) -> None:
        """(Re)schedule the single timer for the earliest moment something could be due."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.state == BLOCKED_ON_PUT:
            if self.stall_after is None or self.backpressure_warned or self.put_started is None:
                return
            due = self.put_started + self.stall_after
        else:
            due = float("inf")
            if self.timeout is not None and self.state != AWAITING_RESPONSE:
                due = self.last + self.timeout
            if self.stall_after is not None and self.stall_started is None:
                due = min(due, self.last + self.stall_after)
            if due == float("inf"):
                return
        self._handle = self._loop.call_later(max(0.0, due - now), self._on_timer)

    def disarm(self) -> None:
        """Stop watching: the stream has ended."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _on_timer(self) -> None:
        self._handle = None
        now = time.monotonic()
        try:
            if self.state == BLOCKED_ON_PUT:
                self._warn_backpressure(now)
                return
            idle = now - self.last
            if (
                self.timeout is not None
                and self.state != AWAITING_RESPONSE
                and idle >= self.timeout
            ):
                self.expired = True
                if self.task is not None:
                    self.task.cancel()
                return
            if (
                self.stall_after is not None
                and self.stall_started is None
                and idle >= self.stall_after
            ):
                self._stall(now, idle)
        except Exception as exc:
            report_failure("stream watch", exc)
        self.arm(now)

    # -- what the stream loop calls -----------------------------------------------------------

    def note_item(self, now: float) -> None:
        """An item whose gap passed the watermark: first item, new longest gap, or a resume."""
        if self.first_item_at is None:
            self.first_item_at = now
            try:
                if self.span.is_recording():
                    self.span.add_event(n.EVENT_FIRST_ITEM)
                events.emit(
                    events.DEBUG,
                    n.LOG_STREAM_FIRST_ITEM,
                    stream_id=self.stream_id,
                    stream=self.name,
                    time_to_first_item_s=round(now - self.started, 6),
                    **_ids_of(self.span),
                )
            except Exception as exc:
                report_failure("stream watch", exc)
        else:
            gap = now - self.last
            if gap > self.max_gap:
                self.max_gap = gap
        if self.stall_started is not None:
            self.resume(now)
        self.watermark = self.max_gap

    async def put(self, aqueue: Any, item: object) -> None:
        """Put one item, timing the wait apart from backend time if the queue is full."""
        if _may_block(aqueue):
            await self.blocked_put(aqueue.put, item)
        else:
            await aqueue.put(item)

    async def blocked_put(self, put: Any, item: object) -> None:
        """Put on a full queue: consumer backpressure, not a stall, and not backend time."""
        previous = self.state
        self.state = BLOCKED_ON_PUT
        started = self.put_started = time.monotonic()
        self.arm(started)
        try:
            await put(item)
        finally:
            ended = time.monotonic()
            self.put_wait += ended - started
            self.put_started = None
            self.backpressure_warned = False
            self.state = AWAITING_ITEM if previous == STALLED else previous
            self.last = ended
            self.arm(ended)

    # -- stall, resume, backpressure -----------------------------------------------------------

    def _stall(self, now: float, idle: float) -> None:
        self.stall_started = self.last
        self.stalls += 1
        self.watermark = -1.0  # the next item takes the slow path and reports the resume
        if self.state == AWAITING_ITEM:
            self.state = STALLED
        attrs = {"thunkscope.stream.gap": idle, n.STREAM_ITEMS: self.items}
        if self.span.is_recording():
            self.span.add_event(n.EVENT_STALLED, attrs)
        events.emit(
            events.WARNING,
            n.LOG_STREAM_STALLED,
            stream_id=self.stream_id,
            stream=self.name,
            gap_s=round(idle, 6),
            items=self.items,
            **_ids_of(self.span),
        )
        telemetry.instruments.stream_stalls.add(
            1, {n.STREAM_NAME: telemetry.stream_names.fold(self.name)}
        )

    def resume(self, now: float) -> None:
        """An item arrived after a stall: report how long the gap was."""
        start = self.stall_started
        self.stall_started = None
        if self.state == STALLED:
            self.state = AWAITING_ITEM
        if start is None:
            return
        gap = now - start
        try:
            if self.span.is_recording():
                self.span.add_event(
                    n.EVENT_RESUMED, {"thunkscope.stream.gap": gap, n.STREAM_ITEMS: self.items}
                )
            events.emit(
                events.INFO,
                n.LOG_STREAM_RESUMED,
                stream_id=self.stream_id,
                stream=self.name,
                gap_s=round(gap, 6),
                items=self.items,
                **_ids_of(self.span),
            )
        except Exception as exc:
            report_failure("stream watch", exc)
        self.arm(now)

    def _warn_backpressure(self, now: float) -> None:
        if self.put_started is None or self.backpressure_warned:
            return
        self.backpressure_warned = True
        waited = now - self.put_started
        if self.span.is_recording():
            self.span.add_event(
                n.EVENT_BACKPRESSURE, {"thunkscope.queue.wait": waited, n.STREAM_ITEMS: self.items}
            )
        events.emit(
            events.WARNING,
            n.LOG_STREAM_BACKPRESSURE,
            stream_id=self.stream_id,
            stream=self.name,
            blocked_s=round(waited, 6),
            items=self.items,
            **_ids_of(self.span),
        )

    # -- the in-flight view ---------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain, JSON-serialisable data about this stream as it is now."""
        return {
            "stream_id": self.stream_id,
            "name": self.name,
            "trace_id": self.trace_id,
            "state": self.state,
            "items": self.items,
            "age_s": round(now - self.started, 6),
            "idle_s": round(now - self.last, 6),
            "backend_type": self.backend_type,
            "stack": _task_stack(self.task),
        }


def _may_block(aqueue: Any) -> bool:
    full = getattr(aqueue, "full", None)
    return callable(full) and bool(full())


def _ids_of(span: Span) -> dict[str, str]:
    """trace_id/span_id of `span`, for events logged outside its context (timer callbacks)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return {}
    return {
        "trace_id": trace_api.format_trace_id(ctx.trace_id),
        "span_id": trace_api.format_span_id(ctx.span_id),
    }


def _task_stack(task: asyncio.Task[Any] | None) -> list[str]:
    """Where `task` is suspended, innermost frame last, as 'file:line in function' lines."""
    if task is None or task.done():
        return []
    try:
        frames = task.get_stack(limit=_STACK_DEPTH)
        lines = []
        for frame in frames:
            summary = traceback.FrameSummary(
                frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, line=None
            )
            lines.append(f"{summary.filename}:{summary.lineno} in {summary.name}")
        return lines
    except Exception:  # a task finishing on another thread while we look
        return []


# --- the registry -----------------------------------------------------------------------------

_registry: dict[str, StreamWatch] = {}


def register(watch: StreamWatch) -> None:
    """Add a running stream to the in-flight view."""
    _registry[watch.stream_id] = watch


def unregister(watch: StreamWatch) -> None:
    """Remove an ended stream at once, so nothing of it stays behind."""
    _registry.pop(watch.stream_id, None)


def registered() -> int:
    """How many streams are in flight (all loops, all threads)."""
    return len(_registry)


def active_by_name() -> dict[str, int]:
    """Running streams per metric label, for the `thunkscope.stream.active` instrument."""
    counts: Counter[str] = Counter()
    for watch in list(_registry.values()):
        counts[telemetry.stream_names.fold(watch.name)] += 1
    return dict(counts)


telemetry.active_streams = active_by_name


def inflight() -> list[dict[str, Any]]:
    """One snapshot per running `send_to_queue`, most idle first.

    Covers every event loop and thread of the process. Each snapshot has
    ``stream_id``, ``name``, ``trace_id``, ``state``, ``items``, ``age_s``, ``idle_s``,
    ``backend_type`` and ``stack`` (where the producing task is suspended).
    """
    now = time.monotonic()
    watches = list(_registry.values())
    snapshots = [watch.snapshot(now) for watch in watches]
    snapshots.sort(key=lambda snap: snap["idle_s"], reverse=True)
    return snapshots
