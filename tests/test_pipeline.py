"""deploy/otel-collector.yaml as shipped, run by the real collector into a real Jaeger v2.

The collector (built from collector/manifest.yaml) runs the shipped config plus the
overlay of tests/test_collector.py, which only re-points endpoints (and sends logs to a
file exporter, as there is no Loki here); a thunkscope workload (completed, stalled,
timed-out and failed streams, each consumed through iter_queue, and cache traffic) is
exported to it over OTLP/HTTP and over gRPC; Jaeger's query API then finds the traces by
tag and by event, whole, and the logs file holds every record with its trace id.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.otelcol import RunningJaeger, collector, jaeger
from support.pipeline_workload import STALLED_AT
from support.stack_prometheus import prometheus
from support.stack_tools import REPO_ROOT, http_get, poll, require_binary
from test_collector import loopback_endpoints, overlay_for, write_overlay
from thunkscope import names as n

SHIPPED = REPO_ROOT / "deploy" / "otel-collector.yaml"
WORKLOAD = Path(__file__).parent / "support" / "pipeline_workload.py"
SERVICE = "thunkscope-pipeline"
WAIT_S = 60.0

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Pipeline:
    """A workload's run through the shipped collector into Jaeger and the logs file."""

    jaeger: RunningJaeger
    logs_file: Path
    workload: dict[str, Any]
    prometheus_exporter: str
    workdir: Path


@pytest.fixture(scope="module", params=["http/protobuf", "grpc"])
def pipeline(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Jaeger, the collector on the shipped config plus the overlay, and the workload run once
    against it over the protocol of the parameter."""
    protocol: str = request.param
    workdir = tmp_path_factory.mktemp(f"pipeline-{protocol.replace('/', '-')}")
    logs_file = workdir / "logs.json"
    ends = loopback_endpoints()
    with jaeger(workdir / "jaeger") as running_jaeger:
        overlay = write_overlay(
            workdir / "overlay.yaml", overlay_for(ends, running_jaeger.otlp_grpc, logs_file)
        )
        with collector([SHIPPED, overlay], workdir / "otelcol.log", health_endpoint=ends.health):
            endpoint = (
                f"http://{ends.otlp_http}"
                if protocol == "http/protobuf"
                else f"http://{ends.otlp_grpc}"
            )
            result = subprocess.run(
                [sys.executable, str(WORKLOAD), endpoint, protocol],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            workload = json.loads(result.stdout.splitlines()[-1])
            yield Pipeline(running_jaeger, logs_file, workload, ends.prometheus, workdir)


def jaeger_search(running: RunningJaeger, tags: dict[str, str]) -> list[dict[str, Any]]:
    """Jaeger's trace search (the UI's /api/traces) for the workload's service by tags."""
    query = urllib.parse.urlencode(
        {"service": SERVICE, "tags": json.dumps(tags), "lookback": "1h", "limit": "100"}
    )
    answer = json.loads(http_get(f"{running.query_url}/api/traces?{query}", timeout=10))
    traces: list[dict[str, Any]] = answer["data"] or []
    return traces


def tag(span: dict[str, Any], key: str) -> Any:
    """The value of a span's tag `key` (None when absent)."""
    return next((t["value"] for t in span["tags"] if t["key"] == key), None)


def assert_whole(trace: dict[str, Any], root_name: str) -> dict[str, dict[str, Any]]:
    """Asserts the trace is the root request span, the send_to_queue producer and its
    process_queue consumer, parented under the root and the consumer linked to the
    producer; returns its spans by name."""
    spans = {span["operationName"]: span for span in trace["spans"]}
    assert sorted(spans) == sorted([root_name, n.SPAN_SEND_TO_QUEUE, n.SPAN_PROCESS_QUEUE])
    root = spans[root_name]
    assert root["references"] == []
    producer, consumer = spans[n.SPAN_SEND_TO_QUEUE], spans[n.SPAN_PROCESS_QUEUE]
    trace_id = trace["traceID"]
    for child in (producer, consumer):
        parent = {"refType": "CHILD_OF", "traceID": trace_id, "spanID": root["spanID"]}
        assert parent in child["references"]
    link = {"refType": "FOLLOWS_FROM", "traceID": trace_id, "spanID": producer["spanID"]}
    assert link in consumer["references"]
    return spans


