"""A thunkscope workload exported over OTLP, run as a program by tests/test_collector.py.

`python pipeline_workload.py ENDPOINT PROTOCOL` configures thunkscope to export to ENDPOINT
and runs the demo's mix once, each stream consumed through `iter_queue` (so every trace
holds the producer and its `process_queue` consumer): a completed stream, a stream that
stalls then completes, a stream that times out, a stream whose backend fails, and cache
traffic (a miss, a hit, an eviction); then a stream that blocks on its bounded queue
(backpressure), two gathers (one whose thunk fails) and an event-loop lookup, so every
dashboard query has series to answer with. It prints, as JSON, the trace id of each stream
(hex) and what it produced, so the test knows what the stores must hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import trace

import thunkscope

STALL_AFTER_S = 0.2
# The stalled stream pauses after this many items: a count no other stream's event carries
# (completed 5, timed out 1, failed 2), so Jaeger finds the stall by its event's attributes.
STALLED_AT = 3


async def tokens(
    count: int, *, pause_at: int | None = None, pause_s: float = 0.0
) -> AsyncIterator[str]:
    """A backend streaming `count` tokens, pausing once before token `pause_at`."""
    for index in range(count):
        if index == pause_at:
            await asyncio.sleep(pause_s)
        yield f"t{index}"


async def failing(count: int) -> AsyncIterator[str]:
    """A backend that streams `count` tokens, then loses its connection."""
    for index in range(count):
        yield f"t{index}"
    raise ConnectionResetError("upstream closed the connection")


BACKPRESSURE_ITEMS = 2
# Objects kept alive until the process ends: the cache's entries and limit gauges observe
# live caches only, and the final export at shutdown must still see it.
KEPT: list[object] = []


class Thunk:
    """A mellea-style thunk: its value, awaited through avalue()."""

    def __init__(self, value: int) -> None:
        self.value = value

    async def avalue(self) -> int:
        return self.value


class FailingThunk:
    """A thunk whose backend fails."""

    async def avalue(self) -> int:
        raise ValueError("thunk failed")


async def stream(
    name: str,
    backend: AsyncIterator[str],
    *,
    maxsize: int = 0,
    consume_pause_s: float = 0.0,
    **kwargs: Any,
) -> tuple[str, list[str]]:
    """Streams `backend` through send_to_queue and iter_queue; the trace id and items.

    With `maxsize` and `consume_pause_s`, a slow consumer of a bounded queue makes the
    producer block (backpressure)."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
    tracer = trace.get_tracer("pipeline-workload")
    items: list[str] = []
    with tracer.start_as_current_span(f"request {name}") as root:
        producer = asyncio.create_task(
            thunkscope.send_to_queue(backend, queue, name=name, **kwargs)
        )
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async for item in thunkscope.iter_queue(queue):
                items.append(item)
                await asyncio.sleep(consume_pause_s)
        await producer
        return format(root.get_span_context().trace_id, "032x"), items


async def run() -> dict[str, Any]:
    """The mix, one stream of each outcome plus cache traffic, backpressure and gathers."""
    traces: dict[str, str] = {}
    produced: dict[str, int] = {}
    traces["completed"], items = await stream("completed", tokens(5))
    produced["completed"] = len(items)
    traces["stalled"], items = await stream(
        "stalled",
        tokens(5, pause_at=STALLED_AT, pause_s=STALL_AFTER_S * 4),
        stall_after=STALL_AFTER_S,
    )
    produced["stalled"] = len(items)
    traces["timeout"], items = await stream(
        "timeout", tokens(4, pause_at=1, pause_s=3600), chunk_timeout=0.3
    )
    produced["timeout"] = len(items)
    traces["error"], items = await stream("error", failing(2))
    produced["error"] = len(items)

    cache = thunkscope.ClientCache(1, name="pipeline-clients")
    cache.put("a", object())  # insert
    cache.get("a")  # hit
    cache.get("b")  # miss
    cache.put("b", object())  # evicts "a"
    KEPT.append(cache)

    # Two items into a queue of one, taken every 0.2 s: the producer blocks (its span's
    # item count, 2, is not the stall's STALLED_AT).
    traces["backpressure"], items = await stream(
        "backpressure", tokens(BACKPRESSURE_ITEMS), maxsize=1, consume_pause_s=0.2
    )
    produced["backpressure"] = len(items)
    with trace.get_tracer("pipeline-workload").start_as_current_span("request gather") as root:
        traces["gather"] = format(root.get_span_context().trace_id, "032x")
        thunkscope.get_current_event_loop()
        await thunkscope.wait_for_all_mots([Thunk(1), Thunk(2)])
        with contextlib.suppress(ValueError):
            await thunkscope.wait_for_all_mots([Thunk(3), FailingThunk()])
    return {"traces": traces, "items": produced}


def main() -> int:
    endpoint, protocol = sys.argv[1], sys.argv[2]
    handle = thunkscope.configure(
        service_name="thunkscope-pipeline",
        endpoint=endpoint,
        protocol=protocol,  # type: ignore[arg-type]
        log_format="json",
        log_level="info",
        metric_export_interval_s=1.0,
    )
    try:
        result = asyncio.run(run())
    finally:
        handle.shutdown()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
