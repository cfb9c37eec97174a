"""The in-flight registry and thunkscope.inflight(): what is running, since when, and where."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest

import thunkscope
from support.fakes import HANG
from support.waiting import until
from thunkscope import _inflight, _watch, inflight, names, send_to_queue

# Virtual time (sleeps and hangs take no real time) for all but the test across threads,
# whose other loop runs on real time.
virtual_time = pytest.mark.virtual_time

SNAPSHOT_KEYS = {
    "stream_id",
    "name",
    "trace_id",
    "state",
    "items",
    "age_s",
    "idle_s",
    "backend_type",
    "stack",
}


class Token:
    """A stream item that can be weakly referenced."""


async def hanging_tokens(release: asyncio.Event, *items: Any) -> AsyncIterator[Any]:
    """Yield `items`, then wait for `release` before ending."""
    for item in items:
        yield item
    await release.wait()


async def waiting_for_answer(release: asyncio.Event) -> str:
    """A backend that has not answered yet."""
    await release.wait()
    return "answer"


def by_name() -> dict[str, dict[str, Any]]:
    """The current snapshots keyed by stream name."""
    return {snap["name"]: snap for snap in inflight()}


@virtual_time
class TestSnapshot:
    async def test_fields_of_a_running_stream(self, telemetry: Any) -> None:
        """A stream waiting for its next item shows every field, with its trace and stack."""
        release = asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        start = asyncio.get_running_loop().time()  # thunkscope's clock: the virtual one
        tracer = telemetry.tracer_provider.get_tracer("test")
        with tracer.start_as_current_span("request") as parent:
            task = asyncio.create_task(
                send_to_queue(hanging_tokens(release, "a", "b"), queue, name="snap")
            )
        await until(lambda: queue.qsize() == 2)
        await asyncio.sleep(0.05)
        (snapshot,) = inflight()
        stack = snapshot.pop("stack")
        assert snapshot == {
            "stream_id": snapshot["stream_id"],
            "name": "snap",
            "trace_id": f"{parent.get_span_context().trace_id:032x}",
            "state": "awaiting_item",
            "items": 2,
            "age_s": round(asyncio.get_running_loop().time() - start, 6),
            "idle_s": round(asyncio.get_running_loop().time() - start, 6),
            "backend_type": "hanging_tokens",
        }
        functions = [line.rsplit(" in ", 1)[1] for line in stack]
        assert functions[:3] == ["send_to_queue", "run_stream", "_pump"]
        assert functions[-2:] == ["hanging_tokens", "wait"]
        assert stack[-2].startswith(f"{__file__}:")
        release.set()
        await task
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert span.attributes[names.STREAM_ID] == snapshot["stream_id"]

    async def test_is_plain_json(self) -> None:
        """Snapshots survive a JSON round trip unchanged."""
        release = asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(hanging_tokens(release, Token()), queue))
        await until(lambda: queue.qsize() == 1)
        snapshots = inflight()
        assert json.loads(json.dumps(snapshots)) == snapshots
        assert set(snapshots[0]) == SNAPSHOT_KEYS
        assert snapshots[0]["trace_id"] is None  # no tracer provider in this test
        release.set()
        await task

    async def test_awaiting_response(self) -> None:
        """A backend that has not answered shows as awaiting_response, named by its coroutine."""
        release = asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(waiting_for_answer(release), queue))
        await until(lambda: _inflight.registered() == 1)
        await asyncio.sleep(0)
        (snapshot,) = inflight()
        assert snapshot["state"] == "awaiting_response"
        assert snapshot["backend_type"] == "waiting_for_answer"
        assert snapshot["items"] == 0
        assert snapshot["stack"][-2].endswith("in waiting_for_answer")
        release.set()
        await task
        assert inflight() == []

    async def test_stalled_and_back(self) -> None:
        """A stream past stall_after shows as stalled, and as awaiting_item once items flow."""
        release = asyncio.Event()
        more = asyncio.Event()

        async def two_parts() -> AsyncIterator[str]:
            yield "a"
            await release.wait()
            yield "b"
            await more.wait()

        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(two_parts(), queue, stall_after=0.05))
        await until(lambda: queue.qsize() == 1)
        await until(lambda: [snap["state"] for snap in inflight()] == ["stalled"], what="stall")
        release.set()
        await until(lambda: queue.qsize() == 2)
        assert [snap["state"] for snap in inflight()] == ["awaiting_item"]
        more.set()
        await task

    async def test_blocked_on_put(self) -> None:
        """A producer waiting on a full queue shows as blocked_on_put."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        task = asyncio.create_task(send_to_queue(hanging_tokens(asyncio.Event(), 1, 2), queue))
        await until(lambda: queue.full())
        # The producer has put 1 and now waits to put 2.
        await until(lambda: [snap["state"] for snap in inflight()] == ["blocked_on_put"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert inflight() == []

    def test_backend_type_names_no_payload(self) -> None:
        """A plain response is named by its type, never by its value."""
        assert _watch.backend_type_of("a secret prompt") == "str"
        assert _watch.backend_type_of({"k": "v"}) == "dict"


class TestOrderAndScope:
    @virtual_time
    async def test_most_idle_first(self) -> None:
        """Snapshots come most idle first."""
        release = asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def ticking() -> AsyncIterator[int]:
            i = 0
            while not release.is_set():
                yield i
                i += 1
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(send_to_queue(ticking(), queue, name="busy"))]
        tasks.append(
            asyncio.create_task(send_to_queue(hanging_tokens(release, 1), queue, name="oldest"))
        )
        await asyncio.sleep(0.06)
        tasks.append(
            asyncio.create_task(send_to_queue(hanging_tokens(release, 1), queue, name="newer"))
        )
        await asyncio.sleep(0.06)
        snapshots = inflight()
        assert [snap["name"] for snap in snapshots] == ["oldest", "newer", "busy"]
        idles = [snap["idle_s"] for snap in snapshots]
        assert idles == sorted(idles, reverse=True)
        release.set()
        await asyncio.gather(*tasks)

    async def test_every_thread_and_loop(self) -> None:
        """A stream running on another thread's event loop is in the view, with its stack."""
        started = threading.Event()
        finish = threading.Event()

        async def other_loop() -> None:
            release = asyncio.Event()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            task = asyncio.create_task(
                send_to_queue(hanging_tokens(release, "x"), queue, name="threaded")
            )
            await until(lambda: not queue.empty())
            started.set()
            await asyncio.to_thread(finish.wait, 2.0)
            release.set()
            await task

        thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
        thread.start()
        try:
            assert await asyncio.to_thread(started.wait, 2.0)
            snapshot = by_name()["threaded"]
            assert snapshot["state"] == "awaiting_item"
            assert snapshot["stack"][-2].endswith("in hanging_tokens")
        finally:
            finish.set()
            await asyncio.to_thread(thread.join, 2.0)
        assert inflight() == []


@virtual_time
class TestNothingLeftBehind:
    @pytest.mark.parametrize("ending", ["completed", "error", "timeout", "cancelled", "bad_arg"])
    async def test_ended_streams_leave_at_once(self, telemetry: Any, ending: str) -> None:
        """However a stream ends, it is gone from the view when send_to_queue returns."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def backend() -> AsyncIterator[str]:
            yield "a"
            if ending == "error":
                raise RuntimeError("backend failed")
            if ending in ("timeout", "cancelled"):
                await asyncio.sleep(HANG)

        task = asyncio.create_task(
            send_to_queue(
                backend(), queue, chunk_timeout=-1 if ending == "bad_arg" else 0.05, name=ending
            )
        )
        if ending == "cancelled":
            await until(lambda: queue.qsize() == 1)
            assert [snap["name"] for snap in inflight()] == ["cancelled"]
            task.cancel()
        await asyncio.wait([task])
        assert inflight() == []
        assert _inflight.registered() == 0

    async def test_no_strong_reference_to_iterator_queue_or_items(self) -> None:
        """The registry's entry refers to none of the iterator, queue or items itself,
        and all of them can be collected once the stream ended."""
        release = asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        item = Token()
        iterator = hanging_tokens(release, item)
        task = asyncio.create_task(send_to_queue(iterator, queue))
        await until(lambda q=queue: q.qsize() == 1)
        (watch,) = _inflight._registry.values()
        referents = gc.get_referents(watch)
        assert not [r for r in referents if r is iterator or r is queue or r is item]
        del watch, referents
        release.set()
        await task
        refs = [weakref.ref(obj) for obj in (iterator, queue, item)]
        del iterator, queue, item
        gc.collect()
        assert [ref() for ref in refs] == [None, None, None]

    @pytest.mark.slow
    async def test_hundred_thousand_streams(self) -> None:
        """100,000 sequential streams leave the registry empty and no object behind."""

        async def one(i: int) -> int:
            return i

        async def run(count: int) -> None:
            for i in range(count):
                queue: asyncio.Queue[Any] = asyncio.Queue()
                await send_to_queue(one(i), queue, stall_after=30.0)
                # Let the loop turn, as it does between requests: it drops cancelled timers.
                await asyncio.sleep(0)

        await run(1_000)  # warm up caches and lazily created objects
        gc.collect()
        before = len(gc.get_objects())
        await run(100_000)
        gc.collect()
        grown = len(gc.get_objects()) - before
        assert _inflight.registered() == 0
        assert len(_inflight._producers) == 0
        assert grown < 100, f"{grown} objects left behind by 100,000 streams"

    async def test_producer_links_are_weak(self, telemetry: Any) -> None:
        """The queue-to-producer map forgets a queue when the queue is gone."""
        queues = [asyncio.Queue[Any]() for _ in range(100)]
        for queue in queues:
            await send_to_queue("value", queue)
        assert all(_inflight.producer_of(queue) is not None for queue in queues)
        del queues, queue
        gc.collect()
        assert len(_inflight._producers) == 0

    def test_public_name(self) -> None:
        """inflight is exported at the top level."""
        assert thunkscope.inflight is inflight


@virtual_time
class TestRegistrySource:
    async def test_in_flight_watches_are_the_running_streams(self) -> None:
        """in_flight_watches() lists exactly the running streams' watches, then none."""
        release = asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(hanging_tokens(release, "a"), queue, name="w"))
        await until(lambda: queue.qsize() == 1)
        (watch,) = _inflight.in_flight_watches()
        assert (watch.name, watch.items, watch.state) == ("w", 1, _watch.AWAITING_ITEM)
        release.set()
        await task
        assert _inflight.in_flight_watches() == []

    def test_active_gauge_reads_the_source_it_was_given(self, telemetry: Any) -> None:
        """The stream.active gauge counts with the source handed to use_registry: the
        registry's active_by_name, wired once by the package."""
        from thunkscope._telemetry import telemetry as state

        assert state.active_streams is _inflight.active_by_name
        state.use_registry(lambda: {"given": 2})
        state.stream_names.fold("given")  # a name the gauge reports: one a stream had
        try:
            state.instruments  # noqa: B018 - creates the gauge on the test's providers
            active = {
                p.attributes[names.STREAM_NAME]: p.value
                for p in telemetry.points(names.STREAM_ACTIVE.name)
            }
            assert active["given"] == 2
            assert {v for k, v in active.items() if k != "given"} <= {0}  # no other stream
        finally:
            state.use_registry(_inflight.active_by_name)
