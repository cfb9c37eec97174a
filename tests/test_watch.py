"""The stream watch (_watch.py): stall warnings and backpressure of send_to_queue, warned once per
gap, never an abort; the check re-armed from the right stamp."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.trace import INVALID_SPAN

from conftest import events_of
from support.fakes import HANG, drain, gappy
from thunkscope import _telemetry, _watch, inflight, names, send_to_queue
from thunkscope._deadlines import Check
from thunkscope._watch import StreamWatch

# Virtual time (thunkscope.testing): sleeps take no real time and every gap is exact.
# Binary fractions, so the clock's sums are exact too.
STALL = 0.0625
GAP = 0.25

pytestmark = [pytest.mark.usefixtures("telemetry"), pytest.mark.virtual_time]


# Where gappy waits: the innermost frame a stall event names.
GAPPY_WAIT = f"{gappy.__code__.co_filename}:{gappy.__code__.co_firstlineno + 4} in gappy"


def producer_stack(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, ...]]:
    """Pop the producer stack off each stall event (in place); the stacks, in order."""
    return [
        attrs.pop(names.STREAM_PRODUCER_STACK)
        for name, attrs in events
        if name == names.EVENT_STALLED
    ]


async def until_sentinel(queue: asyncio.Queue[Any]) -> list[Any]:
    """The items taken off the queue as they come, up to the None sentinel."""
    items = []
    while (item := await queue.get()) is not None:
        items.append(item)
    return items


def stalls_by_name(telemetry: Any) -> dict[str, int]:
    """The thunkscope.stream.stalls counter per stream name."""
    return {
        p.attributes[names.STREAM_NAME]: p.value for p in telemetry.points(names.STREAM_STALLS.name)
    }


def logged(log_events: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    """The captured log entries of one event name."""
    return [entry for entry in log_events if entry["event"] == event]


async def slow_answer() -> str:
    """A backend whose one value comes after a stall."""
    await asyncio.sleep(GAP)
    return "answer"


class TestStallWarning:
    async def test_one_warning_per_gap_then_resume(
        self, telemetry: Any, log_events: list[dict[str, Any]]
    ) -> None:
        """A gap longer than stall_after gives one stall event, log and count, then a resume."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(
            gappy(["a", "b", "c"], {1: GAP}),
            queue,
            chunk_timeout=None,
            stall_after=STALL,
            name="stall-one",
        )
        assert drain(queue) == ["a", "b", "c", None]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        events = events_of(span)
        (frames,) = producer_stack(events)
        assert frames[-1] == GAPPY_WAIT
        assert [frame.rsplit(" in ", 1)[1] for frame in frames] == [
            "test_one_warning_per_gap_then_resume",
            "send_to_queue",
            "run_stream",
            "_pump",
            "gappy",
        ]
        assert events == [
            (names.EVENT_FIRST_ITEM, {}),
            (names.EVENT_STALLED, {"thunkscope.stream.gap": STALL, names.STREAM_ITEMS: 1}),
            (names.EVENT_RESUMED, {"thunkscope.stream.gap": GAP, names.STREAM_ITEMS: 1}),
            (names.EVENT_SENTINEL, {names.STREAM_ITEMS: 3}),
        ]
        stalled_gap = span.events[1].attributes["thunkscope.stream.gap"]
        resumed_gap = span.events[2].attributes["thunkscope.stream.gap"]
        assert stalled_gap <= resumed_gap  # warned during the gap, not after its end
        ctx = span.get_span_context()
        ids = {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
        stream_id = span.attributes[names.STREAM_ID]
        assert logged(log_events, names.LOG_STREAM_STALLED) == [
            {
                "event": names.LOG_STREAM_STALLED,
                "log_level": "warning",
                "stream_id": stream_id,
                "stream": "stall-one",
                "gap_s": STALL,
                "items": 1,
                "producer_stack": list(frames),
                **ids,
            }
        ]
        assert logged(log_events, names.LOG_STREAM_RESUMED) == [
            {
                "event": names.LOG_STREAM_RESUMED,
                "log_level": "info",
                "stream_id": stream_id,
                "stream": "stall-one",
                "gap_s": GAP,
                "items": 1,
                **ids,
            }
        ]
        assert stalls_by_name(telemetry) == {"stall-one": 1}
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_COMPLETED
        assert span.attributes[names.STREAM_STALL_COUNT] == 1

    async def test_each_gap_warns_once(self, telemetry: Any) -> None:
        """Two separate gaps are two stalls and two resumes; a long gap is still one."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(
            gappy(["a", "b", "c", "d"], {1: GAP, 3: 0.3}),
            queue,
            chunk_timeout=None,
            stall_after=STALL,
            name="stall-two",
        )
        assert drain(queue) == ["a", "b", "c", "d", None]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        seen = [name for name, _ in events_of(span)]
        assert seen == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_STALLED,
            names.EVENT_RESUMED,
            names.EVENT_STALLED,
            names.EVENT_RESUMED,
            names.EVENT_SENTINEL,
        ]
        assert [dict(e.attributes or {}).get(names.STREAM_ITEMS) for e in span.events[1:5]] == [
            1,
            1,
            3,
            3,
        ]
        assert stalls_by_name(telemetry) == {"stall-two": 2}
        assert span.attributes[names.STREAM_STALL_COUNT] == 2

    async def test_never_aborts_without_chunk_timeout(self, telemetry: Any) -> None:
        """With chunk_timeout=None a gap many times stall_after ends in completion, not error."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(
            gappy(["a", "b"], {1: 0.3}), queue, chunk_timeout=None, stall_after=STALL
        )
        assert drain(queue) == ["a", "b", None]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_COMPLETED
        assert [name for name, _ in events_of(span)].count(names.EVENT_STALLED) == 1

    async def test_never_aborts_before_chunk_timeout(self, telemetry: Any) -> None:
        """A stall shorter than chunk_timeout is warned about and the stream completes."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(
            gappy(["a", "b"], {1: GAP}), queue, chunk_timeout=0.4, stall_after=STALL
        )
        assert drain(queue) == ["a", "b", None]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_COMPLETED
        assert names.EVENT_STALLED in [name for name, _ in events_of(span)]

    async def test_stall_then_timeout(self, telemetry: Any) -> None:
        """The same gap is first warned about, then aborted by chunk_timeout; no resume."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(
            gappy(["a", "b"], {1: HANG}), queue, chunk_timeout=HANG / 10, stall_after=HANG / 25
        )
        first, error = drain(queue)
        assert first == "a"
        assert isinstance(error, TimeoutError)
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_STALLED,
            names.EVENT_TIMEOUT,
        ]
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_TIMEOUT
        assert stalls_by_name(telemetry) == {"default": 1}

    async def test_first_item_wait_can_stall(self, telemetry: Any) -> None:
        """The wait for the first item is a gap like any other."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(gappy(["a"], {0: GAP}), queue, chunk_timeout=None, stall_after=STALL)
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        events = events_of(span)
        assert [stack[-1] for stack in producer_stack(events)] == [GAPPY_WAIT]
        assert events[:3] == [
            (names.EVENT_STALLED, {"thunkscope.stream.gap": STALL, names.STREAM_ITEMS: 0}),
            (names.EVENT_FIRST_ITEM, {}),
            (names.EVENT_RESUMED, {"thunkscope.stream.gap": GAP, names.STREAM_ITEMS: 0}),
        ]

    async def test_slow_response_stalls_and_resumes_on_the_answer(self, telemetry: Any) -> None:
        """A backend slow to answer at all is stalled; its answer is the resume."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def slow_answer() -> AsyncIterator[str]:
            await asyncio.sleep(GAP)
            return gappy(["a", "b"], {})

        task = asyncio.create_task(
            send_to_queue(slow_answer(), queue, chunk_timeout=None, stall_after=STALL)
        )
        await asyncio.sleep(STALL + STALL)
        (snapshot,) = inflight()
        assert snapshot["state"] == _watch.STALLED
        await task
        assert drain(queue) == ["a", "b", None]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_STALLED,
            names.EVENT_RESUMED,
            names.EVENT_FIRST_ITEM,
            names.EVENT_SENTINEL,
        ]

    async def test_single_response_stall(self, telemetry: Any) -> None:
        """A coroutine returning one value late stalls, and its value resumes the stream."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        await send_to_queue(slow_answer(), queue, stall_after=STALL)
        assert drain(queue) == ["answer", None]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_STALLED,
            names.EVENT_FIRST_ITEM,
            names.EVENT_RESUMED,
            names.EVENT_SENTINEL,
        ]

    async def test_single_response_stall_into_a_queue_whose_put_waits(self, telemetry: Any) -> None:
        """The late answer's resume watches from the answer on: a put that takes a moment
        reports no second stall (the check re-armed from the answer, not the call's start)."""

        class YieldingQueue(asyncio.Queue[Any]):
            async def put(self, item: Any) -> None:
                await asyncio.sleep(0.001)
                await super().put(item)

        queue = YieldingQueue()
        await send_to_queue(slow_answer(), queue, chunk_timeout=None, stall_after=STALL)
        assert drain(queue) == ["answer", None]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_STALLED,
            names.EVENT_FIRST_ITEM,
            names.EVENT_RESUMED,
            names.EVENT_SENTINEL,
        ]
        assert stalls_by_name(telemetry) == {"default": 1}

    async def test_none_turns_it_off(self, telemetry: Any, log_events: list[Any]) -> None:
        """stall_after=None: no stall event, log or count however long the gap."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(
            gappy(["a", "b"], {1: GAP}), queue, chunk_timeout=None, stall_after=None
        )
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_SENTINEL,
        ]
        assert logged(log_events, names.LOG_STREAM_STALLED) == []
        assert stalls_by_name(telemetry) == {}

    async def test_steady_stream_never_stalls(self, telemetry: Any) -> None:
        """Items closer together than stall_after never warn, however long the stream."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # 30 gaps of 0.05 s outlast stall_after=1 s together, never alone; the margin of each
        # gap (0.95 s) is what a busy machine may delay an item before this would fail.
        items = [str(i) for i in range(30)]
        gaps = dict.fromkeys(range(30), 0.05)
        await send_to_queue(gappy(items, gaps), queue, stall_after=1.0)
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert names.EVENT_STALLED not in [name for name, _ in events_of(span)]


