"""Stand-ins the tests share: backends, thunks, a queue drain, and the hang constant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

HANG = 0.5
"""A stall standing in for a backend that never answers: at least 10x every chunk_timeout
or stream timeout it meets (in virtual time it costs nothing)."""


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    """Everything on the queue now, in order."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def agen(*items: Any, delay: float = 0.0) -> AsyncIterator[Any]:
    """A backend's async iterator of `items`, `delay` seconds before each."""
    for item in items:
        if delay:
            await asyncio.sleep(delay)
        yield item


async def gappy(items: list[Any], gaps: dict[int, float]) -> AsyncIterator[Any]:
    """Yield `items`, sleeping gaps[i] seconds before item i."""
    for index, item in enumerate(items):
        if index in gaps:
            await asyncio.sleep(gaps[index])
        yield item


class Thunk:
    """A mellea ModelOutputThunk stand-in: `avalue()` gives `value`, or raises it if it is
    an exception, after one turn of the loop."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def avalue(self) -> Any:
        await asyncio.sleep(0)
        if isinstance(self.value, Exception):
            raise self.value
        return self.value
