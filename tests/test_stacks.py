"""The producer frames a stall event carries: innermost last, at most 5, each bounded, code
locations only (no local values), asyncio's own frames left out."""

from __future__ import annotations

import asyncio

from thunkscope._stacks import FRAME_CHARS, STALL_FRAMES, innermost_frames

SECRET = "sk-do-not-log-me"


async def level(depth: int, release: asyncio.Event) -> None:
    """A chain of `depth` coroutines, the innermost waiting on `release`; a local secret."""
    token = SECRET  # a local value: must never appear in the frames
    if depth == 0:
        await release.wait()
    else:
        await level(depth - 1, release)
    assert token


class TestInnermostFrames:
    async def test_bounded_innermost_and_code_only(self) -> None:
        """Eight nested waits: the 5 innermost frames of `level`, no asyncio frame, no secret."""
        release = asyncio.Event()
        task = asyncio.create_task(level(8, release))
        await asyncio.sleep(0)  # let it reach its wait
        frames = innermost_frames(task)
        release.set()
        await task
        wait_line = level.__code__.co_firstlineno + 4
        assert len(frames) == STALL_FRAMES
        assert frames[-1] == f"{__file__}:{wait_line} in level"
        assert all(frame == f"{__file__}:{wait_line + 2} in level" for frame in frames[:-1])
        assert all(len(frame) <= FRAME_CHARS and SECRET not in frame for frame in frames)

    async def test_done_task_has_no_frames(self) -> None:
        """A finished task, or none, carries an empty list."""
        task = asyncio.create_task(asyncio.sleep(0))
        await task
        assert innermost_frames(task) == []
        assert innermost_frames(None) == []
