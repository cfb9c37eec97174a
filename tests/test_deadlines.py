"""_deadlines: one timer per event loop over a heap of stream checks."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thunkscope import _deadlines
from thunkscope._deadlines import Check, Deadlines, deadlines

SOON = 0.02


class TestSchedule:
    async def test_checks_fire_in_due_order(self) -> None:
        """Checks scheduled out of order run in the order of their due times."""
        table = Deadlines()
        fired: list[str] = []
        now = time.monotonic()
        for name, offset in (("c", 3), ("a", 1), ("b", 2)):
            table.schedule(now + offset * SOON, lambda name=name: fired.append(name))
        await asyncio.sleep(4 * SOON)
        assert fired == ["a", "b", "c"]
        assert table.pending() == 0

    async def test_cancelled_check_never_fires(self) -> None:
        """A cancelled check's callback is not called; the others still are."""
        table = Deadlines()
        fired: list[str] = []
        now = time.monotonic()
        kept = table.schedule(now + SOON, lambda: fired.append("kept"))
        dropped = table.schedule(now + SOON / 2, lambda: fired.append("dropped"))
        table.cancel(dropped)
        table.cancel(dropped)  # twice is harmless
        assert table.pending() == 1
        await asyncio.sleep(2 * SOON)
        assert fired == ["kept"]
        assert kept[2] is None  # fired checks let go of their callback

    async def test_one_loop_timer_for_many_checks(self, timers: list[float]) -> None:
        """A thousand checks due one after another arm the loop's timer once."""
        table = Deadlines()
        now = time.monotonic()
        for i in range(1_000):
            table.schedule(now + 30 + i * 0.001, lambda: None)
        assert len(timers) == 1
        assert timers[0] == pytest.approx(30, abs=0.5)
        assert table.pending() == 1_000

    async def test_an_earlier_check_rearms_the_timer(self, timers: list[float]) -> None:
        """A check due before the armed one moves the loop's timer forward."""
        table = Deadlines()
        fired: list[str] = []
        now = time.monotonic()
        table.schedule(now + 30, lambda: fired.append("late"))
        table.schedule(now + SOON, lambda: fired.append("early"))
        assert [round(delay) for delay in timers] == [30, 0]
        await asyncio.sleep(2 * SOON)
        assert fired == ["early"]

    async def test_a_callback_may_schedule_again(self) -> None:
        """A check that schedules its successor while firing gets it run too."""
        table = Deadlines()
        fired: list[int] = []

        def again() -> None:
            fired.append(len(fired))
            if len(fired) < 3:
                table.schedule(time.monotonic() + SOON / 4, again)

        table.schedule(time.monotonic() + SOON / 4, again)
        await asyncio.sleep(3 * SOON)
        assert fired == [0, 1, 2]


class TestPurge:
    async def test_cancelled_checks_are_purged(self) -> None:
        """Cancelled checks leave the heap once they are half of it: it stays bounded."""
        table = Deadlines()
        now = time.monotonic()
        live = [table.schedule(now + 60, lambda: None) for _ in range(10)]
        for _ in range(1_000):
            table.cancel(table.schedule(now + 30, lambda: None))
        assert table.pending() == len(live)
        assert len(table._heap) <= 2 * len(live) + _deadlines._PURGE_AT_LEAST

    async def test_cancel_releases_the_callback_at_once(self) -> None:
        """A cancelled check holds nothing of its stream while it waits to be purged."""

        class Stream:
            def on_timer(self) -> None:
                raise AssertionError("cancelled")

        table = Deadlines()
        stream = Stream()
        gone = weakref.ref(stream)
        table.cancel(table.schedule(time.monotonic() + 30, stream.on_timer))
        del stream
        gc.collect()
        assert gone() is None


