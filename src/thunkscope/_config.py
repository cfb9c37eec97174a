"""configure(): the one call that sets up OTLP export of traces, metrics and logs.

Importing thunkscope configures nothing. An application that wants thunkscope's
telemetry exported calls `configure()` once at start-up; one that set up OTel and
structlog itself calls nothing and, at most, adds `add_trace_context` to its
structlog processors.

A collector that misbehaves never reaches the application (see `_export`), and
`TelemetryHandle.shutdown()` returns within its timeout (4 s by default) even when the
collector hangs, and runs at exit if the application never calls it.
"""

from __future__ import annotations

import atexit
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog
from opentelemetry import _logs as logs_api
from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from thunkscope import _events as events
from thunkscope import names
from thunkscope._debug_server import serve_debug_in_every_process
from thunkscope._export import (
    Exporters,
    ExportHealth,
    Protocol,
    install_log_gate,
)
from thunkscope._probes import global_provider_set
from thunkscope._settings import (
    PROTOCOLS,
    SPAN_MODES,
    SpanMode,
    Unparsed,
    choice,
    count,
    from_environment,
    parse_trace_url,
    resolve,
    seconds,
    text,
)
from thunkscope._telemetry import telemetry

LogFormat = Literal["json", "console"]

_log = logging.getLogger(names.LOGGER_NAME)

# Batch settings sized for bursts: a thousand streams ending at once must not overflow
# the span queue (the SDK default of 2,048 drops spans under that load).
SPAN_QUEUE_SIZE: Final = 32_768
SPAN_BATCH_SIZE: Final = 2_048
LOG_QUEUE_SIZE: Final = 32_768
LOG_BATCH_SIZE: Final = 2_048
SHUTDOWN_TIMEOUT_S: Final = 4.0
"""Seconds shutdown() and force_flush() wait at most, collector or not."""

