"""ClientCache: a small thread-safe LRU map holding one client per event loop.

A hit takes no lock and makes no call beyond the two dict operations: an
``OrderedDict.move_to_end`` and an item lookup (each atomic under the GIL; a key
evicted between the two simply reads as a miss), an int increment, and a few
attribute reads that tell whether anyone is tracing or logging at debug. Writes take
a lock and evict before they insert, so the size never exceeds the capacity. Hits
only bump an int; the SDK reads the totals when it collects.

Dead event loops. Keys are usually ``id()`` of an event loop, and an id is reused
once its loop is gone: two ``asyncio.run()`` calls in a row often get the same one,
and a client bound to the first loop would be handed to the second. So when `put`
runs on a loop and the key is that loop or its id, the cache keeps a weak reference
to the loop. When the loop is collected (always before its id can be reused) the
reference's callback notes the key; the next operation on the cache evicts the entry
as *stale*: a lookup of that key is a miss with ``thunkscope.cache.result=stale``,
the value goes to `on_evict`, and the eviction is counted, logged and an event
``cache.evicted`` on the span of the operation that evicted it. A loop that is
closed but still referenced cannot have its id reused; its entry is swept the same
way at the next miss or put.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Final, Generic, TypeVar

from thunkscope import _cacherec as cacherec
from thunkscope import _events as events
from thunkscope import _probes as probes
from thunkscope import names
from thunkscope._settings import count, optional_callable, text
from thunkscope._telemetry import CacheStats, report_failure, telemetry

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_CACHE_NAME: Final = "client_cache"


# What the hit path reads to learn that nobody is tracing or logging at debug: module
# attributes and two dicts, no calls (`_probes` says what each is and why).
_trace_state = probes.TRACE_STATE
_metrics_state = probes.METRICS_STATE
_levels: dict[int, bool] = probes.LEVEL_CACHE if probes.LEVEL_CACHE is not None else {}
_structlog_state: dict[str, Any] = probes.STRUCTLOG_STATE


class ClientCache(Generic[K, V]):
    """An LRU map, typically keyed by ``id()`` of an event loop, one client per loop.

    `name` labels this cache's telemetry (keep it low-cardinality: past the name cap
    metrics fold it into ``other``). `on_evict`, if given, is called with each value
    that leaves the cache for good: evicted as least recently used, or found stale
    behind a dead event loop (see the module docs). It may be a coroutine function
    (run on the running loop, or to completion when there is none); its errors are
    logged, never raised. Overwriting a key with `put` does not call it.
    """

    __slots__ = (
        "__weakref__",
        "_dead",
        "_lock",
        "_loops",
        "_on_evict",
        "_stale_keys",
        "_stats",
        "cache",
        "capacity",
        "name",
    )

    def __init__(
        self,
        capacity: int,
        *,
        name: str = DEFAULT_CACHE_NAME,
        on_evict: Callable[[V], object] | None = None,
    ) -> None:
        count("capacity", capacity, wrong_type=ValueError)
        text("name", name, blank_ok=True)
        optional_callable("on_evict", on_evict)
        self.capacity = capacity
        self.name = name
        self.cache: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._on_evict = on_evict
        # key -> weak reference to the loop the entry belongs to (loop-keyed entries only)
        self._loops: dict[K, weakref.ref[asyncio.AbstractEventLoop]] = {}
        # keys whose loop was collected, appended by weakref callbacks (GC context: no lock)
        self._dead: list[K] = []
        # keys recently evicted as stale, so a later lookup of one reports `stale`
        self._stale_keys: OrderedDict[K, None] = OrderedDict()
        self._stats: CacheStats = telemetry.stats_for_cache(name)
        self._stats.caches.add(self)

    def get(self, key: K) -> V | None:
        """The value for `key`, or None; a hit makes the entry the most recently used."""
        cache = self.cache
        try:
            cache.move_to_end(key)
            value = cache[key]
        except KeyError:
            self._miss(key)
            return None
        except TypeError:
            raise TypeError(f"key must be hashable, got {type(key).__name__}") from None
        if self._dead:  # a loop behind some entry was collected: this may be its stale entry
            return self._lookup_after_sweep(key, value, names.RESULT_HIT)
        try:
            if (
                not telemetry.own_providers
                and _trace_state._TRACER_PROVIDER is None
                and _metrics_state._METER_PROVIDER is None
                and not _levels[10]  # logging.DEBUG, as a constant: no global lookup
                and (not _structlog_state or not _structlog_state["is_configured"])
            ):
                return value  # nothing observes this hit: not even a counter to bump
        except KeyError:  # logging emptied its level cache, or structlog's state is new to us:
            pass  # ask them below
        cacherec.count(self._stats, names.RESULT_HIT)
        span_wanted = telemetry.cheap_span_wanted()
        log = events.emitter(events.DEBUG)
        if span_wanted or log is not None:
            self._report(
                names.SPAN_CACHE_GET, names.LOG_CACHE_HIT, names.RESULT_HIT, span_wanted, log
            )
        return value

    def put(self, key: K, value: V) -> None:
        """Insert or overwrite `key` as most recent; a new key at capacity evicts the LRU."""
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"key must be hashable, got {type(key).__name__}") from None
        loop = probes.running_loop()
        evicted: tuple[K, V] | None = None
        with self._lock:
            stale = self._reap_locked()
            cache = self.cache
            try:
                cache.move_to_end(key)
            except KeyError:
                if len(cache) >= self.capacity:
                    evicted = cache.popitem(last=False)
                    self._loops.pop(evicted[0], None)
            cache[key] = value
            self._stale_keys.pop(key, None)
            self._bind_locked(key, loop)
        cacherec.count(self._stats, None, len(stale) + (evicted is not None))
        level, event = cacherec.LOG_BY_RESULT[None]
        self._report(
            names.SPAN_CACHE_PUT,
            event,
            None,
            telemetry.cheap_span_wanted(),
            events.emitter(level),
            evicted=evicted is not None,
            stale=len(stale),
        )
        self._hand_over_stale(stale)
        if evicted is not None:
            self._hand_over(evicted[1])

    def current_size(self) -> int:
        """The number of entries."""
        return len(self.cache)

    def __len__(self) -> int:
        return len(self.cache)

    def __repr__(self) -> str:
        return f"ClientCache(capacity={self.capacity}, name={self.name!r}, size={len(self.cache)})"

    # -- misses and dead loops -----------------------------------------------------------------

    def _miss(self, key: K) -> None:
        """A lookup that found nothing: sweep dead loops, then report `miss` or `stale`."""
        try:
            hash(key)  # an empty OrderedDict answers KeyError without hashing
        except TypeError:
            raise TypeError(f"key must be hashable, got {type(key).__name__}") from None
        self._lookup_after_sweep(key, None, names.RESULT_MISS)

    def _lookup_after_sweep(self, key: K, value: V | None, result: str) -> V | None:
        """Sweep dead loops, then count and report a lookup of `key` as `result`.

        A key just evicted as stale is reported ``stale`` instead, and reads as None.
        """
        with self._lock:
            stale = self._reap_locked()
            was_stale = self._stale_keys.pop(key, _MISSING) is not _MISSING
        if was_stale:
            result, value = names.RESULT_STALE, None
        cacherec.count(self._stats, result, len(stale))
        level, event = cacherec.LOG_BY_RESULT[result]
        self._report(
            names.SPAN_CACHE_GET,
            event,
            result,
            telemetry.cheap_span_wanted(),
            events.emitter(level),
            stale=len(stale),
        )
        self._hand_over_stale(stale)
        return value

    def _bind_locked(self, key: K, loop: asyncio.AbstractEventLoop | None) -> None:
        """Remember the loop behind `key` if the key is that loop or its id."""
        if isinstance(key, asyncio.AbstractEventLoop):
            loop = key
        elif loop is None or type(key) is not int or key != id(loop):
            self._loops.pop(key, None)
            return
        known = self._loops.get(key)
        if known is not None and known() is loop:
            return
        self._loops[key] = weakref.ref(loop, _loop_collected(self, key))

    def _reap_locked(self) -> list[tuple[K, V]]:
        """Evict every entry whose loop was collected or closed; return them. Holds the lock."""
        loops = self._loops
        if not loops and not self._dead:
            return []
        self._dead.clear()  # the sweep below finds them: their weak reference is dead now
        stale: list[tuple[K, V]] = []
        for key, ref in list(loops.items()):
            loop = ref()
            if loop is not None and not loop.is_closed():
                continue
            del loops[key]
            value = self.cache.pop(key, _MISSING)
            if value is _MISSING:
                continue
            stale.append((key, value))
            self._stale_keys[key] = None
            if len(self._stale_keys) > self.capacity:
                self._stale_keys.popitem(last=False)
        return stale

    def _hand_over_stale(self, stale: list[tuple[K, V]]) -> None:
        """Hand the entries evicted as stale to `on_evict` (outside the lock)."""
        for _key, value in stale:
            self._hand_over(value)

    # -- telemetry ---------------------------------------------------------------------------

    def _report(
        self,
        span_name: str,
        event: str,
        result: str | None,
        span_wanted: bool,
        log: events.Emitter | None,
        *,
        evicted: bool | None = None,
        stale: int = 0,
    ) -> None:
        """Emit the span of an operation just done (if `span_wanted`) and log `event` with
        `log` (if anyone listens): the caller asked both questions, once.

        `evicted`: whether a put evicted the least recently used entry; `stale`: how many
        entries behind dead loops the call evicted. A put's span says ``evicted`` if it
        evicted either way.
        """
        size = len(self.cache)
        span = None
        if span_wanted:
            any_evicted = evicted if evicted is None else evicted or stale > 0
            attributes = {
                names.CACHE_NAME: self.name,
                **cacherec.outcome(size, result, any_evicted),
            }
            span = cacherec.start(span_name, attributes)
        cacherec.finish(
            span,
            self.name,
            size,
            self.capacity,
            event,
            log,
            result=result,
            evicted=evicted,
            stale=stale,
        )

    def _hand_over(self, value: V) -> None:
        """Hand a value that left the cache to `on_evict`; errors are logged, never raised."""
        if self._on_evict is None:
            return
        try:
            result = self._on_evict(value)
            if inspect.isawaitable(result):
                _run_soon(result, self.name)
        except Exception as exc:
            _evict_hook_failed(self.name, exc)


class _Missing:
    pass


_MISSING: Final[Any] = _Missing()


def _loop_collected(cache: ClientCache[Any, Any], key: Any) -> Callable[[object], None]:
    """The weakref callback for `key`'s loop: note the key for the next cache operation.

    It runs inside garbage collection, on any thread, possibly in the middle of the
    cache's own code, so it only appends to a list: no lock, no dict mutation.
    """
    cache_ref = weakref.ref(cache)

    def collected(_: object) -> None:
        owner = cache_ref()
        if owner is not None:
            owner._dead.append(key)

    return collected


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
        # A private loop, cleaned up as asyncio.run() does, but never made the thread's
        # current loop: asyncio.run() would end by unsetting a loop the application set.
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            runner.run(guarded())
        return
    task = loop.create_task(guarded())
    _pending_hooks.add(task)
    task.add_done_callback(_pending_hooks.discard)


_pending_hooks: set[asyncio.Task[None]] = set()


def _evict_hook_failed(cache_name: str, exc: Exception) -> None:
    """An on_evict that raised: a debug event each time, one warning per exception type."""
    events.emit(
        events.DEBUG,
        names.LOG_CACHE_ON_EVICT_FAILED,
        cache=cache_name,
        error_type=type(exc).__qualname__,
    )
    report_failure("on_evict", exc, detail=f"cache {cache_name!r}")
