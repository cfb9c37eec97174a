"""OTLP exporters that never reach the application: contained errors, one warning per episode.

Exports run on the SDK's background threads, so no helper waits on them. Each exporter
is wrapped so that an exception in it is contained, and the warnings the OTel exporters
log for every failed batch (and every retry) while thunkscope's exporters run are
replaced by **one** warning per failure episode on the ``thunkscope`` logger: the first
failed export logs a WARNING naming the endpoint, the signal and the cause; further
failures log at DEBUG until an export succeeds again (an INFO line says so). A later
episode warns again, at most once every `EXPORT_WARNING_INTERVAL_S`.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, TypeVar

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from thunkscope import _probes as probes
from thunkscope import names
from thunkscope._settings import export_timeout_s, from_environment

Protocol = Literal["http/protobuf", "grpc"]

_log = logging.getLogger(names.LOGGER_NAME)
T = TypeVar("T")

EXPORT_WARNING_INTERVAL_S: Final = 300.0
SIGNALS: Final = ("traces", "metrics", "logs")


# --- one warning per export-failure episode ---------------------------------------------------


class _ExportScope(threading.local):
    depth = 0
    records: list[logging.LogRecord] | None = None


_scope = _ExportScope()
_MAX_CAPTURED = 8


class _ExporterLogGate(logging.Filter):
    """Hold back what OTel's exporters log while a thunkscope exporter runs on this thread.

    Those records (a warning per retry, an error per failed batch) are kept for the
    cause of `ExportHealth`'s single warning instead. Records logged anywhere else
    pass, except repeats of the batch processors' per-item "Queue full" warning.
    """

    def __init__(self) -> None:
        super().__init__("thunkscope-export-gate")
        self._queue_full_seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if _scope.depth:
            records = _scope.records
            if records is not None and len(records) < _MAX_CAPTURED:
                records.append(record)
            return False
        if isinstance(record.msg, str) and record.msg.startswith("Queue full"):
            key = f"{record.name}:{record.getMessage()}"
            if key in self._queue_full_seen:
                return False
            self._queue_full_seen.add(key)
        return True


_gate = _ExporterLogGate()
_GATED_PREFIXES: Final = ("opentelemetry", "urllib3", "requests", "grpc")
_GATED_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
    "urllib3.connectionpool",
)


def install_log_gate() -> None:
    """Attach the gate to the loggers OTel's export path logs on (a filter sees only its own
    logger's records, so each one needs it)."""
    gated = set(_GATED_LOGGERS)
    gated.update(
        name
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.startswith(_GATED_PREFIXES)
    )
    for name in gated:
        logger = logging.getLogger(name)
        if _gate not in logger.filters:
            logger.addFilter(_gate)


class ExportHealth:
    """Whether the exporters of one `configure()` call are failing, and the one warning."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        """Where the exporters send, as the warnings name it when a signal's own is unknown."""
        self._endpoints: dict[str, str] = {}
        self.failing = False
        self.failures = 0
        self._last_warning = -math.inf
        self._lock = threading.Lock()
        self._exporters: list[Any] = []

    def watch(self, exporter: T, signal: str) -> T:
        """Remember an inner exporter, so `stop_retries` can end its backoff, and the
        endpoint it resolved for `signal`, for the warnings; return it."""
        self._exporters.append(exporter)
        endpoint = probes.exporter_endpoint(exporter)
        if endpoint is not None:
            self._endpoints[signal] = endpoint
        return exporter

    def stop_retries(self) -> None:
        """Make the inner exporters give up after one attempt, ending any backoff sleep.

        Sets the event each OTLP exporter (1.4x) waits on between retries: the HTTP
        client's ``_shutdown_event`` or the gRPC exporter's ``_shutdown_in_progress``.
        Unlike the exporter's own shutdown, later exports still make one attempt, so
        the final flush still delivers to a healthy collector. Should those private
        attributes move, nothing happens and the shutdown timeout still bounds the wait.
        """
        for exporter in self._exporters:
            for event in probes.retry_events(exporter):
                event.set()

    def run(self, signal: str, export: Callable[[], object], ok: object) -> bool:
        """Run one export on this thread with the OTel exporters' logs held back."""
        outer = _scope.records
        records: list[logging.LogRecord] = []
        _scope.records = records
        _scope.depth += 1
        cause = ""
        try:
            result = export()
        except Exception as exc:
            result, cause = None, type(exc).__qualname__
        finally:
            _scope.depth -= 1
            _scope.records = outer
        if result == ok:
            self._succeeded()
            return True
        if not cause:
            cause = _cause(records) or f"the exporter returned {result}"
        self._failed(signal, cause)
        return False

    def _failed(self, signal: str, cause: str) -> None:
        endpoint = self._endpoints.get(signal, self.endpoint)
        with self._lock:
            self.failures += 1
            first = not self.failing
            self.failing = True
            now = time.monotonic()
            warn = first and now - self._last_warning >= EXPORT_WARNING_INTERVAL_S
            if warn:
                self._last_warning = now
        if warn:
            _log.warning(
                "thunkscope: exporting %s to %s failed (%s); telemetry is dropped while the "
                "collector fails, the application is unaffected. Further export failures "
                "are logged at DEBUG until an export succeeds.",
                signal,
                endpoint,
                cause,
                extra={"thunkscope_export_failure": signal},
            )
        elif first:
            _log.info("thunkscope: exporting %s to %s failed again (%s)", signal, endpoint, cause)
        else:
            _log.debug("thunkscope: exporting %s to %s failed (%s)", signal, endpoint, cause)

    def _succeeded(self) -> None:
        if not self.failing:
            return
        with self._lock:
            if not self.failing:
                return
            self.failing = False
            failures, self.failures = self.failures, 0
        _log.info(
            "thunkscope: telemetry export to %s recovered after %d failed exports",
            self.endpoint,
            failures,
        )

    def contained(self, what: str, call: Callable[[], Any], default: Any) -> Any:
        """Run an exporter's flush or shutdown with its logs held back; never raise."""
        _scope.depth += 1
        try:
            return call()
        except Exception as exc:
            _log.debug("thunkscope: exporter %s failed (%s)", what, type(exc).__qualname__)
            return default
        finally:
            _scope.depth -= 1