_LOG_FORMATS: Final = ("json", "console")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def add_trace_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add ``trace_id`` and ``span_id`` of the active span, if any."""
    if "trace_id" not in event_dict:
        event_dict.update(events.trace_context())
    return event_dict


# --- the handle -------------------------------------------------------------------------------


@dataclass
class TelemetryHandle:
    """What `configure()` set up; `shutdown()` flushes all three signals and returns.

    `shutdown()` runs by itself at interpreter exit if the application never calls it,
    with the same bound, so a gone collector never hangs the exit.
    """

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None
    _health: ExportHealth | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    def _providers(self) -> list[Any]:
        return [
            p
            for p in (self.tracer_provider, self.meter_provider, self.logger_provider)
            if p is not None
        ]

    def force_flush(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Export what is buffered now, giving up after `timeout_s`."""
        timeout_s = seconds("timeout_s", timeout_s)
        millis = int(timeout_s * 1000)
        _bounded(
            [functools.partial(p.force_flush, millis) for p in self._providers()],
            timeout_s,
            "flush",
            self._health,
        )

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Flush and stop the providers; return within `timeout_s`, collector or not."""
        timeout_s = seconds("timeout_s", timeout_s)
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        if self._health is not None:
            # One attempt per remaining batch, no retries and no backoff sleeps: a
            # collector that fails now would only eat the timeout.
            self._health.stop_retries()
        _bounded([p.shutdown for p in self._providers()], timeout_s, "shutdown", self._health)

    def _at_exit(self) -> None:
        self.shutdown()

    def __enter__(self) -> TelemetryHandle:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()


def _bounded(
    calls: Sequence[Callable[[], object]],
    timeout_s: float,
    what: str,
    health: ExportHealth | None,
) -> None:
    """Run the calls in parallel daemon threads and wait at most `timeout_s` for all.

    CPython 3.12.0 and 3.12.1 refuse to start a thread once the interpreter shuts down,
    which is when the atexit flush runs: a call whose thread cannot start runs here instead,
    bounded by its exporter's own timeout rather than by `timeout_s`.
    """
    threads: list[threading.Thread] = []
    for call in calls:
        thread = threading.Thread(
            target=_quietly, args=(call, what), daemon=True, name=f"thunkscope-{what}"
        )
        try:
            thread.start()
        except RuntimeError:
            _quietly(call, what)
        else:
            threads.append(thread)
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        # Already warned that the collector fails? Then this is the same story: no warning.
        level = logging.INFO if health is not None and health.failing else logging.WARNING
        _log.log(
            level,
            "thunkscope: telemetry %s did not finish within %.1f s; giving up (unsent "
            "telemetry is dropped)",
            what,
            timeout_s,
        )


def _quietly(call: Callable[[], object], what: str) -> None:
    try:
        call()
    except Exception as exc:
        _log.warning("thunkscope: telemetry %s failed (%s)", what, type(exc).__qualname__)


# --- configure ----------------------------------------------------------------------------------


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
    content_limit: int | None = None,
    name_limit: int | None = None,
    metric_export_interval_s: float = 10.0,
    metric_readers: Iterable[MetricReader] = (),
    span_processors: Iterable[SpanProcessor] = (),
    debug_server: bool | None = None,
    trace_url: str | None = None,
) -> TelemetryHandle:
    """Set up OTLP exporters for traces, metrics and logs, and thunkscope's settings.

    Honours the standard variables: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    OTEL_EXPORTER_OTLP_ENDPOINT (and the per-signal OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    ..._METRICS_ENDPOINT, ..._LOGS_ENDPOINT, which take precedence over it),
    OTEL_EXPORTER_OTLP_PROTOCOL and OTEL_SDK_DISABLED; arguments win over them. A
    global provider the application already set is kept (with a warning), never
    replaced. `log_format` configures structlog (JSON or console rendering on stderr,
    events also shipped as OTLP logs) unless the application configured structlog
    itself; None leaves structlog alone.
    `metric_readers` and `span_processors` add sinks beside the OTLP exporters.

    Content stays out of telemetry unless `capture_content` is true (default: the
    ``THUNKSCOPE_CAPTURE_CONTENT`` variable, else off). What is then captured is the
    message of an exception a stream forwarded or a gather raised (span event attribute
    ``exception.message``, log field ``error_message``), cut to `content_limit`
    characters (default ``THUNKSCOPE_CONTENT_LIMIT``, else 256). Stream items, thunk
    values and cache keys and values are never captured. `name_limit` caps the distinct
    stream names, and cache names, that label metrics (default 100); the rest fold
    into ``other``.

    `debug_server` (default: ``THUNKSCOPE_DEBUG_SERVER``, else off) starts `serve_debug` on
    127.0.0.1 with a free port, with its discovery file, in this process and in every
    child forked from it later (each gets its own; `thunkscope ps` finds them).
    `trace_url` (default ``THUNKSCOPE_TRACE_URL``) makes the debug page link trace ids:
    ``{trace_id}`` in it is replaced, e.g. ``http://jaeger:16686/trace/{trace_id}``.
    Every process gets a distinct ``service.instance.id`` resource attribute (the SDK's),
    a fresh one in a forked child.

    Every argument is checked before anything is set up: a wrong type is a TypeError,
    a wrong value a ValueError, each naming the argument.
    """
    args = _Checked(
        service_name=service_name,
        endpoint=endpoint,
        protocol=protocol,
        headers=headers,
        log_format=log_format,
        log_level=log_level,
        spans=spans,
        stall_after=stall_after,
        capture_content=capture_content,
        content_limit=content_limit,
        name_limit=name_limit,
        metric_export_interval_s=metric_export_interval_s,
        metric_readers=metric_readers,
        span_processors=span_processors,
        debug_server=debug_server,
        trace_url=trace_url,
    )
    args.apply_settings()
    if from_environment("sdk_disabled"):
        _log.info("thunkscope: OTEL_SDK_DISABLED is set; no telemetry is exported")
        if args.debug_server:
            serve_debug_in_every_process()
        return TelemetryHandle()

    exporters = Exporters(args.protocol, args.endpoint, args.headers)
    resource = Resource.create({SERVICE_NAME: args.service_name} if args.service_name else {})
    handle = TelemetryHandle(_health=exporters.health)

    if global_provider_set("traces"):
        _warn_kept("tracer")
    else:
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                exporters.spans(),
                max_queue_size=SPAN_QUEUE_SIZE,
                max_export_batch_size=SPAN_BATCH_SIZE,
                schedule_delay_millis=1000,
                export_timeout_millis=exporters.timeouts["traces"] * 1000,
            )
        )
        for processor in args.span_processors:
            tracer_provider.add_span_processor(processor)
        trace_api.set_tracer_provider(tracer_provider)
        handle.tracer_provider = tracer_provider

    if global_provider_set("metrics"):
        _warn_kept("meter")
    else:
        reader = PeriodicExportingMetricReader(
            exporters.metrics(),
            export_interval_millis=args.metric_export_interval_s * 1000,
            export_timeout_millis=exporters.timeouts["metrics"] * 1000,
        )
        meter_provider = MeterProvider(
            resource=resource,
            metric_readers=[reader, *args.metric_readers],
            shutdown_on_exit=False,
        )
        metrics_api.set_meter_provider(meter_provider)
        handle.meter_provider = meter_provider

    if global_provider_set("logs"):
        _warn_kept("logger")
    else:
        logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(
                exporters.logs(),
                max_queue_size=LOG_QUEUE_SIZE,
                max_export_batch_size=LOG_BATCH_SIZE,
                export_timeout_millis=exporters.timeouts["logs"] * 1000,
            )
        )
        logs_api.set_logger_provider(logger_provider)
        handle.logger_provider = logger_provider

    install_log_gate()
    if handle.tracer_provider or handle.meter_provider or handle.logger_provider:
        atexit.register(handle._at_exit)
    if args.log_format is not None:
        configure_logging(
            args.log_format, level=args.log_level, logger_provider=handle.logger_provider
        )
    telemetry.use()  # drop cached tracer and instruments: the globals changed
    if args.debug_server:
        # After the providers: its at-fork hook then runs after theirs, so a forked child's
        # discovery file names the fresh service.instance.id they took.
        serve_debug_in_every_process()
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
    log_format = choice("log_format", log_format, _LOG_FORMATS)  # type: ignore[assignment]
    level = choice("level", level, _LOG_LEVELS, fold_case=True)
    if logger_provider is not None and not isinstance(logger_provider, LoggerProvider):
        raise TypeError(
            "logger_provider must be an opentelemetry.sdk._logs.LoggerProvider or None, "
            f"got {type(logger_provider).__name__}"
        )
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


# --- argument checks ----------------------------------------------------------------------------


class _Checked:
    """configure()'s arguments, every one checked before anything is set up."""

    def __init__(
        self,
        *,
        service_name: object,
        endpoint: object,
        protocol: object,
        headers: object,
        log_format: object,
        log_level: object,
        spans: object,
        stall_after: object,
        capture_content: object,
        content_limit: object,
        name_limit: object,
        metric_export_interval_s: object,
        metric_readers: object,
        span_processors: object,
        debug_server: object = None,
        trace_url: object = None,
    ) -> None:
        self.service_name: str | None = text("service_name", service_name, optional=True)
        given = (protocol.strip() or None) if isinstance(protocol, str) else protocol
        self.protocol: Protocol = choice(  # type: ignore[assignment]
            "protocol", resolve("protocol", given), PROTOCOLS
        )
        self.endpoint = _endpoint(endpoint, self.protocol)
        self.headers = _headers(headers)
        self.log_format: LogFormat | None = (
            None if log_format is None else choice("log_format", log_format, _LOG_FORMATS)  # type: ignore[assignment]
        )
        self.log_level = choice("log_level", log_level, _LOG_LEVELS, fold_case=True)
        self.spans: SpanMode | None = (
            None if spans is None else choice("spans", spans, SPAN_MODES)  # type: ignore[assignment]
        )
        self.stall_after: float | Literal["env"] | None = (
            "env"
            if stall_after == "env" and isinstance(stall_after, str)
            else seconds("stall_after", stall_after, optional=True)
        )
        if capture_content is not None and not isinstance(capture_content, bool):
            raise TypeError(
                f"capture_content must be a bool or None, got {type(capture_content).__name__}"
            )
        self.capture_content: bool | None = capture_content
        self.content_limit: int | None = count("content_limit", content_limit, optional=True)
        self.name_limit: int | None = count("name_limit", name_limit, optional=True)
        self.metric_export_interval_s: float = seconds(
            "metric_export_interval_s", metric_export_interval_s
        )
        self.metric_readers: list[MetricReader] = _instances(
            "metric_readers", metric_readers, MetricReader
        )
        self.span_processors: list[SpanProcessor] = _instances(
            "span_processors", span_processors, SpanProcessor
        )
        if debug_server is not None and not isinstance(debug_server, bool):
            raise TypeError(
                f"debug_server must be a bool or None, got {type(debug_server).__name__}"
            )
        self.debug_server: bool = resolve("debug_server", debug_server)
        self.trace_url: str | None = _trace_url(trace_url)

    def apply_settings(self) -> None:
        settings = telemetry.settings
        if self.spans is not None:
            settings.span_mode = self.spans
        if self.stall_after != "env":
            settings.stall_after = self.stall_after
        if self.capture_content is not None:
            settings.capture_content = self.capture_content
        if self.content_limit is not None:
            settings.content_limit = self.content_limit
        if self.trace_url is not None:
            settings.trace_url = self.trace_url
        if self.name_limit is not None:
            settings.name_limit = self.name_limit
            telemetry.stream_names.limit = self.name_limit
            telemetry.cache_names.limit = self.name_limit


def _trace_url(value: object) -> str | None:
    template: str | None = text("trace_url", value, optional=True)
    if template is None:
        return None
    try:
        return parse_trace_url(template)
    except Unparsed as exc:
        raise ValueError(f"trace_url must be {exc}, got {template!r}") from None


def _endpoint(value: object, protocol: Protocol) -> str | None:
    endpoint: str | None = text("endpoint", value, optional=True)
    if endpoint is None:
        return None
    endpoint = endpoint.strip()
    if protocol == "http/protobuf" and not endpoint.startswith(("http://", "https://")):
        raise ValueError(
            f"endpoint must be an http:// or https:// URL for protocol 'http/protobuf', "
            f"got {endpoint!r}"
        )
    return endpoint


def _headers(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(
                f"headers must be a mapping of str to str, got {type(key).__name__} -> "
                f"{type(item).__name__}"
            )
    return dict(value)


def _instances(argument: str, value: object, kind: type[Any]) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"{argument} must be an iterable of {kind.__name__}, got {type(value).__name__}"
        )
    items = list(value)
    for index, item in enumerate(items):
        if not isinstance(item, kind):
            raise TypeError(
                f"{argument}[{index}] must be a {kind.__name__}, got {type(item).__name__}"
            )
    return items


def _warn_kept(signal: str) -> None:
    _log.warning(
        "thunkscope.configure: a global %s provider is already set; keeping it "
        "(thunkscope's telemetry goes there, without thunkscope's exporter)",
        signal,
    )
