"""Waiting on a condition instead of sleeping: the poll loops the tests share.

A fixed sleep before using something is a guess at how fast the machine is, and a busy
machine outruns it. These wait until the condition holds, with a deadline generous enough
that only a real failure reaches it; the deadline's message names what was awaited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How long a condition may take before the test fails: minutes of load, not milliseconds.
DEADLINE_S = 30.0
#: The pause between two looks.
POLL_S = 0.005


def _expired(deadline: float, what: str, within: float) -> None:
    """End the wait once `deadline` has passed, naming the condition: the condition never
    held, which is the failure; how long it took is never asserted."""
    if time.monotonic() >= deadline:
        raise TimeoutError(f"{what} did not hold within {within:g} s")


async def until(
    condition: Callable[[], bool], within: float = DEADLINE_S, what: str = "condition"
) -> None:
    """Poll `condition` from an async test, letting the event loop run between looks."""
    deadline = time.monotonic() + within
    while not condition():
        _expired(deadline, what, within)
        await asyncio.sleep(POLL_S)


def until_sync(
    condition: Callable[[], bool], within: float = DEADLINE_S, what: str = "condition"
) -> None:
    """Poll `condition` from a plain test or a thread."""
    deadline = time.monotonic() + within
    while not condition():
        _expired(deadline, what, within)
        time.sleep(POLL_S)


def poll(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.25) -> T:
    """Call `check` until it returns instead of raising AssertionError or OSError (a program
    not answering yet), and return its result. The check's own assertion is the failure, so
    at the deadline its last AssertionError (or OSError, as cause) is what the test reports."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, OSError) as error:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: still failing after {timeout:g} s") from error
        time.sleep(interval)