class TestShippedPipeline:
    """deploy/otel-collector.yaml, run by the real collector, carries the workload to Jaeger
    and its logs to the file exporter."""

    def test_jaeger_finds_the_timed_out_stream_by_tag(self, pipeline: Pipeline) -> None:
        """Searching outcome=timeout returns the timed-out stream's trace, whole."""

        def found() -> list[dict[str, Any]]:
            traces = jaeger_search(pipeline.jaeger, {n.STREAM_OUTCOME: n.OUTCOME_TIMEOUT})
            assert [t["traceID"] for t in traces] == [pipeline.workload["traces"]["timeout"]]
            assert_whole(traces[0], "request timeout")
            return traces

        traces = poll(found, timeout=WAIT_S, what="Jaeger finding the timed-out trace")
        producer = assert_whole(traces[0], "request timeout")[n.SPAN_SEND_TO_QUEUE]
        assert tag(producer, n.STREAM_OUTCOME) == n.OUTCOME_TIMEOUT
        events = [
            f["value"] for log in producer["logs"] for f in log["fields"] if f["key"] == "event"
        ]
        assert n.EVENT_TIMEOUT in events

    def test_jaeger_finds_the_stalled_stream_by_its_event(self, pipeline: Pipeline) -> None:
        """Searching the stream.stalled event's item count returns the stalled, then completed,
        trace, whole, its producer carrying that event."""
        # Jaeger matches a search tag against span, resource and event attributes (not event
        # names): the stall event's thunkscope.stream.items is 3 in this workload only.
        stalled_at = {n.STREAM_ITEMS: str(STALLED_AT)}

        def found() -> list[dict[str, Any]]:
            traces = jaeger_search(pipeline.jaeger, stalled_at)
            assert [t["traceID"] for t in traces] == [pipeline.workload["traces"]["stalled"]]
            assert_whole(traces[0], "request stalled")
            return traces

        traces = poll(found, timeout=WAIT_S, what="Jaeger finding the stalled trace")
        producer = assert_whole(traces[0], "request stalled")[n.SPAN_SEND_TO_QUEUE]
        assert tag(producer, n.STREAM_OUTCOME) == n.OUTCOME_COMPLETED
        stall = [
            {f["key"]: f["value"] for f in log["fields"]}
            for log in producer["logs"]
            if {"key": "event", "type": "string", "value": n.EVENT_STALLED} in log["fields"]
        ]
        assert len(stall) == 1
        assert stall[0][n.STREAM_ITEMS] == STALLED_AT
        assert pipeline.workload["items"]["stalled"] == 5

    def test_every_outcome_is_searchable(self, pipeline: Pipeline) -> None:
        """Each outcome tag finds exactly the trace of the stream that ended that way."""
        traces = pipeline.workload["traces"]
        expected = {
            n.OUTCOME_COMPLETED: sorted([traces["completed"], traces["stalled"]]),
            n.OUTCOME_ERROR: [traces["error"]],
        }

        def found() -> None:
            for outcome, trace_ids in expected.items():
                traces = jaeger_search(pipeline.jaeger, {n.STREAM_OUTCOME: outcome})
                assert sorted(t["traceID"] for t in traces) == trace_ids

        poll(found, timeout=WAIT_S, what="Jaeger finding every outcome")

    def test_every_log_record_carries_its_trace_id(self, pipeline: Pipeline) -> None:
        """Every log record the file exporter wrote has a trace id of one of the workload's traces
        or cache spans, and every stream's trace has log records."""

        def records() -> list[dict[str, Any]]:
            found = [
                record
                for line in pipeline.logs_file.read_text().splitlines()
                for resource in json.loads(line)["resourceLogs"]
                for scope in resource["scopeLogs"]
                for record in scope["logRecords"]
            ]
            trace_ids = {record.get("traceId", "") for record in found}
            assert set(pipeline.workload["traces"].values()) <= trace_ids
            return found

        found = poll(records, timeout=WAIT_S, what="the logs file holding every stream's logs")
        assert [r for r in found if not r.get("traceId")] == []

    def test_prometheus_counts_the_workload(self, pipeline: Pipeline) -> None:
        """Debian's Prometheus, scraping the collector's prometheus exporter as compose does,
        counts exactly the workload's streams by outcome, its stall and its cache traffic."""
        job = f"{SERVICE}-scrape"
        with prometheus(
            require_binary("prometheus"),
            pipeline.workdir / "prometheus",
            job=job,
            targets=[pipeline.prometheus_exporter],
        ) as running:

            def by(expr: str, label: str) -> dict[str, float]:
                samples = running.api.instant(expr)
                return {sample.labels.get(label, ""): sample.value for sample in samples}

            def counted() -> None:
                outcome = n.STREAM_OUTCOME.replace(".", "_")
                result = n.CACHE_RESULT.replace(".", "_")
                streams = by(
                    f'sum by ({outcome}) (thunkscope_stream_duration_seconds_count{{job="{job}"}})',
                    outcome,
                )
                assert streams == {
                    n.OUTCOME_COMPLETED: 2.0,
                    n.OUTCOME_TIMEOUT: 1.0,
                    n.OUTCOME_ERROR: 1.0,
                }
                assert by(f'sum(thunkscope_stream_stalls_total{{job="{job}"}})', "") == {"": 1.0}
                lookups = by(
                    f'sum by ({result}) (thunkscope_cache_lookups_total{{job="{job}"}})', result
                )
                assert lookups == {"hit": 1.0, "miss": 1.0}
                evictions = by(f'sum(thunkscope_cache_evictions_total{{job="{job}"}})', "")
                assert evictions == {"": 1.0}

            poll(counted, timeout=WAIT_S, what="Prometheus counting the workload")
