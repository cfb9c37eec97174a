"""thunkscope's structured log events: through structlog when the application set it up.

If the application configured structlog, events flow through its processors under
the logger name ``thunkscope``; an event at a level its wrapper class filters out is not
even built (no fields, no trace context), so a cache hit stays cheap. If it did not,
they go to the standard library logger ``thunkscope`` (silent below WARNING unless the
application says otherwise), so that structlog's print-everything default never puts
thunkscope's debug noise on stdout.

Every event carries ``trace_id`` and ``span_id`` of the active span, put in by the
emitter itself so they are there whatever processors the application configured.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Final

import structlog
from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags

from thunkscope import _probes as probes
from thunkscope import names
from thunkscope._telemetry import report_failure

DEBUG: Final = logging.DEBUG
INFO: Final = logging.INFO
WARNING: Final = logging.WARNING
ERROR: Final = logging.ERROR

_METHOD = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}

_stdlib = logging.getLogger(names.LOGGER_NAME)
_structlog = structlog.get_logger(names.LOGGER_NAME)

# Whether structlog was configured, and is debug on: read off the state behind the
# public answers, which cost more than a cache hit (see `_probes` for each read and why).
_structlog_config: Any = probes.STRUCTLOG_CONFIG
_level_cache: dict[int, bool] | None = probes.LEVEL_CACHE


def _structlog_configured() -> bool:
    """Whether the application configured structlog (so our events use its processors)."""
    if _structlog_config is None:  # pragma: no cover
        configured = structlog.is_configured()
    else:
        configured = bool(_structlog_config.is_configured)
    return configured and not probes.structlog_configured_only_by_otel()


# (wrapper class, logger factory) of structlog's configuration -> its level check, if any
_level_check: tuple[object, object, Callable[[int], object] | None] = (None, None, None)


def _structlog_enabled(level: int) -> bool:
    """Whether the application's structlog lets `level` through (True when it cannot say).

    Asks the configured wrapper class's ``is_enabled_for`` (structlog's filtering bound
    loggers and ``structlog.stdlib.BoundLogger`` have one), through a logger bound once
    per wrapper class and logger factory, so a filtered-out level costs one call.
    """
    global _level_check
    config = _structlog_config
    if config is None:  # pragma: no cover - structlog moved its internals
        return True
    wrapper_class, factory = config.default_wrapper_class, config.logger_factory
    known_class, known_factory, check = _level_check
    if wrapper_class is not known_class or factory is not known_factory:
        check = _level_check_of(wrapper_class)
        _level_check = (wrapper_class, factory, check)
    if check is None:
        return True
    try:
        return bool(check(level))
    except Exception:
        return True


def _level_check_of(wrapper_class: object) -> Callable[[int], object] | None:
    """``is_enabled_for`` of a logger bound as thunkscope's events are, if its class defines
    one that works (asking the instance could reach a generic ``__getattr__`` that logs)."""
    if not callable(getattr(wrapper_class, "is_enabled_for", None)):
        return None
    try:
        check: Callable[[int], object] = _structlog.bind().is_enabled_for
        check(DEBUG)  # e.g. the stdlib BoundLogger over a logger factory without levels
    except Exception:
        return None
    return check


Emitter = Callable[..., None]
"""Logs one event at the level it was chosen for: ``log(event, **fields)``."""


def emitter(level: int) -> Emitter | None:
    """What logs an event at `level` now, or None when no one would see it.

    For an operation that logs one or more events at one level: ask once, then call it.
    """
    if _structlog_configured():
        return _TO_STRUCTLOG[level] if _structlog_enabled(level) else None
    if _level_cache is not None:
        cached = _level_cache.get(level)
        if cached is not None:
            return _TO_STDLIB[level] if cached else None
    return _TO_STDLIB[level] if _stdlib.isEnabledFor(level) else None


def enabled(level: int) -> bool:
    """Whether an event at `level` could be seen by anyone; cheap enough for cache hits."""
    return emitter(level) is not None


def span_ids(span: Span) -> dict[str, str]:
    """``trace_id`` and ``span_id`` of `span`, hex as the OTel API formats them."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return {}
    return {
        "trace_id": trace_api.format_trace_id(ctx.trace_id),
        "span_id": trace_api.format_span_id(ctx.span_id),
    }


def trace_context() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the active span."""
    return span_ids(trace_api.get_current_span())


def emit(level: int, event: str, /, **fields: Any) -> None:
    """Log one thunkscope event; a failing handler or processor never reaches the caller."""
    log = emitter(level)
    if log is not None:
        log(event, **fields)


def _named_span(fields: dict[str, Any]) -> SpanContext | None:
    """The span an event names by its ``trace_id``/``span_id`` fields (an event told from a
    timer or after its span ended), when it is not the active one; else None."""
    try:
        named = SpanContext(
            trace_id=int(fields["trace_id"], 16),
            span_id=int(fields["span_id"], 16),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except (KeyError, TypeError, ValueError):
        return None
    active = trace_api.get_current_span().get_span_context()
    if not named.is_valid or (active.trace_id, active.span_id) == (named.trace_id, named.span_id):
        return None
    return named


def _to_structlog(level: int, event: str, /, **fields: Any) -> None:
    try:
        if "trace_id" not in fields:
            fields.update(trace_context())
        named = _named_span(fields)
        if named is None:
            getattr(_structlog, _METHOD[level])(event, **fields)
            return
        # The OTLP log record takes its trace context from the active span: make the named
        # span active for this call, so the record carries the ids the event names.
        token = context_api.attach(trace_api.set_span_in_context(NonRecordingSpan(named)))
        try:
            getattr(_structlog, _METHOD[level])(event, **fields)
        finally:
            context_api.detach(token)
    except Exception as exc:
        # A broken processor breaks every event alike: one warning per type.
        report_failure("logging", exc, detail=f"event {event}")


def _to_stdlib(level: int, event: str, /, **fields: Any) -> None:
    try:
        if "trace_id" not in fields:
            fields.update(trace_context())
        rendered = " ".join(f"{key}={value!r}" for key, value in fields.items())
        _stdlib.log(
            level,
            "%s %s",
            event,
            rendered,
            extra={"thunkscope_event": event, "thunkscope_fields": fields},
        )
    except Exception as exc:
        # A broken handler breaks every event alike: one warning per type.
        report_failure("logging", exc, detail=f"event {event}")


class _Emitters(dict[int, Emitter]):
    """One emitter per level, made on first use."""

    def __init__(self, function: Callable[..., None]) -> None:
        super().__init__()
        self._function = function

    def __missing__(self, level: int) -> Emitter:
        made = self[level] = functools.partial(self._function, level)
        return made


_TO_STRUCTLOG: Final = _Emitters(_to_structlog)
_TO_STDLIB: Final = _Emitters(_to_stdlib)
