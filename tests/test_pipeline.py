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
import math
import re
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
from support.stack_dashboards import Query, load_dashboards, queries, substitute
from support.stack_prometheus import PrometheusAPI, prometheus
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
            n.OUTCOME_COMPLETED: sorted(
                [traces["completed"], traces["stalled"], traces["backpressure"]]
            ),
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

    def test_prometheus_counts_the_workload(self, scraped: PrometheusAPI) -> None:
        """Debian's Prometheus, scraping the collector's prometheus exporter as compose does,
        counts exactly the workload's streams by outcome, its stall and its cache traffic."""
        job = SERVICE

        def by(expr: str, label: str) -> dict[str, float]:
            samples = scraped.instant(expr)
            return {sample.labels.get(label, ""): sample.value for sample in samples}

        outcome = n.STREAM_OUTCOME.replace(".", "_")
        result = n.CACHE_RESULT.replace(".", "_")
        streams = by(
            f'sum by ({outcome}) (thunkscope_stream_duration_seconds_count{{job="{job}"}})',
            outcome,
        )
        assert streams == {
            n.OUTCOME_COMPLETED: 3.0,
            n.OUTCOME_TIMEOUT: 1.0,
            n.OUTCOME_ERROR: 1.0,
        }
        assert by(f'sum(thunkscope_stream_stalls_total{{job="{job}"}})', "") == {"": 1.0}
        lookups = by(f'sum by ({result}) (thunkscope_cache_lookups_total{{job="{job}"}})', result)
        assert lookups == {"hit": 1.0, "miss": 1.0}
        evictions = by(f'sum(thunkscope_cache_evictions_total{{job="{job}"}})', "")
        assert evictions == {"": 1.0}


@pytest.fixture(scope="module")
def scraped(pipeline: Pipeline) -> Iterator[PrometheusAPI]:
    """Debian's Prometheus scraping the collector's prometheus exporter every second, keeping
    the exporter's `job` (the service.name) as deploy/prometheus.yml does; ready once it
    has scraped the workload's last stream count twice (every rate has two samples)."""
    with prometheus(
        require_binary("prometheus"),
        pipeline.workdir / "prometheus",
        job="otel-collector",
        targets=[pipeline.prometheus_exporter],
        honor_labels=True,
    ) as running:

        def twice() -> None:
            seen = running.api.instant(
                f'count_over_time(thunkscope_stream_duration_seconds_count{{job="{SERVICE}",'
                f' thunkscope_stream_name="backpressure"}}[1m])'
            )
            assert seen, "the workload's streams not scraped yet"
            assert min(sample.value for sample in seen) >= 2, "scraped once so far"

        poll(twice, timeout=WAIT_S, what="Prometheus scraping the collector's exporter")
        yield running.api


# What the dashboards' variables select: the workload's service; every stream and cache.
ALL = {"service": SERVICE, "stream": ".*", "cache": ".*", "__rate_interval": "1m"}
# Every value a label of the workload's series can have.
WORKLOAD_LABELS: dict[str, set[str]] = {
    "thunkscope_stream_name": {"completed", "stalled", "timeout", "error", "backpressure"},
    "thunkscope_stream_outcome": {n.OUTCOME_COMPLETED, n.OUTCOME_TIMEOUT, n.OUTCOME_ERROR},
    "thunkscope_cache_name": {"pipeline-clients"},
    "thunkscope_cache_result": {"hit", "miss"},
    "thunkscope_gather_outcome": {n.OUTCOME_COMPLETED, n.OUTCOME_ERROR},
    # An observable counter: both values, the one never seen at 0.
    "thunkscope_event_loop_found": {"true", "false"},
    "error_type": {"TimeoutError", "ConnectionResetError", "ValueError"},
}


def dashboard_prometheus_queries() -> list[Query]:
    """Every Prometheus query of every committed dashboard."""
    return [q for q in queries(load_dashboards()) if q.datasource_type == "prometheus"]


def grouped_by(expr: str) -> set[str]:
    """The labels a query's answer carries: its first `by (...)` clause but `le` (which
    histogram_quantile consumes); none when it aggregates everything."""
    match = re.search(r"\bby \(([^)]*)\)", expr)
    labels = {label.strip() for label in match.group(1).split(",")} if match else set()
    return labels - {"le"}


def over_the_whole_run(expr: str) -> str:
    """The query with every `rate(X[$__rate_interval])` read as `X`, the counter's total: the
    dashboard's query over the workload's whole life (every rate times the same duration,
    so sums are counts and ratios stay ratios). Selectors, labels and aggregations are the
    dashboard's own."""
    return re.sub(r"rate\(([^\[]+)\[\$__rate_interval\]\)", r"\1", expr)


def answer(api: PrometheusAPI, expr: str, labels: set[str]) -> dict[tuple[str, ...], float]:
    """An instant query's answer by the values of `labels` (sorted by label name)."""
    return {
        tuple(sample.labels.get(label, "") for label in sorted(labels)): sample.value
        for sample in api.instant(expr)
    }


