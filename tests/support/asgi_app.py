"""A small ASGI app for the pre-fork server test: tokens streamed through send_to_queue.

Configured at import, as an app module is (gunicorn ``--preload`` imports it in the
master, then forks the workers). ``GET /stream?name=N`` streams from a fake backend;
``&stall=1`` makes the backend stop after its first token until ``GET /release``
reaches the same worker (or the worker dies). Every worker runs one short stream at
lifespan start-up, so each one has a span in the collector. The first chunk of every
response names the worker's pid.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import thunkscope

thunkscope.configure(log_format=None, metric_export_interval_s=1.0)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_release = asyncio.Event()


async def fake_backend(stall: bool) -> AsyncIterator[str]:
    """Three tokens; after the first, a stalled backend waits for /release."""
    yield "hello "
    if stall:
        await _release.wait()
    yield "from "
    yield "the backend\n"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    if scope["path"] == "/release":
        _release.set()
        await _reply(send, b"released\n")
        return
    name = query.get("name", ["request"])[0]
    stall = query.get("stall", ["0"])[0] == "1"
    queue: asyncio.Queue[Any] = asyncio.Queue()
    producer = asyncio.create_task(
        thunkscope.send_to_queue(fake_backend(stall), queue, name=name, stall_after=0.2)
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send(
        {"type": "http.response.body", "body": f"pid {os.getpid()}\n".encode(), "more_body": True}
    )
    async for token in thunkscope.iter_queue(queue):
        await send({"type": "http.response.body", "body": token.encode(), "more_body": True})
    await producer
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await thunkscope.send_to_queue(fake_backend(False), asyncio.Queue(), name="warmup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _reply(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})
