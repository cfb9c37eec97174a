"""configure(): the one call that sets up OTLP export of traces, metrics and logs.

Importing thunkscope configures nothing. An application that wants thunkscope's
telemetry exported calls `configure()` once at start-up; one that set up OTel and
structlog itself calls nothing and, at most, adds `add_trace_context` to its
structlog processors.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from opentelemetry import _logs as logs_api
from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from thunkscope import _events as events
from thunkscope._telemetry import SpanMode, telemetry

Protocol = Literal["http/protobuf", "grpc"]
LogFormat = Literal["json", "console"]

_log = logging.getLogger("thunkscope")

# Batch settings sized for bursts: a thousand streams ending at once must not overflow
# the span queue (the SDK default of 2,048 drops spans under that load).
SPAN_QUEUE_SIZE = 32_768
SPAN_BATCH_SIZE = 2_048
EXPORT_TIMEOUT_S = 3.0
SHUTDOWN_TIMEOUT_S = 4.0


def add_trace_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add ``trace_id`` and ``span_id`` of the active span, if any."""
    if "trace_id" not in event_dict:
        event_dict.update(events.trace_context())
    return event_dict


@dataclass
class TelemetryHandle:
    """What `configure()` set up; `shutdown()` flushes all three signals and returns."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None
    _closed: bool = field(default=False, repr=False)

    def force_flush(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Export what is buffered now, giving up after `timeout_s`."""
        millis = int(timeout_s * 1000)
        _bounded(
            [
                (p, lambda p=p: p.force_flush(millis))
                for p in (self.tracer_provider, self.meter_provider, self.logger_provider)
                if p is not None
            ],
            timeout_s,
        )

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Flush and stop the providers; return within `timeout_s`, collector or not."""
        if self._closed:
            return
        self._closed = True
        _bounded(
            [
                (p, p.shutdown)
                for p in (self.tracer_provider, self.meter_provider, self.logger_provider)
                if p is not None
            ],
            timeout_s,
        )

    def __enter__(self) -> TelemetryHandle:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()


def _bounded(calls: Sequence[tuple[object, Any]], timeout_s: float) -> None:
    """Run the calls in parallel daemon threads and wait at most `timeout_s` for all."""
    threads = [
        threading.Thread(target=_quietly, args=(call,), daemon=True, name="thunkscope-shutdown")
        for _, call in calls
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        _log.warning(
            "thunkscope: telemetry flush did not finish within %.1f s; giving up", timeout_s
        )


def _quietly(call: Any) -> None:
    try:
        call()
    except Exception as exc:
        _log.warning("thunkscope: telemetry shutdown failed (%s)", type(exc).__name__)


def configure(
    *,
    service_name: str | None = None,
    endpoint: str | None = None,
    protocol: Protocol | None = None,
    headers: Mapping[str, str] | None = None,
    log_format: LogFormat | None = "json",
    log_level: str = "info",
    spans: SpanMode | None = None,
    stall_after: float | Literal["env"] | None = "env",
    capture_content: bool | None = None,
    metric_export_interval_s: float = 10.0,
    metric_readers: Iterable[MetricReader] = (),
    span_processors: Iterable[SpanProcessor] = (),
) -> TelemetryHandle:
    """Set up OTLP exporters for traces, metrics and logs, and thunkscope's settings.

    Honours the standard variables: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL and OTEL_SDK_DISABLED;
    arguments win over them. A global provider the application already set is kept
    (with a warning), never replaced. `log_format` configures structlog (JSON or
    console rendering on stderr, events also shipped as OTLP logs) unless the
    application configured structlog itself; None leaves structlog alone.
    `metric_readers` and `span_processors` add sinks beside the OTLP exporters.
    """
    _apply_settings(spans=spans, stall_after=stall_after, capture_content=capture_content)
    if _env_true("OTEL_SDK_DISABLED"):
        _log.info("thunkscope: OTEL_SDK_DISABLED is set; no telemetry is exported")
        return TelemetryHandle()

    resolved_protocol = _protocol(protocol)
    base = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    exporters = _Exporters(resolved_protocol, base, dict(headers or {}))
    attributes = {SERVICE_NAME: service_name} if service_name else {}
    resource = Resource.create(attributes)
    handle = TelemetryHandle()

    if _global_set(trace_api, "_TRACER_PROVIDER"):
        _warn_kept("tracer")
    else:
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                exporters.spans(),
                max_queue_size=SPAN_QUEUE_SIZE,
                max_export_batch_size=SPAN_BATCH_SIZE,
                schedule_delay_millis=1000,
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
            )
        )
        for processor in span_processors:
            tracer_provider.add_span_processor(processor)
        trace_api.set_tracer_provider(tracer_provider)
        handle.tracer_provider = tracer_provider

    if _global_set(metrics_api._internal, "_METER_PROVIDER"):
        _warn_kept("meter")
    else:
        reader = PeriodicExportingMetricReader(
            exporters.metrics(),
            export_interval_millis=metric_export_interval_s * 1000,
            export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader, *metric_readers])
        metrics_api.set_meter_provider(meter_provider)
        handle.meter_provider = meter_provider

    if _global_set(logs_api._internal, "_LOGGER_PROVIDER"):
        _warn_kept("logger")
    else:
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(exporters.logs(), export_timeout_millis=EXPORT_TIMEOUT_S * 1000)
        )
        logs_api.set_logger_provider(logger_provider)
        handle.logger_provider = logger_provider

    if log_format is not None:
        configure_logging(log_format, level=log_level, logger_provider=handle.logger_provider)
    telemetry.use()  # drop cached tracer and instruments: the globals changed
    return handle


def configure_logging(
    log_format: LogFormat = "json",
    *,
    level: str = "info",
    logger_provider: LoggerProvider | None = None,
) -> bool:
    """Configure structlog to render on stderr and ship events as OTLP logs.

    Does nothing (returns False) if the application configured structlog already:
    add `add_trace_context` (and, for OTLP, opentelemetry-instrumentation-structlog's
    `StructlogProcessor`) to its processors instead.
    """
    if structlog.is_configured():
        _log.warning(
            "thunkscope: structlog is already configured; leaving it as it is "
            "(add thunkscope.add_trace_context to its processors for trace correlation)"
        )
        return False
    from opentelemetry.instrumentation.structlog import StructlogProcessor

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
    ]
    if logger_provider is not None:
        processors.append(StructlogProcessor(logger_provider=logger_provider))  # type: ignore[no-untyped-call]
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    return True


def _apply_settings(
    *,
    spans: SpanMode | None,
    stall_after: float | Literal["env"] | None,
    capture_content: bool | None,
) -> None:
    settings = telemetry.settings
    if spans is not None:
        if spans not in ("all", "in_trace"):
            raise ValueError(f"spans must be 'all' or 'in_trace', got {spans!r}")
        settings.span_mode = spans
    if stall_after != "env":
        if stall_after is not None and (
            isinstance(stall_after, bool)
            or not isinstance(stall_after, int | float)
            or not stall_after > 0
        ):
            raise ValueError(
                f"stall_after must be a positive number of seconds or None, got {stall_after!r}"
            )
        settings.stall_after = None if stall_after is None else float(stall_after)
    if capture_content is not None:
        settings.capture_content = bool(capture_content)


def _protocol(protocol: str | None) -> Protocol:
    chosen = (protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if chosen not in ("http/protobuf", "grpc"):
        raise ValueError(f"protocol must be 'http/protobuf' or 'grpc', got {chosen!r}")
    return chosen  # type: ignore[return-value]


class _Exporters:
    """OTLP exporters of one protocol, all pointing at one collector."""

    def __init__(self, protocol: Protocol, base: str | None, headers: dict[str, str]) -> None:
        self.protocol = protocol
        self.base = base.rstrip("/") if base else None
        self.headers = headers or None

    def _http_endpoint(self, path: str) -> str | None:
        return None if self.base is None else f"{self.base}/v1/{path}"

    def spans(self) -> Any:
        if self.protocol == "grpc":
            module = _grpc("trace_exporter")
            return module.OTLPSpanExporter(
                endpoint=self.base, headers=self.headers, timeout=EXPORT_TIMEOUT_S
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=self._http_endpoint("traces"), headers=self.headers, timeout=EXPORT_TIMEOUT_S
        )

    def metrics(self) -> Any:
        if self.protocol == "grpc":
            module = _grpc("metric_exporter")
            return module.OTLPMetricExporter(
                endpoint=self.base, headers=self.headers, timeout=EXPORT_TIMEOUT_S
            )
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(
            endpoint=self._http_endpoint("metrics"), headers=self.headers, timeout=EXPORT_TIMEOUT_S
        )

    def logs(self) -> Any:
        if self.protocol == "grpc":
            module = _grpc("_log_exporter")
            return module.OTLPLogExporter(
                endpoint=self.base, headers=self.headers, timeout=EXPORT_TIMEOUT_S
            )
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        return OTLPLogExporter(
            endpoint=self._http_endpoint("logs"), headers=self.headers, timeout=EXPORT_TIMEOUT_S
        )


def _grpc(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"opentelemetry.exporter.otlp.proto.grpc.{module}")
    except ImportError:
        raise ImportError(
            "OTLP over gRPC needs the grpc extra: pip install 'thunkscope[grpc]'"
        ) from None


def _global_set(module: Any, attribute: str) -> bool:
    return getattr(module, attribute, None) is not None


def _warn_kept(signal: str) -> None:
    _log.warning(
        "thunkscope.configure: a global %s provider is already set; keeping it "
        "(thunkscope's telemetry goes there, without thunkscope's exporter)",
        signal,
    )


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
