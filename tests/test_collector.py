"""The shipped collector configs run by the real collector (built from collector/manifest.yaml).

`otelcol validate` checks every collector config the repo ships (found, not listed, so new
ones are covered); the launcher fails with the collector's own message on bad input; and
deploy/otel-collector.yaml as shipped, plus an overlay that only re-points endpoints,
carries a thunkscope workload into a real Jaeger v2 whose query API finds the traces by tag
and by event, and into a file of logs that all carry their trace id.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.otelcol import (
    ProgramFailed,
    RunningJaeger,
    collector,
    collector_binary,
    jaeger,
    shipped_collector_configs,
    validate,
)
from support.stack_tools import REPO_ROOT, free_port, http_get, poll
from thunkscope import _names as n

SHIPPED = REPO_ROOT / "deploy" / "otel-collector.yaml"
WORKLOAD = Path(__file__).parent / "support" / "pipeline_workload.py"
SERVICE = "thunkscope-pipeline"
WAIT_S = 60.0

pytestmark = pytest.mark.slow


def deep_merge(base: Any, overlay: Any) -> Any:
    """The collector's merge of two config files: maps merge key by key, the rest replaces."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return overlay


def leaves(document: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar or list of a config, by its dotted path."""
    if isinstance(document, dict):
        found: dict[str, Any] = {}
        for key, value in document.items():
            found.update(leaves(value, f"{prefix}{key}."))
        return found
    return {prefix.rstrip("."): document}


@dataclass(frozen=True)
class Endpoints:
    """The loopback endpoints a test collector uses instead of the shipped ones."""

    health: str
    otlp_grpc: str
    otlp_http: str
    prometheus: str


def loopback_endpoints() -> Endpoints:
    """Free loopback ports for one collector."""
    return Endpoints(*(f"127.0.0.1:{free_port()}" for _ in range(4)))


def overlay_for(ends: Endpoints, jaeger_otlp_grpc: str, logs_file: Path) -> dict[str, Any]:
    """The overlay on the shipped config: its endpoints re-pointed at this test's programs
    and free ports, logs into a file exporter (no Loki here), the collector's own metrics
    off (their fixed port would collide between collectors)."""
    return {
        "extensions": {"health_check": {"endpoint": ends.health}},
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": ends.otlp_grpc},
                    "http": {"endpoint": ends.otlp_http},
                }
            }
        },
        "exporters": {
            "otlp_grpc/jaeger": {"endpoint": jaeger_otlp_grpc},
            "prometheus": {"endpoint": ends.prometheus},
            "file/logs": {"path": str(logs_file), "flush_interval": "100ms"},
        },
        "service": {
            "pipelines": {"logs": {"exporters": ["file/logs"]}},
            "telemetry": {"metrics": {"level": "none"}},
        },
    }


def write_overlay(path: Path, overlay: dict[str, Any]) -> Path:
    """Writes `overlay` as YAML to `path`."""
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


class TestShippedConfigs:
    """Every collector config the repo ships is valid for the collector it is built for."""

    def test_the_shipped_configs_are_found(self) -> None:
        """Discovery finds deploy/otel-collector.yaml and no file that is not a collector config."""
        found = shipped_collector_configs()
        assert SHIPPED in found
        assert REPO_ROOT / "deploy" / "prometheus.yml" not in found
        assert REPO_ROOT / "deploy" / "loki.yaml" not in found

    @pytest.mark.parametrize(
        "config", shipped_collector_configs(), ids=lambda p: str(p.relative_to(REPO_ROOT))
    )
    def test_otelcol_validate_accepts(self, config: Path) -> None:
        """`otelcol validate` accepts the config: every component exists in the build and parses."""
        result = validate(collector_binary(), [config])
        assert result.returncode == 0, result.stdout + result.stderr

    def test_otelcol_validate_rejects_an_unknown_key(self, tmp_path: Path) -> None:
        """A misspelt key in an overlay is rejected, naming the key (the validation is real)."""
        bad = write_overlay(
            tmp_path / "bad.yaml", {"exporters": {"otlp_grpc/jaeger": {"endpiont": "x:1"}}}
        )
        result = validate(collector_binary(), [SHIPPED, bad])
        assert result.returncode != 0
        assert "endpiont" in result.stderr


class TestOverlay:
    """The test overlay re-points endpoints and swaps Loki for a file, and changes nothing else."""

    def test_the_merged_config_differs_only_in_endpoints(self, tmp_path: Path) -> None:
        """The merge of shipped config and overlay differs from the shipped one exactly in the
        re-pointed endpoints, the logs exporter and the collector's own metrics."""
        ends = Endpoints("h:1", "g:2", "p:3", "m:4")
        shipped = yaml.safe_load(SHIPPED.read_text())
        merged = deep_merge(shipped, overlay_for(ends, "jaeger:9", tmp_path / "logs.json"))
        before, after = leaves(shipped), leaves(merged)
        changed = {
            path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
        }
        assert changed == {
            "extensions.health_check.endpoint",
            "receivers.otlp.protocols.grpc.endpoint",
            "receivers.otlp.protocols.http.endpoint",
            "exporters.otlp_grpc/jaeger.endpoint",
            "exporters.prometheus.endpoint",
            "exporters.file/logs.path",
            "exporters.file/logs.flush_interval",
            "service.pipelines.logs.exporters",
            "service.telemetry.metrics.level",
        }
        assert after["service.pipelines.logs.exporters"] == ["file/logs"]


class TestBadInput:
    """A bad overlay or a busy port fails at once with the collector's own message."""

    def test_a_malformed_overlay_shows_the_collectors_error(self, tmp_path: Path) -> None:
        """An overlay with a misspelt key fails the launch with the collector's message."""
        ends = loopback_endpoints()
        overlay = overlay_for(ends, "127.0.0.1:1", tmp_path / "logs.json")
        overlay["processors"] = {"batch": {"timeuot": "1s"}}
        path = write_overlay(tmp_path / "overlay.yaml", overlay)
        log = tmp_path / "otelcol.log"
        with (
            pytest.raises(ProgramFailed, match="exited with") as failed,
            collector([SHIPPED, path], log, health_endpoint=ends.health),
        ):
            pass
        assert "timeuot" in str(failed.value)

    def test_a_port_in_use_shows_the_collectors_error(self, tmp_path: Path) -> None:
        """A receiver port another program holds fails the launch with 'address already in use'."""
        ends = loopback_endpoints()
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            busy = f"127.0.0.1:{holder.getsockname()[1]}"
            overlay = overlay_for(ends, "127.0.0.1:1", tmp_path / "logs.json")
            overlay["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = busy
            path = write_overlay(tmp_path / "overlay.yaml", overlay)
            log = tmp_path / "otelcol.log"
            with (
                pytest.raises(ProgramFailed, match="exited with") as failed,
                collector([SHIPPED, path], log, health_endpoint=ends.health),
            ):
                pass
        assert "address already in use" in str(failed.value)


# --- the shipped pipeline, end to end -------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """A workload's run through the shipped collector into Jaeger and the logs file."""

    jaeger: RunningJaeger
    logs_file: Path
    workload: dict[str, Any]


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
            yield Pipeline(running_jaeger, logs_file, json.loads(result.stdout.splitlines()[-1]))


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
        """Searching the stream.stalled event returns the stalled, then completed, trace, whole."""

        def found() -> list[dict[str, Any]]:
            traces = jaeger_search(pipeline.jaeger, {"event": n.EVENT_STALLED})
            assert [t["traceID"] for t in traces] == [pipeline.workload["traces"]["stalled"]]
            assert_whole(traces[0], "request stalled")
            return traces

        traces = poll(found, timeout=WAIT_S, what="Jaeger finding the stalled trace")
        producer = assert_whole(traces[0], "request stalled")[n.SPAN_SEND_TO_QUEUE]
        assert tag(producer, n.STREAM_OUTCOME) == n.OUTCOME_COMPLETED
        assert pipeline.workload["items"]["stalled"] == 4

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
