"""The record shapes both test collectors return (spans, metric points, log records), the
views that query them, and OTLP exporters aimed at a collector."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter


T = TypeVar("T")
Protocol = Literal["http/protobuf", "grpc"]

#: Longest sleep between two polls of a ``wait_for``.
POLL_INTERVAL = 0.02
#: How long a ``wait_for`` waits by default: generous, so that only telemetry that really
#: never arrives reaches it, however loaded the machine is.
WAIT_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------
# Record shapes shared by both collectors
# --------------------------------------------------------------------------------------------


class SpanEventRecord(TypedDict):
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


class SpanLinkRecord(TypedDict):
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


class SpanRecord(TypedDict):
    """One span. ``kind`` and ``status`` are the SDK enum member names (``SpanKind.X.name``)."""

    name: str
    kind: str  # "INTERNAL" | "SERVER" | "CLIENT" | "PRODUCER" | "CONSUMER"
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    parent_span_id: str | None  # None for a root span
    status: str  # "UNSET" | "OK" | "ERROR"
    status_message: str
    attributes: dict[str, Any]
    events: list[SpanEventRecord]
    event_names: list[str]
    links: list[SpanLinkRecord]
    start_time_unix_nano: int
    end_time_unix_nano: int
    resource: dict[str, Any]
    service_name: str | None
    scope_name: str
    scope_version: str


class MetricPoint(TypedDict):
    """One data point of one metric, with its metric's descriptor."""

    name: str
    description: str
    unit: str
    type: str  # "Sum" | "Gauge" | "Histogram" | "ExponentialHistogram" | "Summary"
    monotonic: bool | None  # Sum only
    temporality: str | None  # "CUMULATIVE" | "DELTA" (None for gauges)
    attributes: dict[str, Any]
    value: int | float | None  # Sum and Gauge
    count: int | None  # histograms and summaries
    sum: float | None
    min: float | None
    max: float | None
    explicit_bounds: list[float]
    bucket_counts: list[int]
    start_time_unix_nano: int
    time_unix_nano: int
    exemplars: list[dict[str, Any]]
    resource: dict[str, Any]
    service_name: str | None
    scope_name: str
    scope_version: str


class LogRecordData(TypedDict):
    body: Any  # str for a string body; int/float/bool/list/dict/bytes otherwise
    severity_text: str
    severity_number: int
    severity: str  # "INFO", "WARN", ... from the severity number ("UNSPECIFIED" when unset)
    attributes: dict[str, Any]
    trace_id: str | None
    span_id: str | None
    flags: int
    time_unix_nano: int
    observed_time_unix_nano: int
    resource: dict[str, Any]
    service_name: str | None
    scope_name: str
    scope_version: str


def attrs_match(actual: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    return wanted is None or all(k in actual and actual[k] == v for k, v in wanted.items())


def group_points(points: list[MetricPoint]) -> dict[str, list[MetricPoint]]:
    grouped: dict[str, list[MetricPoint]] = {}
    for point in points:
        grouped.setdefault(point["name"], []).append(point)
    return grouped


class Views:
    """Queries shared by both collectors; subclasses provide the three record lists."""

    def spans(self) -> list[SpanRecord]:
        raise NotImplementedError

    def metric_points(self) -> list[MetricPoint]:
        raise NotImplementedError

    def logs(self) -> list[LogRecordData]:
        raise NotImplementedError

    def metrics(self) -> dict[str, list[MetricPoint]]:
        """Metric name -> every data point received for it, in arrival order."""
        return group_points(self.metric_points())

    def spans_named(self, name: str) -> list[SpanRecord]:
        return [s for s in self.spans() if s["name"] == name]

    def points(self, name: str, attributes: Mapping[str, Any] | None = None) -> list[MetricPoint]:
        """Data points of metric ``name`` whose attributes include ``attributes``."""
        return [
            p
            for p in self.metric_points()
            if p["name"] == name and attrs_match(p["attributes"], attributes)
        ]

    def latest_point(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> MetricPoint | None:
        """The last data point received for ``name`` (attributes included), or None."""
        found = self.points(name, attributes)
        return found[-1] if found else None


def span_exporter(protocol: Protocol, http_base: str, grpc_base: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=grpc_base, insecure=True, timeout=5)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{http_base}/v1/traces", timeout=5)


def metric_exporter(
    protocol: Protocol, http_base: str, grpc_base: str, **kwargs: Any
) -> MetricExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint=grpc_base, insecure=True, timeout=5, **kwargs)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=f"{http_base}/v1/metrics", timeout=5, **kwargs)


def log_exporter(protocol: Protocol, http_base: str, grpc_base: str) -> LogRecordExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
            OTLPLogExporter as GrpcLogExporter,
        )

        return GrpcLogExporter(endpoint=grpc_base, insecure=True, timeout=5)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter(endpoint=f"{http_base}/v1/logs", timeout=5)


def timeout_message(what: str, timeout: float, tail: str) -> str:
    return f"{what} not satisfied within {timeout} s; collector output ends with:\n{tail[-3000:]}"


def new_span(res: dict[str, Any], scope: tuple[str, str]) -> SpanRecord:
    return SpanRecord(
        name="",
        kind="",
        trace_id="",
        span_id="",
        parent_span_id=None,
        status="UNSET",
        status_message="",
        attributes={},
        events=[],
        event_names=[],
        links=[],
        start_time_unix_nano=0,
        end_time_unix_nano=0,
        resource=res,
        service_name=res.get("service.name"),
        scope_name=scope[0],
        scope_version=scope[1],
    )


def new_point(descriptor: dict[str, Any]) -> MetricPoint:
    return MetricPoint(
        name=descriptor.get("name", ""),
        description=descriptor.get("description", ""),
        unit=descriptor.get("unit", ""),
        type=descriptor.get("type", ""),
        monotonic=descriptor.get("monotonic"),
        temporality=descriptor.get("temporality"),
        attributes={},
        value=None,
        count=None,
        sum=None,
        min=None,
        max=None,
        explicit_bounds=[],
        bucket_counts=[],
        start_time_unix_nano=0,
        time_unix_nano=0,
        exemplars=[],
        resource=descriptor["resource"],
        service_name=descriptor["resource"].get("service.name"),
        scope_name=descriptor["scope"][0],
        scope_version=descriptor["scope"][1],
    )


def new_log(res: dict[str, Any], scope: tuple[str, str]) -> LogRecordData:
    return LogRecordData(
        body=None,
        severity_text="",
        severity_number=0,
        severity="UNSPECIFIED",
        attributes={},
        trace_id=None,
        span_id=None,
        flags=0,
        time_unix_nano=0,
        observed_time_unix_nano=0,
        resource=res,
        service_name=res.get("service.name"),
        scope_name=scope[0],
        scope_version=scope[1],
    )
