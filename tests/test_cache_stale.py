"""ClientCache and dead event loops: an entry whose loop is gone is a stale miss, then evicted.

Keys are usually ``id()`` of the running loop, and ids are reused once a loop is freed:
two ``asyncio.run()`` calls in a row often get the same one. The cache must never hand
the client of a dead loop to a new loop.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from typing import Any

import pytest

from conftest import Telemetry, events_of
from support.waiting import until
from test_cache import ids_of
from thunkscope import ClientCache, names

_names = itertools.count()


def unique() -> str:
    """A cache name no other test uses: counters are shared by caches of one name."""
    return f"stale-{next(_names)}"


class Client:
    """A stand-in for an LLM client bound to the loop it was made on."""

    def __init__(self) -> None:
        self.loop = weakref.ref(asyncio.get_running_loop())
        self.closed = False

    def bound_to_running_loop(self) -> bool:
        return self.loop() is asyncio.get_running_loop()


def client_for_this_loop(cache: ClientCache[int, Client]) -> Client:
    """What a backend does: look up the client of the running loop, make one on a miss."""
    key = id(asyncio.get_running_loop())
    client = cache.get(key)
    if client is None:
        client = Client()
        cache.put(key, client)
    return client


def put_in_fresh_loop(cache: ClientCache[int, Client]) -> int:
    """Put a client for a new loop, run it to the end, and return that loop's id."""

    async def put() -> int:
        client_for_this_loop(cache)
        return id(asyncio.get_running_loop())

    loop_id = asyncio.run(put())
    gc.collect()
    return loop_id


class TestIdReuse:
    def test_sequential_asyncio_runs_never_share_a_client(self, telemetry: Telemetry) -> None:
        """Across 60 asyncio.run() calls, every loop gets a client bound to itself.

        With a meter provider set (the fixture), every hit would be counted.
        """
        evicted: list[Client] = []
        cache: ClientCache[int, Client] = ClientCache(4, name=unique(), on_evict=evicted.append)
        ids: list[int] = []

        async def body() -> None:
            ids.append(id(asyncio.get_running_loop()))
            client = client_for_this_loop(cache)
            assert client.bound_to_running_loop()

        for _ in range(60):
            asyncio.run(body())
            gc.collect()
        # Every client but the last left the cache, through on_evict, exactly once.
        assert len(evicted) == 59
        assert len({id(c) for c in evicted}) == 59
        # Ids get reused here (CPython hands a freed loop's memory to a later one), yet no
        # lookup was a hit: each found nothing, or a dead loop's entry, reported stale.
        assert cache._stats.hits == 0
        assert cache._stats.misses + cache._stats.stale == 60
        # A loop whose id was last used within the cache's reach finds that dead loop's key.
        # How often CPython reuses a freed loop's address depends on the allocator's state
        # (often here, sometimes never in a run); the next test makes the reuse certain.
        reused = sum(1 for i, key in enumerate(ids) if key in ids[max(0, i - cache.capacity) : i])
        assert cache._stats.stale >= reused

    def test_entry_of_a_collected_loop_is_a_stale_miss(self, telemetry: Telemetry) -> None:
        """Looking up the id of a collected loop is a miss reported stale, and evicts it.

        With a meter provider set (the fixture), a hit would be counted.
        """
        evicted: list[Client] = []
        cache: ClientCache[int, Client] = ClientCache(4, name=unique(), on_evict=evicted.append)
        old_id = put_in_fresh_loop(cache)
        assert old_id in cache.cache  # nothing has looked since the loop died

        async def new_loop_asks_for(key: int) -> Client | None:
            return cache.get(key)  # what a new loop with the same id would do

        assert asyncio.run(new_loop_asks_for(old_id)) is None
        assert cache.current_size() == 0
        assert len(evicted) == 1
        assert cache._stats.stale == 1
        assert cache._stats.hits == 0

    def test_other_entries_survive(self) -> None:
        """Only the dead loop's entry goes; string keys and live loops' entries stay."""
        cache: ClientCache[Any, Any] = ClientCache(4, name=unique())
        cache.put("model-a", "client-a")
        # The live loop exists before the dead one is made and collected, so the two never
        # share an id (CPython 3.13 often gives a new loop the address of the last dead one).
        live_loop = asyncio.new_event_loop()
        dead = put_in_fresh_loop(cache)

        async def body() -> None:
            live = id(asyncio.get_running_loop())
            cache.put(live, "live-client")
            assert cache.get(dead) is None
            assert cache.get(live) == "live-client"
            assert cache.get("model-a") == "client-a"

        with asyncio.Runner(loop_factory=lambda: live_loop) as runner:
            runner.run(body())
        assert "model-a" in cache.cache


