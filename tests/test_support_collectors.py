"""The real-collector fixtures parse exactly what the OpenTelemetry SDK sends them."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry._logs import Logger, SeverityNumber
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer

from support import rotel as rotel_module
from support.collectors import (
    OtelTapCollector,
    RotelCollector,
    SpanRecord,
    parse_rotel_output,
)

PROTOCOLS = ["http/protobuf", "grpc"]
RESOURCE = Resource.create({"service.name": "collectors-test", "deployment.environment": "ci"})
SPAN_ATTRIBUTES: dict[str, Any] = {
    "thunkscope.stream.name": "chat completion",
    "thunkscope.stream.items": 3,
    "thunkscope.stream.time_to_first_item": 0.25,
    "thunkscope.stream.ok": True,
    "thunkscope.tags": ["a", "b"],
    "thunkscope.sizes": [1, 2],
    "thunkscope.empty": "",
    "thunkscope.tricky": "k: v, (x))",
    "thunkscope.multiline": "line one\nline two",
}


@dataclass
class Sdk:
    """Locally constructed SDK providers (never the global ones), shut down by the fixture."""

    tracer: Tracer
    meter: Meter
    logger: Logger
    meter_provider: MeterProvider

    def flush_metrics(self) -> None:
        assert self.meter_provider.force_flush(timeout_millis=5000)


@contextmanager
def sdk(
    span_exporter: SpanExporter, metric_exporter: MetricExporter, log_exporter: LogRecordExporter
) -> Iterator[Sdk]:
    tracer_provider = TracerProvider(resource=RESOURCE)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    logger_provider = LoggerProvider(resource=RESOURCE)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    try:
        yield Sdk(
            tracer=tracer_provider.get_tracer("thunkscope", "9.9.9"),
            meter=meter_provider.get_meter("thunkscope", "9.9.9"),
            logger=logger_provider.get_logger("thunkscope", "9.9.9"),
            meter_provider=meter_provider,
        )
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        logger_provider.shutdown()


@contextmanager
def sdk_for(collector: RotelCollector, protocol: Any) -> Iterator[Sdk]:
    with sdk(
        collector.span_exporter(protocol),
        collector.metric_exporter(protocol),
        collector.log_exporter(protocol),
    ) as s:
        yield s


def emit_stream_spans(tracer: Tracer) -> tuple[str, str, str]:
    """A PRODUCER span with attributes and events, and an INTERNAL child that fails."""
    with tracer.start_as_current_span(
        "send_to_queue", kind=SpanKind.PRODUCER, attributes=SPAN_ATTRIBUTES
    ) as parent:
        parent.add_event("stream.first_item", {"thunkscope.stream.items": 1})
        parent.add_event("stream.sentinel")
        with tracer.start_as_current_span("client_cache.get") as child:
            child.set_status(Status(StatusCode.ERROR, "cache (broken): boom"))
    ctx, child_ctx = parent.get_span_context(), child.get_span_context()
    return (
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        format(child_ctx.span_id, "016x"),
    )


def assert_stream_spans(spans: list[SpanRecord], ids: tuple[str, str, str]) -> None:
    trace_id, parent_id, child_id = ids
    by_name = {s["name"]: s for s in spans}
    assert sorted(by_name) == ["client_cache.get", "send_to_queue"]
    parent, child = by_name["send_to_queue"], by_name["client_cache.get"]
    assert parent["kind"] == "PRODUCER"
    assert parent["attributes"] == SPAN_ATTRIBUTES
    assert parent["event_names"] == ["stream.first_item", "stream.sentinel"]
    assert parent["events"][0]["attributes"] == {"thunkscope.stream.items": 1}
    assert parent["status"] == "UNSET"
    assert (parent["trace_id"], parent["span_id"], parent["parent_span_id"]) == (
        trace_id,
        parent_id,
        None,
    )
    assert child["kind"] == "INTERNAL"
    assert (child["status"], child["status_message"]) == ("ERROR", "cache (broken): boom")
    assert (child["trace_id"], child["span_id"], child["parent_span_id"]) == (
        trace_id,
        child_id,
        parent_id,
    )
    assert child["attributes"] == {}
    assert parent["end_time_unix_nano"] >= child["end_time_unix_nano"]
    assert child["start_time_unix_nano"] >= parent["start_time_unix_nano"]


def record_all_instruments(meter: Meter) -> None:
    meter.create_counter("thunkscope.cache.lookups", unit="{lookup}").add(
        3, {"thunkscope.cache.name": "clients", "thunkscope.cache.result": "hit"}
    )
    meter.create_counter("thunkscope.cache.lookups.float").add(1.5)
    histogram = meter.create_histogram("thunkscope.stream.duration", unit="s")
    histogram.record(0.5, {"thunkscope.stream.name": "chat"})
    histogram.record(2.0, {"thunkscope.stream.name": "chat"})
    meter.create_up_down_counter("thunkscope.stream.active", unit="{stream}").add(
        -2, {"thunkscope.stream.name": "chat"}
    )
    meter.create_gauge("thunkscope.cache.entry.limit").set(7.25, {"thunkscope.cache.name": "c"})

    def observe(_options: CallbackOptions) -> list[Observation]:
        return [Observation(11, {"thunkscope.cache.name": "c"})]

    meter.create_observable_gauge("thunkscope.cache.entry.count", callbacks=[observe])


def assert_all_instruments(points: dict[str, list[Any]], *, with_resource: bool) -> None:
    lookups = points["thunkscope.cache.lookups"][-1]
    assert (lookups["type"], lookups["monotonic"], lookups["temporality"]) == (
        "Sum",
        True,
        "CUMULATIVE",
    )
    assert lookups["value"] == 3
    assert lookups["unit"] == "{lookup}"
    assert lookups["attributes"] == {
        "thunkscope.cache.name": "clients",
        "thunkscope.cache.result": "hit",
    }
    assert points["thunkscope.cache.lookups.float"][-1]["value"] == 1.5
    duration = points["thunkscope.stream.duration"][-1]
    assert duration["type"] == "Histogram"
    assert (duration["count"], duration["sum"], duration["min"], duration["max"]) == (
        2,
        2.5,
        0.5,
        2.0,
    )
    assert duration["explicit_bounds"][:3] == [0, 5, 10]
    assert sum(duration["bucket_counts"]) == 2
    assert duration["bucket_counts"][1] == 2  # (0, 5]
    assert duration["attributes"] == {"thunkscope.stream.name": "chat"}
    active = points["thunkscope.stream.active"][-1]
    assert (active["type"], active["monotonic"], active["value"]) == ("Sum", False, -2)
    limit = points["thunkscope.cache.entry.limit"][-1]
    assert (limit["type"], limit["temporality"], limit["value"]) == ("Gauge", None, 7.25)
    count = points["thunkscope.cache.entry.count"][-1]
    assert (count["type"], count["value"], count["attributes"]) == (
        "Gauge",
        11,
        {"thunkscope.cache.name": "c"},
    )
    if with_resource:
        assert lookups["service_name"] == "collectors-test"
        assert (lookups["scope_name"], lookups["scope_version"]) == ("thunkscope", "9.9.9")


def emit_logs(s: Sdk) -> tuple[str, str]:
    with s.tracer.start_as_current_span("log parent") as span:
        s.logger.emit(
            body="stream.completed",
            severity_number=SeverityNumber.INFO,
            severity_text="info",
            attributes={"stream_id": "s-1", "items": 3},
        )
    s.logger.emit(body="cache.evicted", severity_number=SeverityNumber.WARN)
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def assert_logs(logs: list[Any], ids: tuple[str, str]) -> None:
    assert [r["body"] for r in logs] == ["stream.completed", "cache.evicted"]
    inside, outside = logs
    assert (inside["trace_id"], inside["span_id"]) == ids
    assert (inside["severity_number"], inside["severity"], inside["severity_text"]) == (
        9,
        "INFO",
        "info",
    )
    assert inside["attributes"] == {"stream_id": "s-1", "items": 3}
    assert (outside["trace_id"], outside["span_id"], outside["severity"]) == (None, None, "WARN")


class TestRotel:
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_spans(self, rotel: RotelCollector, protocol: str) -> None:
        """Spans arrive with exact name, kind, typed attributes, events, status, ids, resource."""
        with sdk_for(rotel, protocol) as s:
            ids = emit_stream_spans(s.tracer)
            spans = rotel.wait_for_spans(2)
        assert_stream_spans(spans, ids)
        assert spans[0]["resource"]["service.name"] == "collectors-test"
        assert spans[0]["resource"]["deployment.environment"] == "ci"
        assert spans[0]["service_name"] == "collectors-test"
        assert (spans[0]["scope_name"], spans[0]["scope_version"]) == ("thunkscope", "9.9.9")

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_metrics(self, rotel: RotelCollector, protocol: str) -> None:
        """Counter, float counter, histogram, up-down counter, gauge and observable gauge
        points parse to their exact types, temporalities, attributes and values."""
        with sdk_for(rotel, protocol) as s:
            record_all_instruments(s.meter)
            s.flush_metrics()
            rotel.wait_for_point("thunkscope.cache.entry.count")
        # Leaving the block shuts the SDK down, which exports once more; the last block may
        # still be arriving. Its last instrument (created last) marks it whole.
        rotel.wait_for(lambda: len(rotel.points("thunkscope.cache.entry.count")) >= 2)
        assert_all_instruments(rotel.metrics(), with_resource=True)

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_logs(self, rotel: RotelCollector, protocol: str) -> None:
        """Log records carry their body, severity, attributes, and the active span's ids."""
        with sdk_for(rotel, protocol) as s:
            ids = emit_logs(s)
            logs = rotel.wait_for_logs(2)
        assert_logs(logs, ids)
        assert logs[0]["service_name"] == "collectors-test"

    def test_delta_temporality(self, rotel: RotelCollector) -> None:
        """A delta-temporality counter prints each export's increment, marked DELTA."""
        exporter = rotel.metric_exporter(
            preferred_temporality={
                Counter: AggregationTemporality.DELTA,
                Histogram: AggregationTemporality.DELTA,
            }
        )
        with sdk(rotel.span_exporter(), exporter, rotel.log_exporter()) as s:
            counter = s.meter.create_counter("thunkscope.cache.evictions")
            counter.add(2, {"thunkscope.cache.name": "c"})
            s.flush_metrics()
            counter.add(5, {"thunkscope.cache.name": "c"})
            s.flush_metrics()
            rotel.wait_for(lambda: len(rotel.points("thunkscope.cache.evictions")) >= 2)
        points = rotel.points("thunkscope.cache.evictions", {"thunkscope.cache.name": "c"})
        assert [p["value"] for p in points[:2]] == [2, 5]
        assert {p["temporality"] for p in points} == {"DELTA"}

    def test_exemplars_links_and_exceptions(self, rotel: RotelCollector) -> None:
        """Exemplars, span links and multi-line exception events parse without corrupting
        the records around them."""
        with sdk_for(rotel, "http/protobuf") as s:
            counter = s.meter.create_counter("thunkscope.event_loop.lookups")
            with s.tracer.start_as_current_span("first") as first:
                counter.add(1, {"thunkscope.event_loop.found": True})
                first.record_exception(ValueError("bad\nvalue)"))
            with s.tracer.start_as_current_span("second", links=[Link(first.get_span_context())]):
                pass
            s.flush_metrics()
            point = rotel.wait_for_point("thunkscope.event_loop.lookups")
            spans = rotel.wait_for_spans(2)
        first_id = format(first.get_span_context().span_id, "016x")
        assert point["value"] == 1
        assert point["attributes"] == {"thunkscope.event_loop.found": True}
        assert [e["span_id"] for e in point["exemplars"]] == [first_id]
        exception = spans[0]["events"][0]
        assert exception["name"] == "exception"
        assert exception["attributes"]["exception.type"] == "ValueError"
        assert exception["attributes"]["exception.message"] == "bad\nvalue)"
        assert spans[1]["links"][0]["span_id"] == first_id
        assert spans[1]["name"] == "second"

    async def test_wait_for_async(self, rotel: RotelCollector) -> None:
        """wait_for_async polls without blocking the event loop and returns the truthy result."""
        with sdk_for(rotel, "http/protobuf") as s:
            with s.tracer.start_as_current_span("async span"):
                pass
            spans = await rotel.wait_for_async(lambda: rotel.spans_named("async span"))
        assert [x["name"] for x in spans] == ["async span"]

    def test_wait_for_times_out(self, rotel: RotelCollector) -> None:
        """wait_for raises TimeoutError, quoting the collector's output, when nothing matches."""
        with pytest.raises(TimeoutError, match="Starting Rotel"):
            rotel.wait_for(lambda: rotel.spans_named("never"), timeout=0.1)

    def test_endpoints_and_teardown(self, tmp_path: Path) -> None:
        """The collector listens on its two advertised loopback ports, and stop() ends the
        process and removes its temporary directory."""
        collector = RotelCollector()
        with collector:
            assert collector.is_running()
            assert collector.grpc_endpoint == f"http://127.0.0.1:{collector.grpc_port}"
            assert collector.http_endpoint == f"http://127.0.0.1:{collector.http_port}"
            assert collector.grpc_port != collector.http_port
            for port in (collector.grpc_port, collector.http_port):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            output_path = collector.output_path
            assert output_path is not None
            assert output_path.exists()
            assert "Starting Rotel" in collector.output()
        assert not collector.is_running()
        assert not output_path.exists()

    def test_port_taken_by_another_process(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When another process holds the chosen port, startup retries on fresh ports instead
        of mistaking the other listener for rotel."""
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            ports = iter([taken, rotel_module.free_port()])
            real_free_port = rotel_module.free_port
            monkeypatch.setattr(rotel_module, "free_port", lambda: next(ports, real_free_port()))
            with RotelCollector(tmp_path) as collector:
                assert taken not in (collector.grpc_port, collector.http_port)
                assert collector.is_running()
            logs = [p.read_text() for p in tmp_path.glob("rotel-*.log")]
            assert len(logs) == 2
            assert any("Address already in use" in text for text in logs)

    def test_killed_collector_is_reported(self, rotel: RotelCollector) -> None:
        """A collector that died makes wait_for fail at once instead of waiting out the
        timeout."""
        assert rotel.pid is not None
        subprocess.run(["kill", "-9", str(rotel.pid)], check=True)
        with pytest.raises(RuntimeError, match="exited"):
            rotel.wait_for(lambda: False, timeout=5)


class TestRotelParser:
    def test_nested_and_unusual_values(self) -> None:
        """Map, Slice, Bytes, Empty and unbalanced-parenthesis strings parse to Python values."""
        text = (
            "ResourceLog #0\nResource SchemaURL: \nResource attributes:\n"
            "     -> service.name: Str(svc)\nScopeLogs #0\nScopeLogs SchemaURL: \n"
            "InstrumentationScope thunkscope 1.0\nLogRecord #0\nObservedTimestamp: 5\n"
            "Timestamp: 0\nSeverityText: \nSeverityNumber: SEVERITY_NUMBER_ERROR(17)\n"
            "Body: Map(event:Str(a, b)), n:Int(1), l:Slice(Str(x), Double(2.5)), e:Empty)\n"
            "Attributes:\n     -> raw: Bytes([0, 255])\n     -> s: Str(x)) y\nz)\n"
            "    Trace ID       : \n    Span ID        : \nFlags: 0\n"
        )
        spans, points, logs = parse_rotel_output(text)
        assert (spans, points) == ([], [])
        (log,) = logs
        assert log["body"] == {"event": "a, b)", "n": 1, "l": ["x", 2.5], "e": None}
        assert log["attributes"] == {"raw": b"\x00\xff", "s": "x)) y\nz"}
        assert (log["severity"], log["severity_number"], log["service_name"]) == (
            "ERROR",
            17,
            "svc",
        )
        assert (log["scope_name"], log["scope_version"]) == ("thunkscope", "1.0")


class TestOtelTap:
    async def test_spans(self, oteltap: OtelTapCollector) -> None:
        """Spans arrive with exact name, kind, typed attributes, events, status and ids
        (and no resource)."""
        with sdk(oteltap.span_exporter(), oteltap.metric_exporter(), oteltap.log_exporter()) as s:
            ids = emit_stream_spans(s.tracer)
            spans = await oteltap.wait_for_spans(2)
        assert_stream_spans(spans, ids)
        assert (spans[0]["resource"], spans[0]["service_name"]) == ({}, None)

    async def test_spans_sent_before_waiting_are_kept(self, oteltap: OtelTapCollector) -> None:
        """Spans that arrived before anyone waited for them are recorded, not dropped."""
        with sdk(oteltap.span_exporter(), oteltap.metric_exporter(), oteltap.log_exporter()) as s:
            for i in range(3):
                with s.tracer.start_as_current_span(f"early {i}"):
                    pass
            await oteltap.wait_for_spans(3)
            spans = await oteltap.wait_for_spans(1, name="early 1")
        assert [x["name"] for x in spans] == ["early 1"]
        assert [x["name"] for x in oteltap.spans()] == ["early 0", "early 1", "early 2"]

    async def test_metrics(self, oteltap: OtelTapCollector) -> None:
        """Metric points of every instrument kind parse to exact types, attributes and values."""
        with sdk(oteltap.span_exporter(), oteltap.metric_exporter(), oteltap.log_exporter()) as s:
            record_all_instruments(s.meter)
            s.flush_metrics()
            await oteltap.wait_for_point("thunkscope.cache.entry.count")
        assert_all_instruments(oteltap.metrics(), with_resource=False)

    async def test_logs(self, oteltap: OtelTapCollector) -> None:
        """Log records carry their body, severity, attributes, and the active span's ids."""
        with sdk(oteltap.span_exporter(), oteltap.metric_exporter(), oteltap.log_exporter()) as s:
            ids = emit_logs(s)
            logs = await oteltap.wait_for_logs(2)
        assert_logs(logs, ids)

    async def test_wait_times_out(self, oteltap: OtelTapCollector) -> None:
        """Waiting for spans that never come raises TimeoutError after the timeout."""
        with pytest.raises(TimeoutError, match="0 spans"):
            await oteltap.wait_for_spans(1, timeout=0.1)
