"""One stream's record, from open to close: the part both stream front ends share.

`send_to_queue` (`_stream`) and the mellea wrapper (`instrumentation/_stream`) each run
their own loop over the backend's items, but a stream starts and ends the same way in
both, here:

- `open_stream`: the PRODUCER span, the `StreamWatch`, the in-flight registration, the
  span made current (the context token) and the ``stream.started`` log;
- `add_sentinel`, `add_forwarded_error`, `add_timeout`: the span events of how the
  stream ended, added by the loop at the moment it happens;
- `close_stream`: the watch disarmed, the stream unregistered, the span's attributes and
  status, the metrics, the final log, and the token detached.

The per-item stamp is not here: it stays inline in each loop, for speed (see the stamp
protocol in `StreamWatch`'s docstring). Telemetry that throws anywhere here is reported
(`report_failure`) and the stream goes on: the queue protocol never depends on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import Token
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from thunkscope import _events as events
from thunkscope import names
from thunkscope._inflight import note_producer, register, unregister
from thunkscope._telemetry import captured, end_span, report_failure, telemetry
from thunkscope._watch import StreamWatch, new_stream_id


class StreamRun:
    """An open stream: its watch (the loop's per-item state) and the context token to
    detach at its close."""

    __slots__ = ("token", "watch")

    def __init__(self, watch: StreamWatch, token: Token[Context] | None) -> None:
        self.watch = watch
        self.token = token


def open_stream(
    name: str,
    queue: object | None,
    *,
    timeout: float | None,
    stall_after: float | None,
    attributes: Mapping[str, Any] | None = None,
    log_fields: Mapping[str, Any] | None = None,
) -> StreamRun:
    """Start a stream: span, watch, registration, current span, started log.

    `timeout` is the deadline the watch enforces (None: the front end enforces its own);
    `queue`, if given, is remembered so a consumer's span can link to this producer.
    `attributes` go on the span beside the stream's name and id, `log_fields` on every
    log of the start.
    """
    start = telemetry.clock()
    stream_id = new_stream_id()
    span = _start_span(name, stream_id, attributes)
    watch = StreamWatch(
        stream_id=stream_id,
        name=name,
        span=span,
        timeout=timeout,
        stall_after=stall_after,
        now=start,
    )
    register(watch)
    token: Token[Context] | None = None
    try:
        if span.is_recording():
            token = otel_context.attach(trace_api.set_span_in_context(span))
        if queue is not None:
            note_producer(queue, watch)
        telemetry.instruments  # noqa: B018 - the active-streams gauge must exist while this runs
    except Exception as exc:
        report_failure("stream start", exc)
    if events.enabled(events.DEBUG):
        events.emit(
            events.DEBUG,
            names.LOG_STREAM_STARTED,
            stream_id=stream_id,
            stream=name,
            **(log_fields or {}),
        )
    return StreamRun(watch, token)


def _start_span(name: str, stream_id: str, attributes: Mapping[str, Any] | None) -> Span:
    """The stream's PRODUCER span, its attributes set at start (one attribute pass)."""
    if not telemetry.tracing():
        return INVALID_SPAN
    try:
        return telemetry.tracer.start_span(
            names.SPAN_SEND_TO_QUEUE,
            kind=SpanKind.PRODUCER,
            attributes={names.STREAM_NAME: name, names.STREAM_ID: stream_id, **(attributes or {})},
        )
    except Exception as exc:
        report_failure("span start", exc)
        return INVALID_SPAN


# --- how the stream ended: span events, added by the loop when it happens -----------------------


def add_sentinel(watch: StreamWatch) -> None:
    """The ``None`` terminator reached the queue after `watch.items` items."""
    if watch.span.is_recording():
        _add_event(watch.span, names.EVENT_SENTINEL, {names.STREAM_ITEMS: watch.items})


def add_forwarded_error(watch: StreamWatch, exc: BaseException) -> None:
    """The backend's exception reached the queue in place of the terminator."""
    if watch.span.is_recording():
        _add_event(watch.span, names.EVENT_ERROR_FORWARDED, error_attributes(exc))


def add_timeout(watch: StreamWatch, seconds: float) -> None:
    """The chunk_timeout deadline of `seconds` expired."""
    if watch.span.is_recording():
        _add_event(watch.span, names.EVENT_TIMEOUT, {names.STREAM_CHUNK_TIMEOUT: seconds})


def _add_event(span: Span, name: str, attributes: dict[str, Any]) -> None:
    """Add an event to a recording span; a span that throws is reported, never raised."""
    try:
        span.add_event(name, attributes)
    except Exception as exc:
        report_failure("span event", exc)


def error_attributes(exc: BaseException) -> dict[str, str]:
    """The forwarded error's type; its message too, only when content capture is on."""
    attributes = {names.ERROR_TYPE: type(exc).__qualname__}
    message = captured(exc)
    if message is not None:
        attributes[names.EXCEPTION_MESSAGE] = message
    return attributes


# --- close ----------------------------------------------------------------------------------------


def close_stream(
    run: StreamRun,
    mode: str | None,
    outcome: str,
    error: BaseException | None,
    *,
    timeout: float | None = None,
) -> None:
    """End a stream: disarm, unregister, then span, metrics and log once, then detach.

    `timeout` is the chunk_timeout a timed-out stream's status names when the watch
    did not enforce it itself. The record is made while the stream's span is still
    current, so the final log record is correlated with it by any OTel log bridge.
    """
    watch = run.watch
    watch.disarm()
    unregister(watch)
    end = telemetry.clock()
    duration = end - watch.started
    ttfi = None if watch.first_item_at is None else watch.first_item_at - watch.started
    error_type = None if error is None else type(error).__qualname__
    # The error that makes this stream a failure (a cancellation is not one).
    failure = error_type if outcome != names.OUTCOME_CANCELLED else None
    _end_span(watch, mode, outcome, ttfi, failure, watch.timeout if timeout is None else timeout)
    _record_metrics(watch, mode, outcome, duration, ttfi, failure)
    _log_end(watch, outcome, duration, ttfi, error, error_type)
    if run.token is not None:
        otel_context.detach(run.token)


def _end_span(
    watch: StreamWatch,
    mode: str | None,
    outcome: str,
    ttfi: float | None,
    failure: str | None,
    timeout: float | None,
) -> None:
    span = watch.span
    try:
        if span.is_recording():
            attributes: dict[str, Any] = {
                names.STREAM_ITEMS: watch.items,
                names.STREAM_OUTCOME: outcome,
                names.STREAM_MAX_ITEM_GAP: watch.max_gap,
                names.STREAM_PUT_WAIT: watch.put_wait,
                names.STREAM_STALL_COUNT: watch.stalls,
            }
            if mode is not None:
                attributes[names.STREAM_MODE] = mode
            if ttfi is not None:
                attributes[names.STREAM_TIME_TO_FIRST_ITEM] = ttfi
            if failure is not None:
                attributes[names.ERROR_TYPE] = failure
                span.set_status(Status(StatusCode.ERROR, _status(outcome, timeout, failure)))
            span.set_attributes(attributes)
    except Exception as exc:
        report_failure("span attributes", exc)
    finally:
        end_span(span)


def _status(outcome: str, timeout: float | None, error_type: str) -> str:
    if outcome == names.OUTCOME_TIMEOUT:
        return f"no item from the backend within chunk_timeout={timeout:g}s"
    return f"backend raised {error_type}"


def _record_metrics(
    watch: StreamWatch,
    mode: str | None,
    outcome: str,
    duration: float,
    ttfi: float | None,
    failure: str | None,
) -> None:
    try:
        label = telemetry.stream_names.fold(watch.name)
        by_name = {names.STREAM_NAME: label}
        duration_labels = {names.STREAM_NAME: label, names.STREAM_OUTCOME: outcome}
        if failure is not None:
            duration_labels[names.ERROR_TYPE] = failure
        # The context the records would look up themselves (the stream's span is still
        # attached): handing it over spares the SDK a lookup per record, and exemplars
        # keep their trace link.
        context = otel_context.get_current()
        instruments = telemetry.instruments
        instruments.stream_duration.record(duration, duration_labels, context)
        if watch.put_wait:
            # Only streams that blocked: the count is how many met backpressure, and the
            # common stream pays for no record it would add only a zero to.
            instruments.queue_put_wait.record(watch.put_wait, by_name, context)
        if ttfi is not None:
            instruments.stream_ttfi.record(ttfi, by_name, context)
        if mode == names.MODE_ITERATOR:
            instruments.stream_items.record(watch.items, by_name, context)
            if watch.items >= 2:
                instruments.stream_max_gap.record(watch.max_gap, by_name, context)
    except Exception as exc:
        report_failure("stream metrics", exc)


LOG_BY_OUTCOME: Final = {
    names.OUTCOME_COMPLETED: (events.INFO, names.LOG_STREAM_COMPLETED),
    names.OUTCOME_ERROR: (events.WARNING, names.LOG_STREAM_ERROR_FORWARDED),
    names.OUTCOME_TIMEOUT: (events.ERROR, names.LOG_STREAM_TIMED_OUT),
    names.OUTCOME_CANCELLED: (events.WARNING, names.LOG_STREAM_CANCELLED),
}
"""How a stream ended -> (log level, event name) of its final log."""


def _log_end(
    watch: StreamWatch,
    outcome: str,
    duration: float,
    ttfi: float | None,
    error: BaseException | None,
    error_type: str | None,
) -> None:
    level, event = LOG_BY_OUTCOME[outcome]
    if not events.enabled(level):
        return
    fields: dict[str, Any] = {
        "stream_id": watch.stream_id,
        "stream": watch.name,
        "items": watch.items,
        "duration_s": round(duration, 6),
    }
    if ttfi is not None:
        fields["time_to_first_item_s"] = round(ttfi, 6)
    if watch.put_wait:
        fields["put_wait_s"] = round(watch.put_wait, 6)
    if error_type is not None:
        fields["error_type"] = error_type
        message = captured(error)
        if message is not None:
            fields[names.LOG_ERROR_MESSAGE] = message
    fields.update(events.span_ids(watch.span))
    events.emit(level, event, **fields)