class TestStallSetting:
    def test_default_is_thirty_seconds(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without THUNKSCOPE_STALL_AFTER the stall warning comes after 30 s."""
        monkeypatch.delenv("THUNKSCOPE_STALL_AFTER", raising=False)
        assert _telemetry.Settings.from_env().stall_after == 30.0

    @pytest.mark.parametrize(("raw", "seconds"), [("0.05", 0.05), ("none", None), ("off", None)])
    def test_environment_variable(
        self, monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float | None
    ) -> None:
        """THUNKSCOPE_STALL_AFTER sets the default; none or off turns it off."""
        monkeypatch.setenv("THUNKSCOPE_STALL_AFTER", raw)
        assert _telemetry.Settings.from_env().stall_after == seconds

    async def test_default_comes_from_the_environment(
        self, telemetry: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """send_to_queue without stall_after warns after THUNKSCOPE_STALL_AFTER seconds."""
        monkeypatch.setenv("THUNKSCOPE_STALL_AFTER", str(STALL))
        _telemetry.telemetry.settings = _telemetry.Settings.from_env()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(gappy(["a", "b"], {1: GAP}), queue, chunk_timeout=None)
        assert stalls_by_name(telemetry) == {"default": 1}

    async def test_bad_stall_after_reaches_the_queue(self) -> None:
        """A stall_after that is not a positive number is a ValueError on the queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(gappy(["a"], {}), queue, stall_after=-1)
        (error,) = drain(queue)
        assert isinstance(error, ValueError)
        assert "stall_after" in str(error)


class TestOneTimer:
    async def test_no_timer_per_item(self, timers: list[float]) -> None:
        """10,000 items under a deadline and a stall watch schedule one timer, not one each."""

        async def fast(count: int) -> AsyncIterator[int]:
            for i in range(count):
                yield i

        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(fast(10_000), queue, chunk_timeout=30.0, stall_after=10.0)
        assert queue.qsize() == 10_001
        assert len(timers) == 1  # the iterator is the answer: one timer, from its first wait

    async def test_deadline_and_stall_share_the_timer(self, timers: list[float]) -> None:
        """While items flow, the one timer is set to the nearer of stall_after and chunk_timeout."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(gappy(["a", "b"], {}), queue, chunk_timeout=30.0, stall_after=10.0)
        assert timers
        assert all(delay <= 10.0 for delay in timers)


class RecordingDeadlines:
    """Stands in for a loop's Deadlines: records the due time of every check scheduled."""

    def __init__(self) -> None:
        self.scheduled: list[float] = []

    def schedule(self, due: float, callback: Any) -> Check:
        self.scheduled.append(due)
        return Check((due, len(self.scheduled), callback))

    def cancel(self, check: Check) -> None:
        check[2] = None


def stalled_watch(*, timeout: float | None, iterating: bool) -> tuple[StreamWatch, float]:
    """A watch whose last stamp is 15 s old with stall_after=10 s, after its timer's stall."""
    start = _telemetry.telemetry.clock() - 15.0
    watch = StreamWatch(
        stream_id="rearm",
        name="rearm",
        span=INVALID_SPAN,
        timeout=timeout,
        stall_after=10.0,
        now=start,
    )
    watch._deadlines = RecordingDeadlines()  # type: ignore[assignment]
    if iterating:
        watch.start_iterating(start)
    else:
        watch.arm()
    watch._on_timer()  # 15 s idle: the stall
    assert watch.stall_started == start
    return watch, start


class TestRearm:
    async def test_an_item_after_a_stall_rearms_from_the_item(self) -> None:
        """The check re-armed by the resume is due stall_after after the item, not before it."""
        watch, start = stalled_watch(timeout=30.0, iterating=True)
        deadlines: RecordingDeadlines = watch._deadlines  # type: ignore[assignment]
        assert deadlines.scheduled == [start + 10.0, start + 30.0]
        item = start + 20.0
        watch.note_item(item)
        assert deadlines.scheduled == [start + 10.0, start + 30.0, item + 10.0]

    async def test_the_answer_after_a_stall_arms_once(self) -> None:
        """An iterator answering a stalled response wait arms the check once, from the answer."""
        watch, start = stalled_watch(timeout=30.0, iterating=False)
        deadlines: RecordingDeadlines = watch._deadlines  # type: ignore[assignment]
        assert deadlines.scheduled == [start + 10.0]  # no deadline on the response wait
        answer = start + 20.0
        watch.start_iterating(answer)
        assert deadlines.scheduled == [start + 10.0, answer + 10.0]


class TestBackpressure:
    async def test_blocked_put_is_not_a_stall(
        self, telemetry: Any, log_events: list[dict[str, Any]]
    ) -> None:
        """A full queue nobody drains is blocked_on_put with a backpressure warning, no stall."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        task = asyncio.create_task(
            send_to_queue(
                gappy(["a", "b", "c"], {}),
                queue,
                chunk_timeout=STALL,
                stall_after=STALL,
                name="bp",
            )
        )
        await asyncio.sleep(GAP)
        (snapshot,) = inflight()
        assert snapshot["state"] == _watch.BLOCKED_ON_PUT
        assert snapshot["items"] == 2
        received = await until_sentinel(queue)
        await task
        assert received == ["a", "b", "c"]

        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert events_of(span) == [
            (names.EVENT_FIRST_ITEM, {}),
            (
                names.EVENT_BACKPRESSURE,
                {"thunkscope.queue.wait": STALL, names.STREAM_ITEMS: 2},
            ),
            (names.EVENT_SENTINEL, {names.STREAM_ITEMS: 3}),
        ]
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_COMPLETED
        assert span.attributes[names.STREAM_PUT_WAIT] == GAP
        (warning,) = logged(log_events, names.LOG_STREAM_BACKPRESSURE)
        assert warning["log_level"] == "warning"
        assert warning["blocked_s"] == STALL
        assert logged(log_events, names.LOG_STREAM_STALLED) == []
        assert stalls_by_name(telemetry) == {}
        (point,) = telemetry.points(names.QUEUE_PUT_WAIT.name)
        assert dict(point.attributes) == {names.STREAM_NAME: "bp"}
        assert point.count == 1
        assert point.sum == GAP

    async def test_blocked_sentinel_put_warns_too(self, telemetry: Any) -> None:
        """A consumer that never reads the terminator still shows as backpressure, not a stall."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        task = asyncio.create_task(
            send_to_queue(gappy(["a"], {}), queue, chunk_timeout=STALL, stall_after=STALL)
        )
        await asyncio.sleep(GAP)
        (snapshot,) = inflight()
        assert snapshot["state"] == _watch.BLOCKED_ON_PUT
        assert await queue.get() == "a"
        await task
        assert await queue.get() is None
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_BACKPRESSURE,
            names.EVENT_SENTINEL,  # recorded once the sentinel is on the queue
        ]
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_COMPLETED

    async def test_stall_after_a_blocked_put_counts_from_the_put(self, telemetry: Any) -> None:
        """Time blocked on the queue is not backend time: the stall clock restarts after the put."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        task = asyncio.create_task(
            send_to_queue(
                gappy(["a", "b", "c"], {2: STALL / 2}), queue, chunk_timeout=None, stall_after=STALL
            )
        )
        await asyncio.sleep(GAP)  # blocked putting "b" for longer than stall_after
        received = await until_sentinel(queue)
        await task
        assert received == ["a", "b", "c"]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert names.EVENT_STALLED not in [name for name, _ in events_of(span)]
        assert stalls_by_name(telemetry) == {}
