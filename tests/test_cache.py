"""ClientCache: LRU behaviour, capacity validation, thread safety, and a model-based check."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan

from conftest import Counted, Telemetry
from thunkscope import ClientCache, names
from thunkscope import _cacherec as cacherec
from thunkscope import _events as events
from thunkscope._telemetry import telemetry as telemetry_state


class TestLRU:
    def test_get_missing_is_none(self) -> None:
        """A key never put reads as None."""
        cache: ClientCache[int, str] = ClientCache(2)
        assert cache.get(1) is None
        assert cache.current_size() == 0

    def test_eviction_of_least_recently_used(self) -> None:
        """A new key at capacity evicts the least recently used entry."""
        cache: ClientCache[str, int] = ClientCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        cache.put("c", 3)
        assert list(cache.cache.items()) == [("b", 2), ("c", 3)]
        assert cache.get("a") is None

    def test_hit_makes_entry_most_recent(self) -> None:
        """A get hit moves the entry to the most recent end, so the other one is evicted."""
        cache: ClientCache[str, int] = ClientCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        assert cache.get("a") == 1
        assert list(cache.cache) == ["b", "a"]
        cache.put("c", 3)
        assert list(cache.cache.items()) == [("a", 1), ("c", 3)]

    def test_overwrite_updates_value_and_recency_without_eviction(self) -> None:
        """Putting an existing key overwrites it, makes it most recent and evicts nothing."""
        cache: ClientCache[str, int] = ClientCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        cache.put("a", 10)
        assert list(cache.cache.items()) == [("b", 2), ("a", 10)]
        assert cache.current_size() == 2

    def test_cache_attribute_is_an_ordered_dict(self) -> None:
        """`cache` is the underlying OrderedDict, least recently used first."""
        cache: ClientCache[int, int] = ClientCache(3)
        for key in (1, 2, 3):
            cache.put(key, key * 10)
        cache.get(1)
        assert isinstance(cache.cache, OrderedDict)
        assert list(cache.cache) == [2, 3, 1]

    def test_capacity_one(self) -> None:
        """With capacity 1 every new key replaces the previous one."""
        cache: ClientCache[int, str] = ClientCache(1)
        cache.put(1, "a")
        cache.put(2, "b")
        assert list(cache.cache.items()) == [(2, "b")]

    def test_on_evict_receives_the_evicted_client(self) -> None:
        """on_evict is called with the evicted value, once per eviction."""
        closed: list[str] = []
        cache: ClientCache[int, str] = ClientCache(1, on_evict=closed.append)
        cache.put(1, "client-1")
        cache.put(1, "client-1b")
        cache.put(2, "client-2")
        assert closed == ["client-1b"]

    def test_async_on_evict_outside_a_loop_leaves_the_current_loop_alone(self) -> None:
        """An async on_evict run to completion by a sync put keeps the thread's current loop."""
        closed: list[str] = []

        async def close(client: str) -> None:
            await asyncio.sleep(0)
            closed.append(client)

        policy = asyncio.get_event_loop_policy()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            cache: ClientCache[int, str] = ClientCache(1, on_evict=close)
            cache.put(1, "client-1")
            cache.put(2, "client-2")  # no loop running: the hook runs to completion here
            assert closed == ["client-1"]
            assert policy.get_event_loop() is loop
            assert not loop.is_closed()
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class TestCapacityValidation:
    @pytest.mark.parametrize("capacity", [0, -1, 2.5, "2", None, True])
    def test_bad_capacity(self, capacity: Any) -> None:
        """A capacity that is not a positive integer is a ValueError saying what was given."""
        with pytest.raises(ValueError, match="capacity must be a positive integer") as info:
            ClientCache(capacity)
        assert repr(capacity) in str(info.value)


