"""Load against a real collector: nothing lost, memory bounded, nothing left in flight.

1,000 concurrent streams of 1,000 items each run twice in one fresh interpreter: first
with no telemetry, then with ``configure()`` exporting to rotel. Every item must arrive
in order, rotel must receive exactly one span per stream, and memory must stay bounded:
a second telemetry run may not raise the peak resident set by more than
`STEADY_GROWTH_LIMIT_MB` (nothing accumulates per stream or per item). The run times are
reported, never compared: a busy machine stretches them; the cost figures are measured by
benchmarks/bench.py.
"""

from __future__ import annotations

import math

import pytest

from support.collectors import RotelCollector
from support.faulty import run_python
from thunkscope import names

STREAMS = 1_000
ITEMS = 1_000
TELEMETRY_MEMORY_LIMIT_MB = 100.0
STEADY_GROWTH_LIMIT_MB = 16.0

LOAD = r"""
import asyncio, json, os, resource, time
import thunkscope
from thunkscope import send_to_queue

STREAMS = int(os.environ["STREAMS"])
ITEMS = int(os.environ["ITEMS"])

async def backend(n):
    for i in range(n):
        if i % 10 == 0:
            await asyncio.sleep(0)  # a network stream hands control back between chunks
        yield i

async def consume(queue):
    expected = 0
    while True:
        item = await queue.get()
        if item is None:
            return expected
        assert not isinstance(item, BaseException), repr(item)
        assert item == expected, (item, expected)
        expected += 1

async def streams():
    queues = [asyncio.Queue(maxsize=100) for _ in range(STREAMS)]
    producers = [
        asyncio.create_task(send_to_queue(backend(ITEMS), queue, name="load"))
        for queue in queues
    ]
    counts = await asyncio.gather(*(consume(queue) for queue in queues))
    await asyncio.gather(*producers)
    assert counts == [ITEMS] * STREAMS, "items lost"

def timed():
    started = time.perf_counter()
    asyncio.run(streams())
    return time.perf_counter() - started

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

off = timed()
peak_off = peak_mb()
handle = thunkscope.configure(service_name="load", endpoint=os.environ["ENDPOINT"])
on = timed()
peak_on = peak_mb()
on_again = timed()
peak_on_again = peak_mb()
inflight = len(thunkscope.inflight())
handle.shutdown()
print(json.dumps({
    "off": off, "on": on, "on_again": on_again, "peak_off": peak_off, "peak_on": peak_on,
    "peak_on_again": peak_on_again, "inflight": inflight,
}))
"""


@pytest.mark.slow
class TestThousandStreams:
    def test_nothing_lost_bounded_and_cheap(self, rotel: RotelCollector) -> None:
        """1,000 x 1,000 items in order, one span per stream, bounded memory."""
        result = run_python(
            LOAD,
            env={"ENDPOINT": rotel.http_endpoint, "STREAMS": str(STREAMS), "ITEMS": str(ITEMS)},
            timeout=120,
        )
        # Every item arrived in order (asserted by each consumer) and nothing is left running.
        assert result["inflight"] == 0
        spans = rotel.wait_for_spans(2 * STREAMS, name=names.SPAN_SEND_TO_QUEUE, timeout=30)
        assert len(spans) == 2 * STREAMS  # two runs with telemetry on: no span lost or doubled
        assert {
            (s["attributes"][names.STREAM_OUTCOME], s["attributes"][names.STREAM_ITEMS])
            for s in spans
        } == {(names.OUTCOME_COMPLETED, ITEMS)}
        assert len({s["span_id"] for s in spans}) == 2 * STREAMS
        # The run times are figures (benchmarks/bench.py measures the cost); only their shape.
        for elapsed in (result["off"], result["on"], result["on_again"]):
            assert math.isfinite(elapsed)
            assert elapsed > 0
        assert result["peak_on"] - result["peak_off"] <= TELEMETRY_MEMORY_LIMIT_MB, result
        assert result["peak_on_again"] - result["peak_on"] <= STEADY_GROWTH_LIMIT_MB, result
