"""Where a producing task is suspended: its await chain down to the innermost frame.

Read by the in-flight view (`thunkscope.inflight()`, the debug page) and by the stall
event, which carries the innermost frames so that a stall found in a fleet's logs points
at code. Only code locations ("file:line in function") are read, never local values,
and only when a snapshot is taken or a stall fires: nothing of it runs per item.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
from types import FrameType
from typing import Any, Final

__all__ = ["STACK_DEPTH", "STALL_FRAMES", "innermost_frames", "task_stack"]

STACK_DEPTH: Final = 16
STACK_WALK_LIMIT: Final = 64
STALL_FRAMES: Final = 5
"""Frames the stall event carries: the innermost ones outside asyncio's own code."""
FRAME_CHARS: Final = 200
"""Characters kept of each frame on the stall event (a long path is cut at its start)."""
_ASYNCIO_DIR: Final = f"{os.sep}asyncio{os.sep}"


def task_stack(task: asyncio.Task[Any] | None, depth: int = STACK_DEPTH) -> list[str]:
    """Where `task` is suspended, outermost frame first, as 'file:line in function' lines.

    `Task.get_stack()` stops at the task's own coroutine; this follows what each
    coroutine awaits (coroutines, async generators, ``yield from`` generators) down to
    the innermost frame, which is where a stalled backend sits. Async generators are
    reached through their ``asend`` awaitables, which name their generator only to the
    garbage collector. Snapshot-time work only: nothing of it runs per item.
    """
    if task is None or task.done():
        return []
    try:
        frames: list[FrameType] = []
        awaited: object = task.get_coro()
        for _ in range(STACK_WALK_LIMIT):
            frame, awaited = _frame_and_awaited(awaited)
            if frame is not None:
                frames.append(frame)
            if awaited is None:
                break
        return [
            f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            for frame in frames[-depth:]
        ]
    except Exception:  # a task moving on, on another thread, while we look
        return []


def _frame_and_awaited(obj: object) -> tuple[FrameType | None, object]:
    """The frame of a suspended coroutine-like `obj`, and what it awaits in turn."""
    if inspect.iscoroutine(obj):
        return obj.cr_frame, obj.cr_await
    if inspect.isasyncgen(obj):
        return obj.ag_frame, obj.ag_await
    if inspect.isgenerator(obj):
        return obj.gi_frame, obj.gi_yieldfrom
    # An async generator's asend/athrow awaitable, or another wrapper: step to the
    # generator or coroutine it holds, if any. A future ends the walk.
    if isinstance(obj, asyncio.Future):
        return None, None
    for referent in gc.get_referents(obj):
        if inspect.isasyncgen(referent) or inspect.iscoroutine(referent):
            return None, referent
    return None, None


def innermost_frames(task: asyncio.Task[Any] | None) -> list[str]:
    """The stall event's frames: the innermost `STALL_FRAMES` of `task`'s stack outside
    asyncio's own modules, innermost last, each at most `FRAME_CHARS` characters."""
    frames = [frame for frame in task_stack(task) if _ASYNCIO_DIR not in frame]
    return [
        frame if len(frame) <= FRAME_CHARS else "…" + frame[-(FRAME_CHARS - 1) :]
        for frame in frames[-STALL_FRAMES:]
    ]
