"""wait_for_all_mots: await many model output thunks at once, as one observed call.

The span, metrics and log event say how many thunks, how long, and the type of the
first exception; never a thunk's value, and the exception's message only when
content capture is on (`thunkscope._telemetry.captured`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode

from thunkscope import _events as events
from thunkscope import names
from thunkscope._telemetry import captured, end_span, report_failure, telemetry


async def wait_for_all_mots(mots: Iterable[Any]) -> None:
    """Await ``avalue()`` of every thunk concurrently in one `asyncio.gather`.

    Returns None. The first exception propagates (the other thunks keep running, as
    with `gather`). Any iterable of objects with an awaitable ``avalue()`` works.
    """
    avalues = _checked(mots)
    await observed(len(avalues), lambda: asyncio.gather(*[avalue() for avalue in avalues]))


async def observed(size: int, run: Callable[[], Awaitable[Any]]) -> None:
    """Await `run()` as one observed gather of `size` thunks: span, metrics, log event.

    `run` is called once the span is current, so the tasks it starts are its children.
    Its result is discarded; its exception propagates. Shared with the mellea
    instrumentation, which observes mellea's own ``wait_for_all_mots``.
    """
    span = _start_span(size)
    start = telemetry.clock()
    error: BaseException | None = None
    # Only a recording span becomes current: an invalid one would hide the caller's span
    # from the thunks' tasks.
    token = (
        otel_context.attach(trace_api.set_span_in_context(span)) if span.is_recording() else None
    )
    try:
        await run()
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            _finish(span, size, error, telemetry.clock() - start)
        finally:
            if token is not None:
                otel_context.detach(token)


def _checked(mots: Iterable[Any]) -> list[Callable[[], Awaitable[Any]]]:
    """Each thunk's bound ``avalue``; a TypeError naming the culprit before anything is awaited."""
    try:
        thunks = list(mots)
    except TypeError:
        raise TypeError(
            f"mots must be an iterable of model output thunks, got {type(mots).__name__}"
        ) from None
    try:
        avalues: list[Any] = [thunk.avalue for thunk in thunks]
    except AttributeError:
        avalues = [getattr(thunk, "avalue", None) for thunk in thunks]
    if not all(map(callable, avalues)):
        index = next(i for i, avalue in enumerate(avalues) if not callable(avalue))
        raise TypeError(
            f"mots[{index}] has no avalue() method: got {type(thunks[index]).__qualname__}; "
            "wait_for_all_mots expects model output thunks"
        )
    return avalues


def _start_span(size: int) -> Span:
    if not telemetry.tracing():
        return INVALID_SPAN
    try:
        return telemetry.tracer.start_span(
            names.SPAN_WAIT_FOR_ALL_MOTS, attributes={names.GATHER_SIZE: size}
        )
    except Exception as exc:
        report_failure("span start", exc)
        return INVALID_SPAN


def _finish(span: Span, size: int, error: BaseException | None, duration: float) -> None:
    if error is None:
        outcome, error_type = names.OUTCOME_COMPLETED, None
    elif isinstance(error, asyncio.CancelledError):
        outcome, error_type = names.OUTCOME_CANCELLED, None
    else:
        outcome, error_type = names.OUTCOME_ERROR, type(error).__qualname__
    message = None if error_type is None else captured(error)
    try:
        if span.is_recording():
            span.set_attribute(names.GATHER_OUTCOME, outcome)
            if error_type is not None:
                span.set_attribute(names.ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR, f"a thunk raised {error_type}"))
                if message is not None:
                    span.add_event(
                        names.EVENT_EXCEPTION,
                        {names.EXCEPTION_TYPE: error_type, names.EXCEPTION_MESSAGE: message},
                    )
    except Exception as exc:
        report_failure("span attributes", exc)
    finally:
        end_span(span)
    try:
        labels = {names.GATHER_OUTCOME: outcome}
        if error_type is not None:
            labels[names.ERROR_TYPE] = error_type
        instruments = telemetry.instruments
        instruments.gather_duration.record(duration, labels)
        instruments.gather_size.record(size)
    except Exception as exc:
        report_failure("gather metrics", exc)
    # Completions log at info; failures and cancellations at warning.
    if outcome == names.OUTCOME_COMPLETED:
        level, event = events.INFO, names.LOG_GATHER_COMPLETED
    else:
        level, event = events.WARNING, names.LOG_GATHER_FAILED
    if not events.enabled(level):
        return
    fields: dict[str, Any] = {} if error_type is None else {"error_type": error_type}
    fields.update(size=size, outcome=outcome, duration_s=round(duration, 6))
    fields.update(events.span_ids(span))
    if message is not None:
        fields[names.LOG_ERROR_MESSAGE] = message
    events.emit(level, event, **fields)