# The exact answer of every count-like query over the whole run, by (dashboard, panel, refId):
# the workload streams 5 times (3 completed, 1 timed out, 1 failed; 15 items), stalls once,
# blocks once, looks its cache up twice (a hit, a miss), evicts once, gathers twice (2
# thunks each, one failing) and looks its event loop up once.
COUNTS: dict[tuple[str, str, str], dict[tuple[str, ...], float]] = {
    ("client-cache.json", "Hit ratio", "stat"): {(): 0.5},
    ("client-cache.json", "Lookups per second", "stat"): {(): 2.0},
    ("client-cache.json", "Evictions per second", "stat"): {(): 1.0},
    ("client-cache.json", "Fill", "stat"): {(): 1.0},
    ("client-cache.json", "Lookups per second by result", "timeseries"): {
        ("pipeline-clients", "hit"): 1.0,
        ("pipeline-clients", "miss"): 1.0,
    },
    ("client-cache.json", "Hit ratio", "timeseries"): {("pipeline-clients",): 0.5},
    ("client-cache.json", "Evictions per second", "timeseries"): {("pipeline-clients",): 1.0},
    ("client-cache.json", "Entries against the limit", "timeseries"): {("pipeline-clients",): 1.0},
    ("client-cache.json", "Event loop lookups per second", "timeseries"): {
        ("false",): 0.0,
        ("true",): 1.0,
    },
    ("gather.json", "Gathers per second", "stat"): {(): 2.0},
    ("gather.json", "Failed", "stat"): {(): 0.5},
    ("gather.json", "Mean size", "stat"): {(): 2.0},
    ("gather.json", "Gathers per second by outcome", "timeseries"): {
        (n.OUTCOME_COMPLETED,): 1.0,
        (n.OUTCOME_ERROR,): 1.0,
    },
    ("gather.json", "Failures by error.type", "timeseries"): {("ValueError",): 1.0},
    ("streams.json", "Active streams", "stat"): {(): 0.0},
    ("streams.json", "Streams per second", "stat"): {(): 5.0},
    ("streams.json", "Streams not completed", "stat"): {(): 0.4},
    ("streams.json", "Stream rate by outcome", "timeseries"): {
        (n.OUTCOME_COMPLETED,): 3.0,
        (n.OUTCOME_TIMEOUT,): 1.0,
        (n.OUTCOME_ERROR,): 1.0,
    },
    ("streams.json", "Error rate by error.type", "timeseries"): {
        ("ConnectionResetError",): 1.0,
        ("TimeoutError",): 1.0,
    },
    ("streams.json", "Streams that blocked", "timeseries"): {("backpressure",): 1.0},
    # Gauges: the workload has ended, so no stream runs and none is idle.
    ("streams.json", "Active streams", "timeseries"): {
        (name,): 0.0 for name in WORKLOAD_LABELS["thunkscope_stream_name"]
    },
    ("streams.json", "Oldest idle stream", "timeseries"): {
        (name,): 0.0 for name in WORKLOAD_LABELS["thunkscope_stream_name"]
    },
}
# Panels whose refIds differ in what they count.
COUNTS_BY_REF: dict[tuple[str, str, str, str], dict[tuple[str, ...], float]] = {
    ("streams.json", "Stalls and timeouts", "timeseries", "A"): {("stalled",): 1.0},
    ("streams.json", "Stalls and timeouts", "timeseries", "B"): {("timeout",): 1.0},
    ("gather.json", "Size", "timeseries", "C"): {(): 2.0},
    ("streams.json", "Items per stream", "timeseries", "C"): {(): 3.0},
}


class TestDashboardsOnTheCollectorsPrometheus:
    """Every dashboard query, run on the Prometheus that scrapes the real collector's exporter,
    answers for the workload: exact counts where it counts, the expected series otherwise."""

    def test_every_query_answers_with_the_workloads_series(self, scraped: PrometheusAPI) -> None:
        """As the dashboards run them ($__rate_interval 1 m), every query answers, each series
        carrying exactly the labels it groups by, with values the workload produced."""
        unanswered, wrong = [], []
        for query in dashboard_prometheus_queries():
            labels = grouped_by(query.expr)
            samples = scraped.instant(substitute(query.expr, ALL))
            if not samples:
                unanswered.append(query.where)
            for sample in samples:
                carried = set(sample.labels)
                values_ok = all(sample.labels[label] in WORKLOAD_LABELS[label] for label in carried)
                if carried != labels or not values_ok:
                    wrong.append((query.where, sample.labels))
        assert unanswered == []
        assert wrong == []

    def test_count_queries_equal_the_workload(self, scraped: PrometheusAPI) -> None:
        """Over the whole run, every query that counts answers the workload's exact counts, and
        every other one (quantiles, times, gauges) a finite value for the expected series."""
        checked = 0
        for query in dashboard_prometheus_queries():
            labels = grouped_by(query.expr)
            got = answer(scraped, substitute(over_the_whole_run(query.expr), ALL), labels)
            key = (query.dashboard, query.panel, query.panel_type)
            expected = COUNTS_BY_REF.get((*key, query.ref_id), COUNTS.get(key))
            if expected is not None:
                assert got == pytest.approx(expected), query.where
                checked += 1
            else:
                assert got, query.where
                assert all(math.isfinite(value) for value in got.values()), (query.where, got)
        assert checked == len(COUNTS) + len(COUNTS_BY_REF) + 1  # Entries: refIds A and B
