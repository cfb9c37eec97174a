"""One timer per event loop, over a heap of the next check of each of its streams.

Every stream needs a timer for its stall warning and its chunk_timeout deadline, yet
almost every such timer is cancelled unfired: the stream ends, or an item comes and
the check moves on. An asyncio timer is a Python object pushed on the loop's heap,
ordered by Python-level comparisons and purged only when the loop next runs; here a
check is a three-item list on a heap of their own, ordered by C-level comparisons of a
float and an int, and the loop holds one timer: for the earliest check.

Everything here runs on the loop's own thread (the stream's code and the timer's
callback), so nothing is locked. Nothing refers to the loop: the per-loop table is
keyed weakly by it, and a loop that is gone takes its checks with it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol

from thunkscope._telemetry import report_failure, telemetry

# A cancelled check stays on the heap until it comes up, or until the stale ones are
# at least this many and half the heap: then the heap is rebuilt without them.
_PURGE_AT_LEAST: Final = 64


class Check(list[Any]):
    """One scheduled check, ``[due, sequence, callback or None]``: ordered by due time,
    then by scheduling order (sequences are unique, so callbacks are never compared)."""

    __slots__ = ()


class Timers(Protocol):
    """What Deadlines needs of an event loop: a timer (tests give it a simulated one)."""

    def call_later(self, delay: float, callback: Callable[[float], None], due: float, /) -> Any:
        """Call ``callback(due)`` in `delay` seconds."""


class Deadlines:
    """The checks of the streams of one event loop, behind the loop's one timer.

    `clock` (time.monotonic) tells the time checks are due by, and `get_loop`
    (asyncio.get_running_loop) the loop to arm the timer on: a test may simulate both.
    """

    __slots__ = ("_armed_for", "_clock", "_get_loop", "_heap", "_sequence", "_stale")

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        get_loop: Callable[[], Timers] = asyncio.get_running_loop,
    ) -> None:
        self._clock = clock
        self._get_loop = get_loop
        self._heap: list[Check] = []
        self._sequence = itertools.count()
        self._armed_for = float("inf")
        self._stale = 0

    def schedule(self, due: float, callback: Callable[[], None]) -> Check:
        """Call `callback` at `due` (seconds of the clock, time.monotonic by default); returns
        what `cancel` takes."""
        check = Check((due, next(self._sequence), callback))
        heapq.heappush(self._heap, check)
        if due < self._armed_for:
            self._arm(due)
        return check

    def cancel(self, check: Check) -> None:
        """Forget `check` (and its callback, at once); the heap drops it later."""
        if check[2] is None:
            return
        check[2] = None
        self._stale += 1
        heap = self._heap
        if self._stale >= _PURGE_AT_LEAST and 2 * self._stale >= len(heap):
            heap[:] = [live for live in heap if live[2] is not None]  # in place: _fire holds it
            heapq.heapify(heap)
            self._stale = 0

    def pending(self) -> int:
        """Checks still to come (for tests and the curious)."""
        return len(self._heap) - self._stale

    def _arm(self, due: float) -> None:
        # The loop's timer handle is not kept, as it refers to the loop, which must stay
        # collectable: a timer overtaken by an earlier one fires later and does nothing.
        self._armed_for = due
        delay = max(0.0, due - self._clock())
        self._get_loop().call_later(delay, self._fire, due)

    def _fire(self, armed_for: float) -> None:
        if armed_for != self._armed_for:
            return  # overtaken: the timer armed for the earlier check has run already
        self._armed_for = float("inf")
        heap = self._heap
        now = self._clock()
        while heap and heap[0][0] <= now:
            check = heapq.heappop(heap)
            callback = check[2]
            if callback is None:
                self._stale -= 1
                continue
            check[2] = None
            try:
                callback()  # may schedule again, and arm the timer for that
            except Exception as exc:  # one stream's failure must not stop the others' checks
                report_failure("stream watch", exc)
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._stale -= 1
        if heap and heap[0][0] < self._armed_for:
            self._arm(heap[0][0])


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _now() -> float:
    return telemetry.clock()  # looked up each time: a test may swap the clock


def deadlines() -> Deadlines:
    """The checks of the running event loop (made on first use)."""
    loop = asyncio.get_running_loop()
    found = _by_loop.get(loop)
    if found is None:
        with _lock:  # loops of other threads may make theirs at the same moment
            found = _by_loop.setdefault(loop, Deadlines(clock=_now))
    return found