class TestFailures:
    async def test_a_raising_callback_stops_no_other_check(
        self, fresh_failure_reports: None, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A check that raises is reported once; the checks after it still run."""
        caplog.set_level(logging.WARNING, logger="thunkscope")
        table = Deadlines()
        fired: list[str] = []

        def broken() -> None:
            raise RuntimeError("boom")

        now = time.monotonic()
        table.schedule(now + SOON / 2, broken)
        table.schedule(now + SOON / 2, lambda: fired.append("same moment"))
        table.schedule(now + SOON, broken)
        table.schedule(now + 2 * SOON, lambda: fired.append("later"))
        await asyncio.sleep(3 * SOON)
        assert fired == ["same moment", "later"]
        (record,) = [r for r in caplog.records if "stream watch" in r.getMessage()]
        assert "RuntimeError" in record.getMessage()
        assert "boom" not in record.getMessage()


class TestPerLoop:
    async def test_one_table_per_loop(self) -> None:
        """The running loop always gets the same table; a loop in another thread its own."""
        here = deadlines()
        assert deadlines() is here
        there: list[Deadlines] = []

        def other_loop() -> None:
            async def look() -> None:
                there.append(deadlines())

            asyncio.run(look())

        thread = threading.Thread(target=other_loop)
        thread.start()
        thread.join()
        (other,) = there
        assert other is not here

    def test_a_finished_loop_takes_its_table_with_it(self) -> None:
        """The table of a loop that is gone is gone too: nothing keeps the loop alive."""

        async def make() -> None:
            deadlines().schedule(time.monotonic() + 60, lambda: None)

        gc.collect()  # loops an earlier test left for the collector go first (any test order)
        before = len(_deadlines._by_loop)
        asyncio.run(make())
        gc.collect()
        assert len(_deadlines._by_loop) == before


class FakeLoopClock:
    """A clock the test moves by hand, and the timers armed against it, fired in order."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = 0

    def deadlines(self) -> Deadlines:
        """A Deadlines table on this clock and its timers: no real loop, no real time."""
        return Deadlines(clock=lambda: self.now, get_loop=lambda: self)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self._order += 1
        self.timers.append((self.now + delay, self._order, callback, args))

    def advance_to(self, moment: float) -> None:
        """Fire every timer due by `moment`, earliest first, as the event loop would."""
        while True:
            due = sorted(t for t in self.timers if t[0] <= moment)
            if not due:
                break
            timer = due[0]
            self.timers.remove(timer)
            self.now = max(self.now, timer[0])
            timer[2](*timer[3])
        self.now = moment


# One operation: schedule a check `offset` seconds ahead, cancel the i-th check scheduled
# so far, or let `step` seconds pass.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 400)),
        st.tuples(st.just("advance"), st.integers(0, 20)),
    ),
    max_size=400,
)


class TestSimulated:
    @settings(max_examples=150, deadline=None)
    @given(operations)
    def test_every_live_check_fires_once_in_due_order(self, steps: list[tuple[str, int]]) -> None:
        """Whatever the mix of schedules, cancels and time, live checks fire once, in order."""
        clock = FakeLoopClock()
        table = clock.deadlines()
        scheduled: list[tuple[float, int, Check]] = []
        cancelled: set[int] = set()
        fired: list[int] = []

        def run() -> None:
            for op, value in steps:
                if op == "schedule":
                    index = len(scheduled)
                    due = clock.now + value / 10
                    check = table.schedule(due, lambda index=index: fired.append(index))
                    scheduled.append((due, index, check))
                elif op == "cancel" and scheduled:
                    index = value % len(scheduled)
                    if index not in fired:
                        cancelled.add(index)
                    table.cancel(scheduled[index][2])
                else:
                    clock.advance_to(clock.now + value / 10)
                stale = sum(1 for entry in table._heap if entry[2] is None)
                assert table._stale == stale
            clock.advance_to(clock.now + 10)  # past every due time

        run()
        expected = [index for due, index, _ in sorted(scheduled) if index not in cancelled]
        assert fired == expected
        assert table.pending() == 0
        assert table._heap == []

    @settings(max_examples=50, deadline=None)
    @given(
        st.lists(st.integers(0, 10_000), min_size=130, max_size=300),
        st.randoms(use_true_random=False),
    )
    def test_purged_heap_keeps_due_order(self, dues: list[int], random: Any) -> None:
        """Cancelling most checks purges the heap; the survivors still fire in due order."""
        clock = FakeLoopClock()
        table = clock.deadlines()
        fired: list[int] = []
        checks = [
            table.schedule(clock.now + 1 + due / 1_000, lambda i=i: fired.append(i))
            for i, due in enumerate(dues)
        ]
        doomed = set(random.sample(range(len(dues)), k=len(dues) * 2 // 3))
        for index in doomed:
            table.cancel(checks[index])
        assert len(table._heap) < len(dues)  # the purge ran
        clock.advance_to(clock.now + 20)
        survivors = sorted((due, i) for i, due in enumerate(dues) if i not in doomed)
        assert fired == [i for _, i in survivors]
