"""The OTel side of every helper: providers, lazy instruments, settings, and failure isolation.

Helpers ask this module three cheap questions before doing any telemetry work
("is anyone tracing?", "should this cheap helper emit a span?", "which stream or
cache name may label a metric?") so that, with the API's no-op defaults, a call costs
next to nothing. Everything that touches the OTel SDK is guarded:
telemetry that throws is reported once (`report_failure`, `end_span`) and never
reaches the application.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.metrics import CallbackOptions, Observation

from thunkscope import names
from thunkscope._probes import TRACE_STATE as _trace_state
from thunkscope._settings import DEFAULT_CONTENT_LIMIT as DEFAULT_CONTENT_LIMIT  # re-exported
from thunkscope._settings import DEFAULT_NAME_LIMIT as DEFAULT_NAME_LIMIT  # re-exported
from thunkscope._settings import Settings as Settings  # re-exported
from thunkscope._settings import SpanMode as SpanMode  # re-exported
from thunkscope._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

_stdlib_log = logging.getLogger(names.LOGGER_NAME)


# --- opt-in content capture ------------------------------------------------------------------

EXCEPTION_MESSAGE = names.EXCEPTION_MESSAGE
LOG_ERROR_MESSAGE = names.LOG_ERROR_MESSAGE

TRUNCATED_MARK = "…[truncated]"


def captured(value: object) -> str | None:
    """The text of `value` for telemetry if content capture is on, else None.

    Off by default: exception messages often quote a prompt. When on, `str(value)` is
    cut to `content_limit` characters and marked with ``…[truncated]``. What thunkscope
    captures is exactly this: the message of an exception a stream forwarded or a
    gather raised, on the span event (``exception.message``) and the log event
    (``error_message``). Stream items, thunk values and cache keys and values are never
    captured, whatever the setting.
    """
    settings = telemetry.settings
    if not settings.capture_content:
        return None
    try:
        text = str(value)
    except Exception:
        return None
    limit = settings.content_limit
    return text if len(text) <= limit else text[:limit] + TRUNCATED_MARK


# --- failure isolation ----------------------------------------------------------------------

_reported: set[tuple[str, type[BaseException]]] = set()
_reported_lock = threading.Lock()


def report_failure(where: str, exc: BaseException, *, detail: str | None = None) -> None:
    """Log a telemetry failure once per place and exception type; never raise.

    The warning names the place and the exception type, never the exception message
    (which may quote content). `detail` (not part of the once-key) adds context.
    """
    key = (where, type(exc))
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    message = (
        "thunkscope telemetry failed in %s%s (%s); the helper's result is unaffected, "
        "further failures of this kind are not logged"
    )
    args = (where, f" ({detail})" if detail else "", type(exc).__qualname__)
    try:
        _stdlib_log.warning(
            message,
            *args,
            extra={"thunkscope_failure": where, "error_type": type(exc).__qualname__},
        )
    except Exception:  # a logging handler that throws: the last resort is stderr
        with contextlib.suppress(Exception):
            sys.stderr.write((message % args) + " (logging failed too)\n")


def end_span(span: Span) -> None:
    """End `span`; a span processor that throws is reported once, never raised."""
    try:
        span.end()
    except Exception as exc:
        report_failure("span end", exc)


# --- bounded metric labels ------------------------------------------------------------------


class NameCap:
    """Admit at most `limit` distinct names as metric labels; fold the rest into `other`.

    An instrument labelled by name alone thus has at most ``limit + 1`` series; one
    with further labels (outcome, error type, cache result) at most ``limit + 1``
    times their combinations. The first name folded logs one warning. Spans and log
    events keep the real name: only metrics are capped.
    """

    OTHER = "other"

    def __init__(self, kind: str, limit: int) -> None:
        self._kind = kind
        self.limit = limit
        self._seen: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()

    def fold(self, name: str) -> str:
        """The label to use for `name`: itself while under the cap, else `other`."""
        if name in self._seen:
            return name
        with self._lock:
            if name in self._seen:
                return name
            if len(self._seen) < self.limit:
                self._seen.add(name)
                return name
            if not self._warned:
                self._warned = True
                _stdlib_log.warning(
                    "more than %d distinct %s names; further names are reported as %r in "
                    "metrics (spans and logs keep the real name)",
                    self.limit,
                    self._kind,
                    self.OTHER,
                )
        return self.OTHER

    def names(self) -> list[str]:
        """The names admitted so far."""
        with self._lock:
            return sorted(self._seen)

    def labels(self) -> list[str]:
        """Every label used so far: the admitted names, and `other` once a name folded."""
        labels = self.names()
        if self._warned:
            labels.append(self.OTHER)
        return labels


# --- aggregated counters for the cheap helpers ---------------------------------------------------


@dataclass(slots=True)
class CacheStats:
    """Cumulative counts for every ClientCache of one name, read by observable instruments.

    A cache hit only increments an int here; the SDK sees the totals at collection time.
    """

    hits: int = 0
    misses: int = 0
    stale: int = 0
    evictions: int = 0
    caches: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)


def live_caches(stats: CacheStats) -> list[Any]:
    """The caches of `stats` still alive, read off a copy of the set's weak references
    taken in one step: iterating the WeakSet itself fails ("Set changed size during
    iteration") when another thread makes a cache of that name meanwhile."""
    refs: set[weakref.ref[Any]] = stats.caches.data  # type: ignore[attr-defined]
    return [cache for ref in refs.copy() if (cache := ref()) is not None]


@dataclass(slots=True)
class LoopStats:
    """Cumulative get_current_event_loop counts, by whether a loop was running."""

    found: int = 0
    missing: int = 0


class Telemetry:
    """The tracer, the instruments and the settings every helper shares.

    Providers are the global ones unless `use()` names others (the instrumentor's
    ``tracer_provider=``/``meter_provider=`` arguments, and tests). The tracer and the
    instruments are created on first use through the API's proxies, so providers the
    application sets after importing thunkscope are picked up.
    """

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        self.stream_names = NameCap("stream", self.settings.name_limit)
        self.cache_names = NameCap("cache", self.settings.name_limit)
        self.cache_stats: dict[str, CacheStats] = {}
        self.loop_stats = LoopStats()
        self._tracer_provider: TracerProvider | None = None
        self._meter_provider: MeterProvider | None = None
        self.own_providers = False
        """Whether `use()` named providers: hot paths then skip their global checks."""
        self._tracer: Tracer | None = None
        self._instruments: Instruments | None = None
        self._lock = threading.Lock()
        self.clock: Callable[[], float] = time.monotonic
        """The clock of stream and gather timings and of the stall and deadline checks:
        time.monotonic, or a test's virtual clock (`thunkscope.testing.virtual_time`). Hot
        loops copy it into a local once per stream."""
        self.active_streams: Callable[[], dict[str, int]] = dict
        """Running streams per name label, read by the stream.active gauge (`use_registry`)."""
        self.oldest_idle: Callable[[], dict[str, float]] = dict
        """Longest idle seconds per name label, read by the stream.oldest_idle gauge."""

    def use(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        """Send telemetry to these providers instead of the global ones (None: global)."""
        with self._lock:
            self._tracer_provider = tracer_provider
            self._meter_provider = meter_provider
            self.own_providers = tracer_provider is not None or meter_provider is not None
            self._tracer = None
            self._instruments = None

    def use_registry(
        self,
        active_by_name: Callable[[], dict[str, int]],
        oldest_idle_by_name: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """Read the stream.active and stream.oldest_idle gauges from these sources."""
        self.active_streams = active_by_name
        if oldest_idle_by_name is not None:
            self.oldest_idle = oldest_idle_by_name

    # -- tracing ---------------------------------------------------------------------------

    def tracing(self) -> bool:
        """Whether any tracer provider is set: a module attribute read, not an env lookup."""
        return (
            self._tracer_provider is not None
            or getattr(_trace_state, "_TRACER_PROVIDER", True) is not None
        )

    def cheap_span_wanted(self) -> bool:
        """Whether the cheap helpers (loop lookup, cache) should emit a span now."""
        if not self.tracing():
            return False
        if self.settings.span_mode == "all":
            return True
        return trace_api.get_current_span().get_span_context().is_valid

    @property
    def tracer(self) -> Tracer:
        """The thunkscope tracer of the chosen provider."""
        tracer = self._tracer
        if tracer is None:
            tracer = self._tracer = trace_api.get_tracer(
                names.SCOPE, __version__, tracer_provider=self._tracer_provider
            )
        return tracer

    # -- metrics ---------------------------------------------------------------------------

    @property
    def instruments(self) -> Instruments:
        """The synchronous instruments, creating them (and the observable ones) once."""
        instruments = self._instruments
        if instruments is None:
            with self._lock:
                instruments = self._instruments
                if instruments is None:
                    meter = metrics_api.get_meter(
                        names.SCOPE, __version__, meter_provider=self._meter_provider
                    )
                    instruments = self._instruments = Instruments(meter, self)
        return instruments

    def stats_for_cache(self, name: str) -> CacheStats:
        """The shared counters of caches called `name` (folded past the name cap)."""
        label = self.cache_names.fold(name)
        stats = self.cache_stats.get(label)
        if stats is None:
            with self._lock:
                stats = self.cache_stats.setdefault(label, CacheStats())
        # Make sure the observable instruments exist so the SDK reads these counters.
        self.instruments  # noqa: B018
        return stats


class Instruments:
    """Every metric of the contract, created on one meter.

    Per-stream and per-gather figures are synchronous histograms recorded once per call.
    Counters the cheap helpers bump on every call are observable: the helper adds 1 to
    an int and the SDK reads the totals when it collects.
    """

    def __init__(self, meter: Meter, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

        def histogram(metric: names.Metric, buckets: Iterable[float]) -> Histogram:
            return meter.create_histogram(
                metric.name,
                unit=metric.unit,
                description=metric.description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )

        self.stream_duration = histogram(names.STREAM_DURATION, names.SECONDS_BUCKETS)
        self.stream_ttfi = histogram(names.STREAM_TTFI, names.SECONDS_BUCKETS)
        self.stream_max_gap = histogram(names.STREAM_MAX_GAP, names.SECONDS_BUCKETS)
        self.stream_items = histogram(names.STREAM_ITEM_COUNT, names.COUNT_BUCKETS)
        self.queue_put_wait = histogram(names.QUEUE_PUT_WAIT, names.SECONDS_BUCKETS)
        self.gather_duration = histogram(names.GATHER_DURATION, names.SECONDS_BUCKETS)
        self.gather_size = histogram(names.GATHER_SIZE_METRIC, names.COUNT_BUCKETS)
        self.stream_stalls = meter.create_counter(
            names.STREAM_STALLS.name,
            unit=names.STREAM_STALLS.unit,
            description=names.STREAM_STALLS.description,
        )
        observable = (
            (
                meter.create_observable_up_down_counter,
                names.STREAM_ACTIVE,
                self._observe_active_streams,
            ),
            (meter.create_observable_gauge, names.STREAM_OLDEST_IDLE, self._observe_oldest_idle),
            (meter.create_observable_counter, names.CACHE_LOOKUPS, self._observe_cache_lookups),
            (meter.create_observable_counter, names.CACHE_EVICTIONS, self._observe_cache_evictions),
            (meter.create_observable_gauge, names.CACHE_ENTRY_COUNT, self._observe_cache_entries),
            (meter.create_observable_gauge, names.CACHE_ENTRY_LIMIT, self._observe_cache_limits),
            (meter.create_observable_counter, names.EVENT_LOOP_LOOKUPS, self._observe_loop_lookups),
        )
        for create, metric, callback in observable:
            create(
                metric.name, callbacks=[callback], unit=metric.unit, description=metric.description
            )

    def _observe_active_streams(self, _: CallbackOptions) -> Iterator[Observation]:
        active = self._telemetry.active_streams()
        for name in self._telemetry.stream_names.labels():
            yield Observation(active.get(name, 0), {names.STREAM_NAME: name})

    def _observe_oldest_idle(self, _: CallbackOptions) -> Iterator[Observation]:
        # Read on the exporter's or scrape thread: it keeps growing while a blocked event
        # loop keeps the streams themselves from running. Names seen so far report 0.
        idle = self._telemetry.oldest_idle()
        for name in self._telemetry.stream_names.labels():
            yield Observation(idle.get(name, 0.0), {names.STREAM_NAME: name})

    def _observe_cache_lookups(self, _: CallbackOptions) -> Iterator[Observation]:
        for name, stats in list(self._telemetry.cache_stats.items()):
            yield Observation(
                stats.hits, {names.CACHE_NAME: name, names.CACHE_RESULT: names.RESULT_HIT}
            )
            yield Observation(
                stats.misses, {names.CACHE_NAME: name, names.CACHE_RESULT: names.RESULT_MISS}
            )
            if stats.stale:
                yield Observation(
                    stats.stale, {names.CACHE_NAME: name, names.CACHE_RESULT: names.RESULT_STALE}
                )

    def _observe_cache_evictions(self, _: CallbackOptions) -> Iterator[Observation]:
        for name, stats in list(self._telemetry.cache_stats.items()):
            yield Observation(stats.evictions, {names.CACHE_NAME: name})

    def _observe_cache_entries(self, _: CallbackOptions) -> Iterator[Observation]:
        for name, stats in list(self._telemetry.cache_stats.items()):
            total = sum(cache.current_size() for cache in live_caches(stats))
            yield Observation(total, {names.CACHE_NAME: name})

    def _observe_cache_limits(self, _: CallbackOptions) -> Iterator[Observation]:
        for name, stats in list(self._telemetry.cache_stats.items()):
            total = sum(cache.capacity for cache in live_caches(stats))
            yield Observation(total, {names.CACHE_NAME: name})

    def _observe_loop_lookups(self, _: CallbackOptions) -> Iterator[Observation]:
        stats = self._telemetry.loop_stats
        yield Observation(stats.found, {names.EVENT_LOOP_FOUND: True})
        yield Observation(stats.missing, {names.EVENT_LOOP_FOUND: False})


telemetry = Telemetry()
"""The process-wide telemetry state every helper reads."""


def use_providers(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> None:
    """Point thunkscope at these providers instead of the global ones (None: global)."""
    telemetry.use(tracer_provider=tracer_provider, meter_provider=meter_provider)
