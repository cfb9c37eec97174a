"""get_current_event_loop: the running loop or None, never an exception."""

from __future__ import annotations

import asyncio

from opentelemetry.trace import INVALID_SPAN, Span

from thunkscope import _events as events
from thunkscope import names
from thunkscope._telemetry import end_span, report_failure, telemetry


def get_current_event_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop, or None when there is none. Never raises."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    observe_lookup(loop is not None)
    return loop


def observe_lookup(found: bool) -> None:
    """Record one event-loop lookup: the counter, a span if one is wanted, a debug event.

    Shared with the mellea instrumentation, which observes mellea's own lookup. The
    event carries the ids of the span this lookup emitted, when it emitted one.
    """
    stats = telemetry.loop_stats
    if found:
        stats.found += 1
    else:
        stats.missing += 1
    span = _record_span(found) if telemetry.cheap_span_wanted() else INVALID_SPAN
    log = events.emitter(events.DEBUG)
    if log is not None:
        log(names.LOG_EVENT_LOOP_LOOKUP, found=found, **events.span_ids(span))


def _record_span(found: bool) -> Span:
    try:
        span = telemetry.tracer.start_span(
            names.SPAN_GET_CURRENT_EVENT_LOOP, attributes={names.EVENT_LOOP_FOUND: found}
        )
    except Exception as exc:
        report_failure("span start", exc)
        return INVALID_SPAN
    end_span(span)
    return span