class TestClosedLoops:
    def test_closed_loop_swept_at_next_miss(self) -> None:
        """A closed, still referenced loop's entry is evicted at the next miss, then reads stale."""
        evicted: list[Client] = []
        cache: ClientCache[int, Client] = ClientCache(4, name=unique(), on_evict=evicted.append)
        loop = asyncio.new_event_loop()
        client = loop.run_until_complete(_make(cache))
        loop.close()
        assert cache.get(-1) is None  # any miss sweeps
        assert evicted == [client]
        assert cache.get(id(loop)) is None
        assert cache._stats.stale == 1
        assert cache.get(id(loop)) is None  # reported stale once; now a plain miss
        assert cache._stats.stale == 1

    def test_loop_object_as_key(self) -> None:
        """A cache keyed by the loop itself drops the entry once that loop is closed."""
        evicted: list[str] = []
        cache: ClientCache[asyncio.AbstractEventLoop, str] = ClientCache(
            2, name=unique(), on_evict=evicted.append
        )
        loop = asyncio.new_event_loop()
        cache.put(loop, "client")
        assert cache.get(loop) == "client"
        loop.close()
        cache.put(asyncio.new_event_loop(), "other")
        assert evicted == ["client"]
        assert cache.get(loop) is None
        assert cache._stats.stale == 1
        for key in list(cache.cache):
            key.close()

    def test_key_put_outside_a_loop_is_not_bound(self) -> None:
        """An int key put with no loop running is an ordinary key: it never goes stale."""
        cache: ClientCache[int, str] = ClientCache(2, name=unique())
        cache.put(42, "client")
        assert cache._loops == {}
        gc.collect()
        assert cache.get(42) == "client"


async def _make(cache: ClientCache[int, Client]) -> Client:
    return client_for_this_loop(cache)


class TestOnEvictForStale:
    def test_async_on_evict_runs_for_a_stale_entry(self) -> None:
        """An async on_evict closes the stale client on the loop that found it."""
        closed: list[Client] = []

        async def close(client: Client) -> None:
            await asyncio.sleep(0)
            client.closed = True
            closed.append(client)

        cache: ClientCache[int, Client] = ClientCache(2, name=unique(), on_evict=close)
        old_id = put_in_fresh_loop(cache)

        async def body() -> None:
            assert cache.get(old_id) is None
            await until(lambda: bool(closed), what="on_evict closed the stale client")

        asyncio.run(body())
        (client,) = closed
        assert client.closed

    def test_failing_on_evict_is_logged_not_raised(
        self, stdlib_records: pytest.LogCaptureFixture
    ) -> None:
        """An on_evict that raises for a stale entry never reaches get()."""

        def close(client: Client) -> None:
            raise RuntimeError("cannot close on a dead loop")

        cache: ClientCache[int, Client] = ClientCache(2, name=unique(), on_evict=close)
        old_id = put_in_fresh_loop(cache)
        assert cache.get(old_id) is None
        messages = [r.getMessage() for r in stdlib_records.records if r.levelname == "WARNING"]
        assert any("on_evict" in m and "RuntimeError" in m for m in messages)


