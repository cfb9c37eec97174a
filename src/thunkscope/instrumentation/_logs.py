"""A bridge from thunkscope's standard-library log events to an OTel `LoggerProvider`.

Used when the instrumentor is given ``logger_provider=``: thunkscope's events that reach
the standard library logger ``thunkscope`` (that is, when the application has not
configured structlog; at the logger's level, WARNING unless the application lowers it)
become OTel log records of that provider, correlated with the span whose ids the event
carries. With structlog configured, events flow through the application's processors
instead: add opentelemetry-instrumentation-structlog's ``StructlogProcessor`` there, or
call ``thunkscope.configure_logging(logger_provider=...)``.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from opentelemetry import trace as trace_api
from opentelemetry._logs import SeverityNumber
from opentelemetry.context import Context

from thunkscope._version import __version__
from thunkscope.names import LOGGER_NAME

_SEVERITY: Final = {
    logging.DEBUG: SeverityNumber.DEBUG,
    logging.INFO: SeverityNumber.INFO,
    logging.WARNING: SeverityNumber.WARN,
    logging.ERROR: SeverityNumber.ERROR,
    logging.CRITICAL: SeverityNumber.FATAL,
}
_PRIMITIVES: Final = (str, bool, int, float)


class OTelLogHandler(logging.Handler):
    """Emit each ``thunkscope`` log record as an OTel log record: event name as body."""

    def __init__(self, logger_provider: Any) -> None:
        super().__init__()
        self._logger = logger_provider.get_logger(LOGGER_NAME, __version__)

    def emit(self, record: logging.LogRecord) -> None:
        """Convert and emit one record; a failure is handled like any logging error."""
        try:
            fields = getattr(record, "thunkscope_fields", None)
            event = getattr(record, "thunkscope_event", None) or record.getMessage()
            attributes = {
                key: value
                for key, value in (fields or {}).items()
                if isinstance(value, _PRIMITIVES) and key not in ("trace_id", "span_id")
            }
            self._logger.emit(
                timestamp=int(record.created * 1e9),
                context=_context_of(fields or {}),
                severity_number=_SEVERITY.get(record.levelno, SeverityNumber.UNSPECIFIED),
                severity_text=record.levelname,
                body=event,
                attributes=attributes,
            )
        except Exception:
            self.handleError(record)


def _context_of(fields: dict[str, Any]) -> Context | None:
    """The span context an event names (timer callbacks log outside the span's context)."""
    trace_id, span_id = fields.get("trace_id"), fields.get("span_id")
    if not isinstance(trace_id, str) or not isinstance(span_id, str):
        return None
    try:
        span_context = trace_api.SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=False,
            trace_flags=trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED),
        )  # fmt: skip
    except ValueError:
        return None
    return trace_api.set_span_in_context(trace_api.NonRecordingSpan(span_context))
