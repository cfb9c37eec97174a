"""A workload with streams of every kind the sampling policies of deploy/ single out.

Shared by the head-sampler test (metrics do not depend on sampling) and the tail-sampling
end-to-end test (which traces the gateways keep). Each stream runs inside its own root
span, so each is one trace; the stream's name is its kind, so metrics count per kind.
The timings are the test's shortened thresholds: they decide which policy a stream meets,
never what a test asserts about time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from support import waiting
from thunkscope import inflight, names, send_to_queue

#: A gap longer than this is a stall.
STALL_AFTER_S = 0.5
#: The slow-first-item threshold the test overlay gives the gateway policy.
SLOW_FIRST_ITEM_S = 0.2
#: The chunk timeout of the timeout streams (the others have none).
CHUNK_TIMEOUT_S = 0.3

HEALTHY = "healthy"
ERROR = "error"
TIMEOUT = "timeout"
STALLED = "stalled"
BACKPRESSURE = "backpressure"
SLOW_FIRST_ITEM = "slow_first_item"
KINDS = (HEALTHY, ERROR, TIMEOUT, STALLED, BACKPRESSURE, SLOW_FIRST_ITEM)
#: The kinds every one of whose traces a gateway must keep.
INTERESTING = (ERROR, TIMEOUT, STALLED, BACKPRESSURE, SLOW_FIRST_ITEM)

#: The outcome each kind ends with.
OUTCOME = {
    HEALTHY: names.OUTCOME_COMPLETED,
    ERROR: names.OUTCOME_ERROR,
    TIMEOUT: names.OUTCOME_TIMEOUT,
    STALLED: names.OUTCOME_COMPLETED,
    BACKPRESSURE: names.OUTCOME_COMPLETED,
    SLOW_FIRST_ITEM: names.OUTCOME_COMPLETED,
}
#: The error.type of the kinds that fail.
ERROR_TYPE = {ERROR: "ConnectionResetError", TIMEOUT: "TimeoutError"}
#: Items each kind puts on its queue before its end.
ITEMS = {
    HEALTHY: 3,
    ERROR: 1,
    TIMEOUT: 1,
    STALLED: 2,
    BACKPRESSURE: 3,
    SLOW_FIRST_ITEM: 2,
}
#: The root span each stream runs in, and the consumer's span under it.
ROOT_SPAN = "scale.request"
CONSUME_SPAN = "scale.consume"


async def _items(kind: str) -> AsyncIterator[str]:
    """The backend of one stream of `kind`."""
    if kind == SLOW_FIRST_ITEM:
        await asyncio.sleep(SLOW_FIRST_ITEM_S * 2)  # over the threshold, under STALL_AFTER_S
    yield "a"
    if kind == ERROR:
        raise ConnectionResetError("backend went away")
    if kind == STALLED:
        await asyncio.sleep(STALL_AFTER_S * 2)
    if kind == TIMEOUT:
        await asyncio.sleep(CHUNK_TIMEOUT_S * 20)
    for item in ("b", "c")[: ITEMS[kind] - 1]:
        yield item


async def _drain(queue: asyncio.Queue[Any]) -> None:
    """Take items until the end of the stream (the None sentinel or a forwarded error)."""
    while True:
        item = await queue.get()
        if item is None or isinstance(item, BaseException):
            return


async def run_stream(kind: str, tracer: trace.Tracer, name: str | None = None) -> str:
    """One stream of `kind` (named `name`, else its kind) in its own trace of three spans:
    the root, the stream and its consumer. Its trace id (hex) is returned."""
    with tracer.start_as_current_span(ROOT_SPAN, attributes={"scale.kind": kind}) as root:
        # A full one-slot queue blocks the second put until the consumer starts: backpressure.
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1 if kind == BACKPRESSURE else 0)
        producer = asyncio.create_task(
            send_to_queue(
                _items(kind),
                queue,
                name=name or kind,
                chunk_timeout=CHUNK_TIMEOUT_S if kind == TIMEOUT else None,
                stall_after=STALL_AFTER_S,
            )
        )
        if kind == BACKPRESSURE:
            trace_id = f"{root.get_span_context().trace_id:032x}"
            await waiting.until(
                lambda: any(
                    snap["trace_id"] == trace_id and snap["state"] == "blocked_on_put"
                    for snap in inflight()
                ),
                what=f"backpressure stream {trace_id} blocked on its put",
            )
        with tracer.start_as_current_span(CONSUME_SPAN):
            await _drain(queue)
        await producer
        return f"{root.get_span_context().trace_id:032x}"


@dataclass(frozen=True)
class Workload:
    """How many streams of each kind to run."""

    counts: dict[str, int]

    @property
    def total(self) -> int:
        """All the streams of the workload."""
        return sum(self.counts.values())


async def run(workload: Workload, tracer: trace.Tracer, parallel: int = 50) -> dict[str, str]:
    """Run the workload, at most `parallel` streams at a time; trace id -> kind."""
    gate = asyncio.Semaphore(parallel)

    async def one(kind: str) -> tuple[str, str]:
        async with gate:
            return await run_stream(kind, tracer), kind

    kinds = [kind for kind, count in workload.counts.items() for _ in range(count)]
    return dict(await asyncio.gather(*(one(kind) for kind in kinds)))