def _cause(records: list[logging.LogRecord]) -> str:
    """What the exporter complained of first: the root cause, before retries and give-ups."""
    if not records:
        return ""
    record = records[0]
    try:
        message = record.getMessage()
    except Exception:
        message = str(record.msg)
    return message if len(message) <= 300 else message[:300] + "…"


class _GuardedSpanExporter(SpanExporter):
    """An OTLP span exporter that never raises and reports failures through `ExportHealth`."""

    def __init__(self, inner: SpanExporter, health: ExportHealth) -> None:
        self._inner = health.watch(inner, "traces")
        self._health = health

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self._health.run("traces", lambda: self._inner.export(spans), SpanExportResult.SUCCESS)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._health.contained("shutdown", self._inner.shutdown, None)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(
            self._health.contained("flush", lambda: self._inner.force_flush(timeout_millis), False)
        )


class _GuardedMetricExporter(MetricExporter):
    """An OTLP metric exporter that never raises and reports failures through `ExportHealth`."""

    def __init__(self, inner: MetricExporter, health: ExportHealth) -> None:
        temporality, aggregation = probes.metric_preferences(inner)
        super().__init__(preferred_temporality=temporality, preferred_aggregation=aggregation)
        self._inner = health.watch(inner, "metrics")
        self._health = health

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        ok = self._health.run(
            "metrics",
            lambda: self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs),
            MetricExportResult.SUCCESS,
        )
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return bool(
            self._health.contained("flush", lambda: self._inner.force_flush(timeout_millis), False)
        )

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._health.contained(
            "shutdown", lambda: self._inner.shutdown(timeout_millis=timeout_millis), None
        )


class _GuardedLogExporter(LogRecordExporter):
    """An OTLP log exporter that never raises and reports failures through `ExportHealth`."""

    def __init__(self, inner: LogRecordExporter, health: ExportHealth) -> None:
        self._inner = health.watch(inner, "logs")
        self._health = health

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        ok = self._health.run(
            "logs", lambda: self._inner.export(batch), LogRecordExportResult.SUCCESS
        )
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        self._health.contained("shutdown", self._inner.shutdown, None)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(
            self._health.contained("flush", lambda: self._inner.force_flush(timeout_millis), False)
        )


# --- exporters ----------------------------------------------------------------------------------


class Exporters:
    """OTLP exporters of one protocol, all guarded.

    An explicit `endpoint` is the collector of every signal (over HTTP, the base of
    each signal's ``/v1/<signal>`` URL). Without one, the OTLP exporters resolve the
    environment themselves, so ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`` takes precedence
    over ``OTEL_EXPORTER_OTLP_ENDPOINT`` as the OTel specification says.
    """

    def __init__(self, protocol: Protocol, endpoint: str | None, headers: dict[str, str]) -> None:
        self.protocol = protocol
        self.base = endpoint.rstrip("/") if endpoint else None
        self.headers = headers or None
        described = self.base or from_environment("endpoint")
        self.health = ExportHealth(described or "the default OTLP endpoint")
        self.timeouts = {signal: export_timeout_s(signal) for signal in SIGNALS}
        """Seconds each signal's export may take, retries included (`export_timeout_s`)."""

    def spans(self) -> SpanExporter:
        return _GuardedSpanExporter(self._otlp("traces"), self.health)

    def metrics(self) -> MetricExporter:
        return _GuardedMetricExporter(self._otlp("metrics"), self.health)

    def logs(self) -> LogRecordExporter:
        return _GuardedLogExporter(self._otlp("logs"), self.health)

    def _otlp(self, signal: str) -> Any:
        """The OTLP exporter of `signal` for this protocol, imported only when asked for."""
        module, name = _OTLP_EXPORTERS[signal]
        if self.protocol == "grpc":
            exporter_class = getattr(_grpc(module), name)
            endpoint = self.base  # gRPC takes the collector's address itself
        else:
            exporter_class = getattr(
                importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{module}"), name
            )
            endpoint = None if self.base is None else f"{self.base}/v1/{signal}"
        return exporter_class(
            endpoint=endpoint, headers=self.headers, timeout=self.timeouts[signal]
        )


# signal -> (module under opentelemetry.exporter.otlp.proto.{http,grpc}, exporter class)
_OTLP_EXPORTERS: Final = {
    "traces": ("trace_exporter", "OTLPSpanExporter"),
    "metrics": ("metric_exporter", "OTLPMetricExporter"),
    "logs": ("_log_exporter", "OTLPLogExporter"),
}


def _grpc(module: str) -> Any:
    try:
        return importlib.import_module(f"opentelemetry.exporter.otlp.proto.grpc.{module}")
    except ImportError:
        raise ImportError(
            "OTLP over gRPC needs the grpc extra: pip install 'thunkscope[grpc]'"
        ) from None
