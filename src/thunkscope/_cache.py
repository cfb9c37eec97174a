"""ClientCache: a small thread-safe LRU map holding one client per event loop.

A hit takes no lock: `OrderedDict.move_to_end` and item lookup are each atomic under
the GIL, and a key evicted between the two simply reads as a miss. Writes take a
lock and evict before they insert, so the size never exceeds the capacity, not even
for an instant. Hits only bump an int; the SDK reads the totals when it collects.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from thunkscope import _events as events
from thunkscope import _names as n
from thunkscope._telemetry import report_failure, telemetry

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_CACHE_NAME = "client_cache"


class ClientCache(Generic[K, V]):
    """An LRU map, typically keyed by ``id()`` of an event loop, one client per loop.

    `name` labels this cache's telemetry (keep it low-cardinality). `on_evict`, if
    given, is called with each evicted value (a client to close); it may be a
    coroutine function, and its errors are logged, never raised.
    """

    __slots__ = ("__weakref__", "_lock", "_on_evict", "_stats", "cache", "capacity", "name")

    def __init__(
        self,
        capacity: int,
        *,
        name: str = DEFAULT_CACHE_NAME,
        on_evict: Callable[[V], object] | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(
                f"capacity must be a positive integer (1 or more), "
                f"got {capacity!r} of type {type(capacity).__name__}"
            )
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if on_evict is not None and not callable(on_evict):
            raise TypeError(f"on_evict must be a callable or None, got {type(on_evict).__name__}")
        self.capacity = capacity
        self.name = name
        self.cache: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._on_evict = on_evict
        self._stats = telemetry.stats_for_cache(name)
        self._stats.caches.add(self)

    def get(self, key: K) -> V | None:
        """The value for `key`, or None; a hit makes the entry the most recently used."""
        cache = self.cache
        try:
            cache.move_to_end(key)
            value = cache[key]
        except KeyError:
            self._stats.misses += 1
            self._report(n.SPAN_CACHE_GET, events.INFO, n.LOG_CACHE_MISS, n.RESULT_MISS)
            return None
        self._stats.hits += 1
        if telemetry.cheap_span_wanted() or events.enabled(events.DEBUG):
            self._report(n.SPAN_CACHE_GET, events.DEBUG, n.LOG_CACHE_HIT, n.RESULT_HIT)
        return value

    def put(self, key: K, value: V) -> None:
        """Insert or overwrite `key` as most recent; a new key at capacity evicts the LRU."""
        evicted: tuple[K, V] | None = None
        with self._lock:
            cache = self.cache
            if key in cache:
                cache.move_to_end(key)
            elif len(cache) >= self.capacity:
                evicted = cache.popitem(last=False)
            cache[key] = value
        if evicted is not None:
            self._stats.evictions += 1
        self._report(
            n.SPAN_CACHE_PUT, events.DEBUG, n.LOG_CACHE_PUT, None, evicted=evicted is not None
        )
        if evicted is not None:
            self._evicted(evicted[1])

    def current_size(self) -> int:
        """The number of entries."""
        return len(self.cache)

    def __len__(self) -> int:
        return len(self.cache)

    def __repr__(self) -> str:
        return f"ClientCache(capacity={self.capacity}, name={self.name!r}, size={len(self.cache)})"

    # -- telemetry ---------------------------------------------------------------------------

    def _report(
        self,
        span_name: str,
        level: int,
        event: str,
        result: str | None,
        *,
        evicted: bool | None = None,
    ) -> None:
        size = len(self.cache)
        if telemetry.cheap_span_wanted():
            attributes: dict[str, Any] = {n.CACHE_NAME: self.name, n.CACHE_SIZE: size}
            if result is not None:
                attributes[n.CACHE_RESULT] = result
            if evicted is not None:
                attributes[n.CACHE_EVICTED] = evicted
            try:
                span = telemetry.tracer.start_span(span_name, attributes=attributes)
                if evicted:
                    span.add_event(n.EVENT_CACHE_EVICTED, {n.CACHE_NAME: self.name})
                span.end()
            except Exception as exc:
                report_failure("cache span", exc)
        if events.enabled(level):
            events.emit(level, event, cache=self.name, size=size, capacity=self.capacity)
        if evicted:
            events.emit(events.INFO, n.LOG_CACHE_EVICTED, cache=self.name, size=size)

    def _evicted(self, value: V) -> None:
        """Hand an evicted client to `on_evict`; errors are logged, never raised."""
        if self._on_evict is None:
            return
        try:
            result = self._on_evict(value)
            if inspect.isawaitable(result):
                _run_soon(result, self.name)
        except Exception as exc:
            _evict_hook_failed(self.name, exc)


def _run_soon(awaitable: Any, cache_name: str) -> None:
    """Run an async on_evict on the running loop; without one, run it to completion here."""

    async def guarded() -> None:
        try:
            await awaitable
        except Exception as exc:
            _evict_hook_failed(cache_name, exc)

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(guarded())
        return
    task = loop.create_task(guarded())
    _pending_hooks.add(task)
    task.add_done_callback(_pending_hooks.discard)


_pending_hooks: set[asyncio.Task[None]] = set()


def _evict_hook_failed(cache_name: str, exc: Exception) -> None:
    events.emit(
        events.WARNING, "cache.on_evict_failed", cache=cache_name, error_type=type(exc).__qualname__
    )
    report_failure("on_evict", exc)
