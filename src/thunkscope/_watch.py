"""The stream watch: one lazily re-armed check per stream, for stalls and the deadline.

A single check per stream serves both the stall warning and the chunk_timeout
deadline; the checks of one event loop share its one timer (`thunkscope._deadlines`).
The stream loop only stamps the time of each item; the check, when it comes up,
compares that stamp with its thresholds and either re-arms itself for the next
possible expiry, warns of a stall, or cancels the producing task on timeout.
Nothing is allocated and no timer is touched per item. The registry of running
streams, their snapshots and the producer of each queue are `thunkscope._inflight`'s.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import trace as trace_api

from thunkscope import _events as events
from thunkscope import names
from thunkscope._deadlines import Check, deadlines
from thunkscope._stacks import innermost_frames
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


def new_stream_id() -> str:
    """A process-unique stream id, cheap to make: a random prefix and a counter."""
    return f"{_id_prefix}-{next(_ids)}"


class StreamWatch:
    """What one running stream is doing, and the timer that watches it.

    The stamp protocol, which each stream loop (`_stream._pump` and the mellea
    instrumentation's `_ObservedIterator.__anext__`) keeps inline, for speed, per item::

        now = clock()
        if now - watch.last > watch.watermark:  # first item, a new longest gap, a resume
            watch.note_item(now)                # (the core's loop checks `expired` first)
        watch.last = now
        watch.items += 1

    The timer callback reads these stamps. Both run on the stream's event loop, so no
    lock is needed. Start and end of a stream are `thunkscope._streamrec`'s.
    """

    __slots__ = (
        "_check",
        "_deadlines",
        "backend_type",
        "backpressure_warned",
        "expired",
        "finishing",
        "first_item_at",
        "items",
        "iterating",
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
        # The chunk_timeout deadline is in force only while items are awaited from an
        # iterator; once the stream is finishing, only a blocked terminator put is watched.
        self.iterating = False
        self.finishing = False
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self._deadlines = deadlines()
        self._check: Check | None = None

    # -- the timer ---------------------------------------------------------------------------

    def arm(self) -> None:
        """(Re)schedule the single check for the earliest moment something could be due."""
        self._cancel_check()
        if self.state == BLOCKED_ON_PUT:
            if self.stall_after is None or self.backpressure_warned or self.put_started is None:
                return
            due = self.put_started + self.stall_after
        elif self.finishing:
            return
        else:
            due = float("inf")
            if self.timeout is not None and self.iterating:
                due = self.last + self.timeout
            if self.stall_after is not None and self.stall_started is None:
                due = min(due, self.last + self.stall_after)
            if due == float("inf"):
                return
        self._check = self._deadlines.schedule(due, self._on_timer)

    def disarm(self) -> None:
        """Stop watching the backend: from now on only a blocked terminator put is watched."""
        self.finishing = True
        self._cancel_check()

    def _cancel_check(self) -> None:
        if self._check is not None:
            self._deadlines.cancel(self._check)
            self._check = None

    def _on_timer(self) -> None:
        self._check = None
        now = telemetry.clock()
        try:
            if self.state == BLOCKED_ON_PUT:
                self._warn_backpressure(now)
                return
            # Due by the same sum `arm` scheduled with (`now - last` can fall an ulp short).
            idle = now - self.last
            timeout = self.timeout
            timed_out = timeout is not None and self.iterating and now >= self.last + timeout
            if (
                self.stall_after is not None
                and self.stall_started is None
                and now >= self.last + self.stall_after
                and (timeout is None or not timed_out or self.stall_after < timeout)
            ):
                # Also when the check runs late (a busy loop) and the deadline has passed
                # too: a gap longer than stall_after is reported whatever the timer's delay.
                self._stall(idle)
            if timed_out:
                if self.task is not None:
                    self.expired = True
                    # An item the backend sends after all takes the stream loop's slow
                    # path, which sees the expiry.
                    self.watermark = -1.0
                    self.task.cancel()
                return
        except Exception as exc:
            report_failure("stream watch", exc)
        self.arm()

    # -- what the stream loop calls -----------------------------------------------------------

    def start_iterating(self, now: float) -> None:
        """The backend answered with an async iterator: the wait for its items begins.

        The answer ends a stall of the response wait; the first item's wait is a new gap,
        watched by the stall warning and the chunk_timeout deadline alike.
        """
        self.resume(now)
        self.state = AWAITING_ITEM
        self.iterating = True
        self.last = now
        self.arm()

    def note_item(self, now: float) -> None:
        """An item whose gap passed the watermark: first item, new longest gap, or a resume."""
        if self.first_item_at is None:
            self.first_item_at = now
            try:
                if self.span.is_recording():
                    self.span.add_event(names.EVENT_FIRST_ITEM)
                if events.enabled(events.DEBUG):
                    events.emit(
                        events.DEBUG,
                        names.LOG_STREAM_FIRST_ITEM,
                        stream_id=self.stream_id,
                        stream=self.name,
                        time_to_first_item_s=round(now - self.started, 6),
                        **events.span_ids(self.span),
                    )
            except Exception as exc:
                report_failure("stream watch", exc)
        else:
            gap = now - self.last
            if gap > self.max_gap:
                self.max_gap = gap
        if self.stall_started is not None:
            # The check re-armed here reads the stamp: it is this item's (the stream loop
            # stores it too, after this call; a single response has no loop to).
            self.last = now
            self.resume(now)
            self.arm()
        self.watermark = self.max_gap

    async def put(self, aqueue: Any, item: object) -> None:
        """Put one item, timing the wait apart from backend time if the queue is full."""
        if _may_block(aqueue):
            await self.blocked_put(aqueue.put, item)
        else:
            await aqueue.put(item)

    async def blocked_put(self, put: Any, item: object) -> None:
        """Put on a full queue: consumer backpressure, not a stall, and not backend time."""
        previous = self.begin_put(telemetry.clock())
        try:
            await put(item)
        finally:
            self.end_put(telemetry.clock(), previous)

    def begin_put(self, now: float) -> State:
        """A put is about to block on a full queue; returns the state to go back to."""
        previous = self.state
        self.state = BLOCKED_ON_PUT
        self.put_started = now
        self.arm()
        return previous

    def end_put(self, now: float, previous: State) -> None:
        """The blocked put is done: count its wait apart and restart the item clock."""
        if self.put_started is not None:
            self.put_wait += now - self.put_started
        self.put_started = None
        self.backpressure_warned = False
        self.state = AWAITING_ITEM if previous == STALLED else previous
        self.last = now
        self.arm()

    # -- stall, resume, backpressure -----------------------------------------------------------

    def _stall(self, idle: float) -> None:
        self.stall_started = self.last
        self.stalls += 1
        self.watermark = -1.0  # the next item takes the slow path and reports the resume
        self.state = STALLED  # the timer checks a blocked put before it comes to this
        # Where the producer waits, so a stall found in a fleet's logs points at code.
        frames = innermost_frames(self.task)
        self._tell(
            names.EVENT_STALLED,
            {names.STREAM_GAP: idle, names.STREAM_PRODUCER_STACK: frames},
            events.WARNING,
            gap_s=round(idle, 6),
            producer_stack=frames,
        )
        telemetry.instruments.stream_stalls.add(
            1, {names.STREAM_NAME: telemetry.stream_names.fold(self.name)}
        )

    def resume(self, now: float) -> None:
        """An item or the answer ended a stall: report how long the gap was.

        Nothing if there was no stall. The caller re-arms the check, once its stamps are
        up to date.
        """
        start = self.stall_started
        if start is None:
            return
        self.stall_started = None
        if self.state == STALLED:
            self.state = AWAITING_ITEM
        gap = now - start
        try:
            self._tell(
                names.EVENT_RESUMED, {names.STREAM_GAP: gap}, events.INFO, gap_s=round(gap, 6)
            )
        except Exception as exc:
            report_failure("stream watch", exc)

    def _warn_backpressure(self, now: float) -> None:
        if self.put_started is None or self.backpressure_warned:
            return
        self.backpressure_warned = True
        waited = now - self.put_started
        self._tell(
            names.EVENT_BACKPRESSURE,
            {names.QUEUE_WAIT: waited},
            events.WARNING,
            blocked_s=round(waited, 6),
        )

    def _tell(self, event: str, attributes: dict[str, Any], level: int, **fields: Any) -> None:
        """One watch event, on the span and as the log event of the same name.

        Called from the timer, outside the stream's context: the span's ids are added
        explicitly. The span event and the log both carry the items so far.
        """
        if self.span.is_recording():
            self.span.add_event(event, {**attributes, names.STREAM_ITEMS: self.items})
        events.emit(
            level,
            event,
            stream_id=self.stream_id,
            stream=self.name,
            items=self.items,
            **fields,
            **events.span_ids(self.span),
        )


def _may_block(aqueue: Any) -> bool:
    full = getattr(aqueue, "full", None)
    return callable(full) and bool(full())


def backend_type_of(obj: object) -> str:
    """A payload-free name for the backend object: a function's or a class's qualified name."""
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(qualname, str) and (
        inspect.iscoroutine(obj) or inspect.isasyncgen(obj) or inspect.isgenerator(obj)
    ):
        return qualname
    return type(obj).__qualname__
