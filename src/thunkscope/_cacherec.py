"""One cache operation's record: the part `ClientCache` and the mellea wrappers share.

Both front ends (thunkscope's own `ClientCache`, and the instrumentation's wrappers of
mellea's ``ClientCache``) record an operation the same way, here:

- `LOG_BY_RESULT`: what an operation's result is logged as, (level, event name);
- `count`: the one place that counts hits, misses, stale lookups and evictions (the SDK
  reads the totals when it collects);
- `begin` / `start`: the operation's span (never made current);
- `report` (outcome set at the end: the wrappers) and `finish` (outcome set at the
  start: `ClientCache`, one attribute pass): the span's evictions and end, and the logs,
  each with the span's ids.
"""

from __future__ import annotations

from typing import Any, Final

from opentelemetry.trace import Span, Status, StatusCode

from thunkscope import _events as events
from thunkscope import names
from thunkscope._telemetry import CacheStats, end_span, report_failure, telemetry

LOG_BY_RESULT: Final[dict[str | None, tuple[int, str]]] = {
    names.RESULT_HIT: (events.DEBUG, names.LOG_CACHE_HIT),
    names.RESULT_MISS: (events.INFO, names.LOG_CACHE_MISS),
    names.RESULT_STALE: (events.INFO, names.LOG_CACHE_MISS),
    None: (events.DEBUG, names.LOG_CACHE_PUT),  # a put, or an operation that raised
}
"""An operation's result -> (log level, event name) of its log."""


def count(stats: CacheStats, result: str | None, evictions: int = 0) -> None:
    """Count one operation of a cache of `stats`: its lookup result (None: not a lookup)
    and how many entries it evicted."""
    if result == names.RESULT_HIT:
        stats.hits += 1
    elif result == names.RESULT_MISS:
        stats.misses += 1
    elif result == names.RESULT_STALE:
        stats.stale += 1
    if evictions:
        stats.evictions += evictions


def begin(span_name: str, cache_name: str) -> Span | None:
    """The span of one cache operation, if a cheap span is wanted now; end it with `report`."""
    if not telemetry.cheap_span_wanted():
        return None
    return start(span_name, {names.CACHE_NAME: cache_name})


def start(span_name: str, attributes: dict[str, Any]) -> Span | None:
    """Start a cache span with these attributes (the caller asked whether one is wanted)."""
    try:
        return telemetry.tracer.start_span(span_name, attributes=attributes)
    except Exception as exc:
        report_failure("span start", exc)
        return None


def outcome(size: int, result: str | None, evicted: bool | None) -> dict[str, Any]:
    """The attributes of a cache span that say what the operation did."""
    attributes: dict[str, Any] = {names.CACHE_SIZE: size}
    if result is not None:
        attributes[names.CACHE_RESULT] = result
    if evicted is not None:
        attributes[names.CACHE_EVICTED] = evicted
    return attributes


def report(
    span: Span | None,
    cache_name: str,
    size: int,
    capacity: int,
    *,
    result: str | None,
    evicted: bool | None,
    error: BaseException | None = None,
) -> None:
    """End one cache operation's span (from `begin`) with what it did, and log it.

    The span gets the size after the operation, the result, whether it evicted and the
    type of an exception it raised; the result is logged as `LOG_BY_RESULT` says, and an
    eviction also as ``cache.evicted``. The log events carry the ids of the span.
    """
    if span is not None:
        try:
            attributes = outcome(size, result, evicted)
            if error is not None:
                error_type = type(error).__qualname__
                attributes[names.ERROR_TYPE] = error_type
                span.set_status(Status(StatusCode.ERROR, f"raised {error_type}"))
            span.set_attributes(attributes)
        except Exception as exc:
            report_failure("span attributes", exc)
    level, event = LOG_BY_RESULT[result]
    finish(span, cache_name, size, capacity, event, events.emitter(level), result=result,
           evicted=evicted)  # fmt: skip


def finish(
    span: Span | None,
    cache_name: str,
    size: int,
    capacity: int,
    event: str,
    log: events.Emitter | None,
    *,
    result: str | None,
    evicted: bool | None,
    stale: int = 0,
) -> None:
    """End the span (each eviction, LRU or `stale`, is an event on it) and log the
    operation: `stale` evictions as ``cache.evicted`` with reason ``stale``, `event` with
    `log`, an LRU eviction as ``cache.evicted``; each with the span's ids (the span is
    never made current, so the logger would not find it)."""
    evictions = stale + bool(evicted)
    if span is not None:
        try:
            for _ in range(evictions):
                span.add_event(names.EVENT_CACHE_EVICTED, {names.CACHE_NAME: cache_name})
        except Exception as exc:
            report_failure("span event", exc)
        end_span(span)
    log_eviction = events.emitter(events.INFO) if evictions else None
    if log is None and log_eviction is None:
        return
    ids = {} if span is None else events.span_ids(span)
    if log_eviction is not None:
        for _ in range(stale):
            log_eviction(
                names.LOG_CACHE_EVICTED,
                cache=cache_name,
                reason=names.RESULT_STALE,
                size=size,
                **ids,
            )
    if log is not None:
        fields: dict[str, Any] = {"cache": cache_name, "size": size, "capacity": capacity}
        if result == names.RESULT_STALE:
            fields["result"] = result
        log(event, **fields, **ids)
    if evicted and log_eviction is not None:
        log_eviction(names.LOG_CACHE_EVICTED, cache=cache_name, size=size, **ids)