class TestStaleTelemetry:
    def test_span_metric_and_logs(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """A stale lookup is a get span with result=stale and an eviction event, counted apart."""
        cache: ClientCache[int, Client] = ClientCache(2, name="stale")
        old_id = put_in_fresh_loop(cache)
        telemetry.exporter.clear()
        log_events.clear()
        assert cache.get(old_id) is None
        (span,) = telemetry.spans(names.SPAN_CACHE_GET)
        assert dict(span.attributes or {}) == {
            names.CACHE_NAME: "stale",
            names.CACHE_RESULT: names.RESULT_STALE,
            names.CACHE_SIZE: 0,
        }
        assert [e.name for e in span.events] == [names.EVENT_CACHE_EVICTED]
        lookups = telemetry.by_attributes("thunkscope.cache.lookups")
        stale = frozenset({(names.CACHE_NAME, "stale"), (names.CACHE_RESULT, names.RESULT_STALE)})
        assert lookups[stale].value == 1
        evictions = telemetry.by_attributes("thunkscope.cache.evictions")
        assert evictions[frozenset({(names.CACHE_NAME, "stale")})].value == 1
        assert [(e["event"], e.get("reason"), e.get("result")) for e in log_events] == [
            (names.LOG_CACHE_EVICTED, names.RESULT_STALE, None),
            (names.LOG_CACHE_MISS, None, names.RESULT_STALE),
        ]

    def test_put_that_sweeps_a_stale_entry_says_it_evicted(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """A put that evicts a closed loop's entry: evicted=True and a cache.evicted event."""
        evicted: list[Client] = []
        name = unique()
        cache: ClientCache[Any, Any] = ClientCache(4, name=name, on_evict=evicted.append)
        loop = asyncio.new_event_loop()
        client = loop.run_until_complete(_make(cache))
        loop.close()
        telemetry.exporter.clear()
        log_events.clear()
        cache.put("other", "client-other")
        assert evicted == [client]
        (span,) = telemetry.spans(names.SPAN_CACHE_PUT)
        assert dict(span.attributes or {}) == {
            names.CACHE_NAME: name,
            names.CACHE_SIZE: 1,
            names.CACHE_EVICTED: True,
        }
        assert events_of(span) == [(names.EVENT_CACHE_EVICTED, {names.CACHE_NAME: name})]
        evictions = telemetry.by_attributes("thunkscope.cache.evictions")
        assert evictions[frozenset({(names.CACHE_NAME, name)})].value == 1
        ids = ids_of(span)
        assert [
            (e["event"], e.get("reason"), e.get("trace_id"), e.get("span_id")) for e in log_events
        ] == [
            (names.LOG_CACHE_EVICTED, names.RESULT_STALE, *ids),
            (names.LOG_CACHE_PUT, None, *ids),
        ]

    @pytest.mark.parametrize("result", [names.RESULT_MISS, names.RESULT_HIT])
    def test_lookup_of_another_key_that_sweeps_says_it_evicted(
        self, result: str, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """A lookup of another key that evicts a dead loop's entry has the cache.evicted event."""
        name = unique()
        cache: ClientCache[Any, Any] = ClientCache(4, name=name)
        cache.put("other", "client-other")
        put_in_fresh_loop(cache)  # its loop is collected: the next operation sweeps
        telemetry.exporter.clear()
        log_events.clear()
        key = "other" if result == names.RESULT_HIT else "missing"
        cache.get(key)
        (span,) = telemetry.spans(names.SPAN_CACHE_GET)
        assert dict(span.attributes or {}) == {
            names.CACHE_NAME: name,
            names.CACHE_SIZE: 1,
            names.CACHE_RESULT: result,
        }
        assert events_of(span) == [(names.EVENT_CACHE_EVICTED, {names.CACHE_NAME: name})]
        ids = ids_of(span)
        level_event = names.LOG_CACHE_HIT if result == names.RESULT_HIT else names.LOG_CACHE_MISS
        assert [
            (e["event"], e.get("reason"), e.get("trace_id"), e.get("span_id")) for e in log_events
        ] == [
            (names.LOG_CACHE_EVICTED, names.RESULT_STALE, *ids),
            (level_event, None, *ids),
        ]

    def test_stale_lookup_after_an_earlier_sweep_evicts_nothing_more(
        self, telemetry: Telemetry
    ) -> None:
        """The eviction is an event on the span of the call that evicted, once."""
        name = unique()
        cache: ClientCache[int, Client] = ClientCache(4, name=name)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(_make(cache))
        loop.close()
        telemetry.exporter.clear()
        assert cache.get(-1) is None  # sweeps
        assert cache.get(id(loop)) is None  # reported stale
        sweep, stale = telemetry.spans(names.SPAN_CACHE_GET)
        assert dict(sweep.attributes or {})[names.CACHE_RESULT] == names.RESULT_MISS
        assert events_of(sweep) == [(names.EVENT_CACHE_EVICTED, {names.CACHE_NAME: name})]
        assert dict(stale.attributes or {})[names.CACHE_RESULT] == names.RESULT_STALE
        assert events_of(stale) == []