class TestThreads:
    def test_eight_threads_get_and_put(self) -> None:
        """8 threads doing get and put at once lose no entry and never exceed capacity."""
        capacity = 16
        cache: ClientCache[tuple[int, int], str] = ClientCache(capacity, name="threads")
        errors: list[BaseException] = []
        oversize: list[int] = []
        barrier = threading.Barrier(8)

        def worker(thread: int) -> None:
            try:
                barrier.wait()
                for i in range(3000):
                    key = (thread, i % 4)
                    value = f"{thread}-{i % 4}"
                    found = cache.get(key)
                    if found is not None and found != value:
                        errors.append(AssertionError(f"{key} -> {found}"))
                    cache.put(key, value)
                    size = cache.current_size()
                    if size > capacity:
                        oversize.append(size)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert oversize == []
        # 8 threads x 4 keys = 32 distinct keys into 16 slots: the cache is full, and
        # every key it holds maps to the value its writer put.
        assert cache.current_size() == capacity
        for (thread, slot), value in cache.cache.items():
            assert value == f"{thread}-{slot}"

    def test_concurrent_puts_of_distinct_keys_within_capacity_lose_nothing(self) -> None:
        """Puts of distinct keys from 8 threads, within capacity, all land."""
        cache: ClientCache[int, int] = ClientCache(8 * 200)
        barrier = threading.Barrier(8)

        def worker(thread: int) -> None:
            barrier.wait()
            for i in range(200):
                cache.put(thread * 1000 + i, i)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cache.current_size() == 1600
        assert all(cache.get(t * 1000 + i) == i for t in range(8) for i in range(200))

    def test_gauges_collect_while_another_thread_makes_caches(
        self, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Collecting the entry gauges while caches of that name come and go never fails."""
        caplog.set_level(logging.WARNING)
        name = "gauge-churn"
        keep: list[ClientCache[int, int]] = [ClientCache(1, name=name) for _ in range(1000)]
        stop = threading.Event()

        def churn() -> None:
            while not stop.is_set():
                keep.append(ClientCache(1, name=name))
                if len(keep) > 2000:
                    del keep[:1000]

        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # hand the GIL over often, mid-iteration included
        thread = threading.Thread(target=churn)
        thread.start()
        try:
            for _ in range(100):
                limits = telemetry.by_attributes("thunkscope.cache.entry.limit")
                # how many is a race with the other thread; that the callback answered is not
                assert frozenset({(names.CACHE_NAME, name)}) in limits
        finally:
            stop.set()
            thread.join()
            sys.setswitchinterval(switch)
        failed = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
        assert failed == []


def ids_of(span: ReadableSpan) -> tuple[str, str]:
    """(trace_id, span_id) of a finished span, hex as log events carry them."""
    assert span.context is not None
    return (
        trace_api.format_trace_id(span.context.trace_id),
        trace_api.format_span_id(span.context.span_id),
    )


def logged_ids(log_events: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """(event, trace_id, span_id) of every captured log event."""
    return [(e["event"], e.get("trace_id"), e.get("span_id")) for e in log_events]


class TestLogsCarryTheirSpan:
    def test_every_event_carries_the_span_of_its_operation(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """Miss, put, hit and eviction events carry the ids of the span the call emitted."""
        cache: ClientCache[str, int] = ClientCache(1, name="log-ids")
        cache.get("a")
        cache.put("a", 1)
        cache.get("a")
        cache.put("b", 2)  # evicts "a"
        miss, put, hit, evicting_put = (ids_of(s) for s in telemetry.spans())
        assert logged_ids(log_events) == [
            (names.LOG_CACHE_MISS, *miss),
            (names.LOG_CACHE_PUT, *put),
            (names.LOG_CACHE_HIT, *hit),
            (names.LOG_CACHE_PUT, *evicting_put),
            (names.LOG_CACHE_EVICTED, *evicting_put),
        ]

    def test_inside_a_trace_events_carry_the_cache_span_not_its_parent(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """Within an application span, the event names the cache span, a child of it."""
        cache: ClientCache[str, int] = ClientCache(2, name="log-ids-child")
        with telemetry.tracer_provider.get_tracer("app").start_as_current_span("request"):
            cache.get("a")
        get, request = telemetry.spans()
        assert get.parent is not None
        assert request.context is not None
        assert get.parent.span_id == request.context.span_id
        assert logged_ids(log_events) == [(names.LOG_CACHE_MISS, *ids_of(get))]

    def test_report_logs_with_the_span_it_ends(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """`report` (the mellea instrumentation's path) logs with the ids of the span it ends."""
        span = cacherec.begin(names.SPAN_CACHE_PUT, "reported")
        assert span is not None
        cacherec.report(span, "reported", 1, 1, result=None, evicted=True)
        (ended,) = telemetry.spans()
        assert logged_ids(log_events) == [
            (names.LOG_CACHE_PUT, *ids_of(ended)),
            (names.LOG_CACHE_EVICTED, *ids_of(ended)),
        ]


class TestHitDecidesOnce:
    @pytest.mark.parametrize("span_mode", ["all", "in_trace"])
    def test_one_hit_asks_each_question_once(
        self,
        span_mode: str,
        telemetry: Telemetry,
        log_events: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A hit that is traced or logged asks "span wanted?" and "logging?" once each."""
        monkeypatch.setattr(telemetry_state.settings, "span_mode", span_mode)
        cache: ClientCache[str, int] = ClientCache(2, name="decides-once")
        cache.put("a", 1)
        span_wanted = Counted(telemetry_state.cheap_span_wanted)
        structlog_configured = Counted(events._structlog_configured)
        monkeypatch.setattr(telemetry_state, "cheap_span_wanted", span_wanted)
        monkeypatch.setattr(events, "_structlog_configured", structlog_configured)
        log_events.clear()
        assert cache.get("a") == 1
        assert (span_wanted.calls, structlog_configured.calls) == (1, 1)
        assert [e["event"] for e in log_events] == [names.LOG_CACHE_HIT]
        expected_spans = 2 if span_mode == "all" else 0  # the put's and the hit's
        assert len(telemetry.spans()) == expected_spans


class ReferenceLRU:
    """The simplest correct LRU, to compare ClientCache against."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.order: list[int] = []
        self.values: dict[int, int] = {}

    def get(self, key: int) -> int | None:
        if key not in self.values:
            return None
        self.order.remove(key)
        self.order.append(key)
        return self.values[key]

    def put(self, key: int, value: int) -> None:
        if key in self.values:
            self.order.remove(key)
        elif len(self.order) >= self.capacity:
            del self.values[self.order.pop(0)]
        self.order.append(key)
        self.values[key] = value


class CacheMachine(RuleBasedStateMachine):
    """Random get/put sequences: ClientCache and the reference LRU never disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: ClientCache[int, int] | None = None
        self.model: ReferenceLRU | None = None

    @precondition(lambda self: self.cache is None)
    @rule(capacity=st.integers(min_value=1, max_value=5))
    def create(self, capacity: int) -> None:
        self.cache = ClientCache(capacity, name="model-based")
        self.model = ReferenceLRU(capacity)

    @precondition(lambda self: self.cache is not None)
    @rule(key=st.integers(0, 8), value=st.integers())
    def put(self, key: int, value: int) -> None:
        assert self.cache is not None
        assert self.model is not None
        self.cache.put(key, value)
        self.model.put(key, value)

    @precondition(lambda self: self.cache is not None)
    @rule(key=st.integers(0, 8))
    def get(self, key: int) -> None:
        assert self.cache is not None
        assert self.model is not None
        assert self.cache.get(key) == self.model.get(key)

    @invariant()
    def same_contents_in_same_order(self) -> None:
        if self.cache is None or self.model is None:
            return
        assert list(self.cache.cache) == self.model.order
        assert dict(self.cache.cache) == self.model.values
        assert self.cache.current_size() == len(self.model.order) <= self.model.capacity


TestAgainstReferenceLRU = CacheMachine.TestCase
TestAgainstReferenceLRU.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
