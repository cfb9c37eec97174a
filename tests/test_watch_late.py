"""The stream watch when its check runs late: a busy event loop must not change what is reported.

The loop is blocked on purpose (a synchronous sleep) past both stall_after and chunk_timeout,
so the one check comes after both have passed, however fast or slow the machine is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from conftest import Telemetry, events_of
from support.waiting import until
from thunkscope import names, send_to_queue


async def one_then_hang(release: asyncio.Event) -> AsyncIterator[str]:
    """One item, then nothing until `release` (never set before the deadline)."""
    yield "a"
    await release.wait()


class TestLateCheck:
    async def test_stall_is_reported_before_the_timeout(self, telemetry: Telemetry) -> None:
        """A gap past stall_after and chunk_timeout, seen late, gives a stall and then a timeout."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        release = asyncio.Event()
        task = asyncio.create_task(
            send_to_queue(
                one_then_hang(release), queue, chunk_timeout=0.1, stall_after=0.05, name="late"
            )
        )
        await until(lambda: queue.qsize() == 1, what="the first item arrived")
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is blocked on purpose: the check runs late
        await task
        release.set()
        first, error = queue.get_nowait(), queue.get_nowait()
        assert (first, type(error)) == ("a", TimeoutError)
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_STALLED,
            names.EVENT_TIMEOUT,
        ]
        assert span.attributes[names.STREAM_OUTCOME] == names.OUTCOME_TIMEOUT

    async def test_no_stall_when_stall_after_is_not_shorter(self, telemetry: Telemetry) -> None:
        """With stall_after not below chunk_timeout, a late check times out without a stall."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        release = asyncio.Event()
        task = asyncio.create_task(
            send_to_queue(
                one_then_hang(release), queue, chunk_timeout=0.05, stall_after=0.05, name="late"
            )
        )
        await until(lambda: queue.qsize() == 1, what="the first item arrived")
        time.sleep(0.2)  # noqa: ASYNC251 - the loop is blocked on purpose: the check runs late
        await task
        release.set()
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_TIMEOUT,
        ]
