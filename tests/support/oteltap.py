"""oteltap's in-process OTLP/HTTP receiver as a test collector, its protobuf records turned
into the records of `support.records`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from support.loopback import free_port
from support.records import (
    WAIT_TIMEOUT_S,
    LogRecordData,
    MetricPoint,
    SpanEventRecord,
    SpanLinkRecord,
    SpanRecord,
    T,
    Views,
    log_exporter,
    metric_exporter,
    new_log,
    new_point,
    span_exporter,
)

if TYPE_CHECKING:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as PbLogRecord
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric as PbMetric
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter
    from oteltap import OtelTapHttpProtobufReceiver


# --------------------------------------------------------------------------------------------
# oteltap
# --------------------------------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return data.hex()


def _any_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _kv(value.kvlist_value.values)
    return getattr(value, which)


def _kv(attributes: Any) -> dict[str, Any]:
    kvs: list[KeyValue] = list(attributes)
    return {kv.key: _any_value(kv.value) for kv in kvs}


def _span_from_pb(span: PbSpan) -> SpanRecord:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    events = [
        SpanEventRecord(name=e.name, time_unix_nano=e.time_unix_nano, attributes=_kv(e.attributes))
        for e in span.events
    ]
    return SpanRecord(
        name=span.name,
        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        trace_id=_hex(span.trace_id),
        span_id=_hex(span.span_id),
        parent_span_id=_hex(span.parent_span_id) or None,
        status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        status_message=span.status.message,
        attributes=_kv(span.attributes),
        events=events,
        event_names=[e["name"] for e in events],
        links=[
            SpanLinkRecord(
                trace_id=_hex(link.trace_id),
                span_id=_hex(link.span_id),
                attributes=_kv(link.attributes),
            )
            for link in span.links
        ],
        start_time_unix_nano=span.start_time_unix_nano,
        end_time_unix_nano=span.end_time_unix_nano,
        resource={},
        service_name=None,
        scope_name="",
        scope_version="",
    )


def _points_from_pb(metric: PbMetric) -> list[MetricPoint]:
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

    which = metric.WhichOneof("data")
    if which is None:
        return []
    data = getattr(metric, which)
    kind = {
        "sum": "Sum",
        "gauge": "Gauge",
        "histogram": "Histogram",
        "exponential_histogram": "ExponentialHistogram",
        "summary": "Summary",
    }[which]
    temporality = None
    if which in ("sum", "histogram", "exponential_histogram"):
        temporality = AggregationTemporality.Name(data.aggregation_temporality).removeprefix(
            "AGGREGATION_TEMPORALITY_"
        )
    points: list[MetricPoint] = []
    for dp in data.data_points:
        point = new_point(
            {
                "name": metric.name,
                "description": metric.description,
                "unit": metric.unit,
                "type": kind,
                "monotonic": data.is_monotonic if which == "sum" else None,
                "temporality": temporality,
                "resource": {},
                "scope": ("", ""),
            }
        )
        point["service_name"] = None
        point["attributes"] = _kv(dp.attributes)
        point["start_time_unix_nano"] = dp.start_time_unix_nano
        point["time_unix_nano"] = dp.time_unix_nano
        if which in ("sum", "gauge"):
            point["value"] = getattr(dp, dp.WhichOneof("value") or "as_int")
        else:
            point["count"] = dp.count
            point["sum"] = dp.sum if which == "summary" or dp.HasField("sum") else None
            if which != "summary":
                point["min"] = dp.min if dp.HasField("min") else None
                point["max"] = dp.max if dp.HasField("max") else None
            if which == "histogram":
                point["explicit_bounds"] = list(dp.explicit_bounds)
                point["bucket_counts"] = list(dp.bucket_counts)
        if which != "summary":
            point["exemplars"] = [
                {
                    "trace_id": _hex(e.trace_id),
                    "span_id": _hex(e.span_id),
                    "time_unix_nano": e.time_unix_nano,
                    "value": getattr(e, e.WhichOneof("value") or "as_int"),
                    "attributes": _kv(e.filtered_attributes),
                }
                for e in dp.exemplars
            ]
        points.append(point)
    return points


def _log_from_pb(record: PbLogRecord) -> LogRecordData:
    from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber

    log = new_log({}, ("", ""))
    log["service_name"] = None
    log["body"] = _any_value(record.body)
    log["severity_text"] = record.severity_text
    log["severity_number"] = record.severity_number
    log["severity"] = SeverityNumber.Name(record.severity_number).removeprefix("SEVERITY_NUMBER_")
    log["attributes"] = _kv(record.attributes)
    log["trace_id"] = _hex(record.trace_id) or None
    log["span_id"] = _hex(record.span_id) or None
    log["flags"] = record.flags
    log["time_unix_nano"] = record.time_unix_nano
    log["observed_time_unix_nano"] = record.observed_time_unix_nano
    return log


class OtelTapCollector(Views):
    """oteltap's in-process OTLP/HTTP protobuf receiver, recording everything from start.

    ``async with OtelTapCollector() as tap: ...``. OTLP/HTTP protobuf only: no gRPC, no gzip
    (the SDK's HTTP exporters send uncompressed unless told otherwise). Spans come without
    their resource and scope. ``raw_spans``, ``raw_metrics`` and ``raw_logs`` hold the protobuf
    messages as received.
    """

    def __init__(self, *, startup_attempts: int = 5) -> None:
        self._attempts = startup_attempts
        self._receiver: OtelTapHttpProtobufReceiver | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: asyncio.Event | None = None
        self.port = 0
        self.raw_spans: list[PbSpan] = []
        self.raw_metrics: list[PbMetric] = []
        self.raw_logs: list[PbLogRecord] = []

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: base of ``/v1/traces``, ``/v1/metrics``, ``/v1/logs``."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> OtelTapCollector:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> OtelTapCollector:
        from oteltap import (
            OtelTapHttpProtobufReceiver,
            OtelTapHttpProtobufReceiverSettings,
            OtelTapInitializationError,
        )

        if self._receiver is not None:
            return self
        self._changed = asyncio.Event()
        for attempt in range(self._attempts):
            self.port = free_port()
            receiver = OtelTapHttpProtobufReceiver(
                OtelTapHttpProtobufReceiverSettings(http_port=self.port)
            )
            try:
                await receiver.start()
            except OtelTapInitializationError:
                if attempt == self._attempts - 1:
                    raise
                continue
            self._receiver = receiver
            break
        assert self._receiver is not None
        self._tasks = [
            asyncio.create_task(self._collect(self._receiver.stream_traces(), self.raw_spans)),
            asyncio.create_task(self._collect(self._receiver.stream_metrics(), self.raw_metrics)),
            asyncio.create_task(self._collect(self._receiver.stream_logs(), self.raw_logs)),
        ]
        # One turn of the loop runs each task up to its first queue.get(): subscribed.
        await asyncio.sleep(0)
        return self

    async def _collect(self, stream: AsyncIterator[Any], into: list[Any]) -> None:
        async for message in stream:
            into.append(message)
            if self._changed is not None:
                self._changed.set()

    async def stop(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is None:
            return
        await receiver.stop()  # closes the channels, which ends the collecting tasks
        for task in self._tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- views -------------------------------------------------------------------------------

    def spans(self) -> list[SpanRecord]:
        return [_span_from_pb(s) for s in self.raw_spans]

    def metric_points(self) -> list[MetricPoint]:
        return [p for m in self.raw_metrics for p in _points_from_pb(m)]

    def logs(self) -> list[LogRecordData]:
        return [_log_from_pb(r) for r in self.raw_logs]

    # -- waiting -----------------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = WAIT_TIMEOUT_S,  # noqa: ASYNC109
    ) -> T:
        """Re-check ``predicate()`` whenever telemetry arrives; return its first truthy result.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        assert self._changed is not None, "start() the collector first"
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"predicate not satisfied within {timeout} s; received so far "
                    f"{len(self.raw_spans)} spans {[s.name for s in self.raw_spans][-20:]}, "
                    f"{len(self.raw_metrics)} metrics, {len(self.raw_logs)} log records"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def wait_for_spans(
        self,
        count: int = 1,
        *,
        name: str | None = None,
        timeout: float = WAIT_TIMEOUT_S,  # noqa: ASYNC109
    ) -> list[SpanRecord]:
        """Wait until ``count`` spans (named ``name``, if given) arrived; return all of them."""

        def matching() -> list[SpanRecord]:
            found = [s for s in self.spans() if name is None or s["name"] == name]
            return found if len(found) >= count else []

        return await self.wait_for(matching, timeout)

    async def wait_for_point(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        where: Callable[[MetricPoint], bool] | None = None,
        timeout: float = WAIT_TIMEOUT_S,  # noqa: ASYNC109
    ) -> MetricPoint:
        """Wait for a data point of ``name`` with ``attributes`` (and ``where``); return the
        latest such point."""

        def latest() -> MetricPoint | None:
            found = [p for p in self.points(name, attributes) if where is None or where(p)]
            return found[-1] if found else None

        return await self.wait_for(latest, timeout)

    async def wait_for_logs(
        self,
        count: int = 1,
        *,
        where: Callable[[LogRecordData], bool] | None = None,
        timeout: float = WAIT_TIMEOUT_S,  # noqa: ASYNC109
    ) -> list[LogRecordData]:
        """Wait until ``count`` log records (matching ``where``) arrived; return all of them."""

        def matching() -> list[LogRecordData]:
            found = [r for r in self.logs() if where is None or where(r)]
            return found if len(found) >= count else []

        return await self.wait_for(matching, timeout)

    # -- exporters pointed at this collector (OTLP/HTTP only) --------------------------------

    def span_exporter(self) -> SpanExporter:
        return span_exporter("http/protobuf", self.endpoint, "")

    def metric_exporter(self, **kwargs: Any) -> MetricExporter:
        return metric_exporter("http/protobuf", self.endpoint, "", **kwargs)

    def log_exporter(self) -> LogRecordExporter:
        return log_exporter("http/protobuf", self.endpoint, "")
