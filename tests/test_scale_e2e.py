"""Tail sampling end to end with real collectors: one agent, two gateways, hundreds of streams.

The built thunkscope collector distribution runs the shipped configs (deploy/collector-*.yaml)
on loopback, changed only where a test must (tests/support/scale_collectors.py): the agent
routes by trace id to two gateways, which export what they keep to files. A workload of
every kind of stream (tests/support/scale_workload.py) goes through; every interesting
trace must be kept whole on exactly one gateway, the healthy ones in the binomial bounds of
the configured share, and the stream counts the agent serves to Prometheus must equal the
workload's although traces are sampled.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from support import scale_collectors as configs
from support import scale_workload as work
from support.loopback import free_port
from support.otelcol import collector, collector_binary, validate
from support.stack_prometheus import PrometheusAPI, prometheus
from support.stack_tools import require_binary
from support.waiting import until_sync
from thunkscope import _telemetry, names

#: The workload: healthy streams enough for a tight binomial bound, every interesting kind.
WORKLOAD = work.Workload({work.HEALTHY: 500, **{kind: 20 for kind in work.INTERESTING}})
#: The gateway's healthy share (deploy/collector-gateway.yaml, policy healthy-share).
SHARE = 0.10
#: The kept healthy count must lie within 6 standard deviations of n*p: a false failure has
#: odds of about 1 in 500 million.
SIGMAS = 6
#: The spans of every workload trace: its root, the stream, the consumer.
SPANS_PER_TRACE = {work.ROOT_SPAN, names.SPAN_SEND_TO_QUEUE, work.CONSUME_SPAN}
#: Marker streams (errors, always kept) sent after the workload is flushed: once a marker
#: reached a gateway's file, every workload trace that gateway held was decided before.
MARKER = "marker"
SERVICE = "scale-e2e"
WAIT_S = 180.0


def binomial_bounds(n: int, p: float, sigmas: int = SIGMAS) -> tuple[int, int]:
    """The kept-count range n*p +- sigmas*sqrt(n*p*(1-p)), clipped to [0, n]."""
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return max(0, math.ceil(n * p - spread)), min(n, math.floor(n * p + spread))


def kept_traces(path: Path) -> dict[str, set[str]]:
    """The file exporter's output: trace id (hex) -> the names of its spans."""
    traces: dict[str, set[str]] = {}
    if not path.exists():
        return traces
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        for resource in json.loads(line).get("resourceSpans", []):
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    traces.setdefault(span["traceId"].lower(), set()).add(span["name"])
    return traces


@dataclass
class Stack:
    """The running agent and gateways, and where to look at what they did."""

    agent_grpc: int
    prometheus: PrometheusAPI
    outputs: list[Path]
    logs: list[Path]

    def output(self) -> str:
        """Every collector's log, for a failure message."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in self.logs
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """One agent and two gateways of the built collector, on the shipped configs, on loopback."""
    gateway_ports = [free_port(), free_port()]
    outputs = [tmp_path / f"gateway-{i}.jsonl" for i in (1, 2)]
    logs = [tmp_path / "gateway-1.log", tmp_path / "gateway-2.log", tmp_path / "agent.log"]
    with ExitStack() as running:
        for index, port in enumerate(gateway_ports):
            health = free_port()
            config = configs.write(
                configs.gateway_config(
                    grpc=port,
                    health=health,
                    out=outputs[index],
                    slow_first_item_s=work.SLOW_FIRST_ITEM_S,
                ),
                tmp_path / f"gateway-{index + 1}.yaml",
            )
            running.enter_context(
                collector([config], logs[index], health_endpoint=f"127.0.0.1:{health}")
            )
        agent_grpc, agent_health, agent_metrics = free_port(), free_port(), free_port()
        config = configs.write(
            configs.agent_config(
                grpc=agent_grpc, health=agent_health, metrics=agent_metrics, gateways=gateway_ports
            ),
            tmp_path / "agent.yaml",
        )
        running.enter_context(
            collector([config], logs[2], health_endpoint=f"127.0.0.1:{agent_health}")
        )
        # Debian's Prometheus scrapes the agent's prometheus exporter, as deploy/scale does.
        scraper = running.enter_context(
            prometheus(
                require_binary("prometheus"),
                tmp_path / "prometheus",
                job="otel-agent",
                targets=[f"127.0.0.1:{agent_metrics}"],
            )
        )
        logs.append(scraper.log)
        yield Stack(agent_grpc, scraper.api, outputs, logs)


def stream_counts(api: PrometheusAPI) -> dict[str, int]:
    """Streams finished per stream name, as Prometheus has them from the agent."""
    label = names.STREAM_NAME.replace(".", "_")
    metric = names.STREAM_DURATION.prometheus_name + "_count"
    samples = api.instant(f"sum by ({label}) ({metric})")
    return {sample.labels[label]: int(sample.value) for sample in samples}


class TestTailSamplingEndToEnd:
    def test_the_test_configs_change_only_addresses_exports_and_two_numbers(
        self, tmp_path: Path
    ) -> None:
        """The test's configs differ from the shipped ones in addresses, the export, own
        telemetry, decision_wait and the slow-first-item threshold, nothing else."""
        gateway = configs.gateway_config(
            grpc=1, health=2, out=tmp_path / "x", slow_first_item_s=0.2
        )
        assert configs.changed_paths(configs.load(configs.GATEWAY), gateway) == {
            "extensions.health_check.endpoint",
            "receivers.otlp.protocols.grpc.endpoint",
            "processors.tail_sampling.decision_wait",
            "processors.tail_sampling.policies[4].ottl_condition.span[0]",
            "exporters.file",
            "exporters.otlp_grpc/tempo",
            "service.pipelines.traces.exporters[0]",
            "service.telemetry",
        }
        assert gateway["processors"]["tail_sampling"]["policies"][4]["ottl_condition"]["span"] == [
            f'attributes["{names.STREAM_TIME_TO_FIRST_ITEM}"] != nil and '
            f'attributes["{names.STREAM_TIME_TO_FIRST_ITEM}"] > 0.2'
        ]
        agent = configs.agent_config(grpc=1, health=2, metrics=3, gateways=[4, 5])
        assert configs.changed_paths(configs.load(configs.AGENT), agent) == {
            "extensions.health_check.endpoint",
            "receivers.otlp.protocols.grpc.endpoint",
            "receivers.otlp.protocols.http",
            "exporters.load_balancing.resolver.static.hostnames[0]",
            "exporters.load_balancing.resolver.static.hostnames[1]",
            "exporters.prometheus.endpoint",
            "service.telemetry",
        }

    def test_the_shipped_configs_pass_the_built_collectors_validate(self) -> None:
        """`validate` of the built distribution accepts both shipped configs."""
        for path in (configs.GATEWAY, configs.AGENT):
            result = validate(collector_binary(), [path])
            assert result.returncode == 0, f"{path.name}: {result.stdout}{result.stderr}"

    def test_interesting_traces_kept_whole_healthy_share_in_bounds_metrics_exact(
        self, stack: Stack, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every interesting trace is kept with all its spans on exactly one gateway, the healthy
        share kept is within 6 sigma of 10%, and the agent's stream counts equal the workload's."""
        resource = Resource.create({"service.name": SERVICE})
        tracer_provider = TracerProvider(resource=resource)
        endpoint = f"http://127.0.0.1:{stack.agent_grpc}"
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint, insecure=True),
                max_queue_size=20000,
                schedule_delay_millis=200,  # the decision_wait rule: far under the 10 s
            )
        )
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=3_600_000
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        _telemetry.use_providers(tracer_provider=tracer_provider, meter_provider=meter_provider)
        tracer = tracer_provider.get_tracer("scale-e2e")
        markers: list[str] = []
        try:
            sent = asyncio.run(work.run(WORKLOAD, tracer))
            assert tracer_provider.force_flush()

            def markers_everywhere() -> bool:
                # One more always-kept trace per look, until each gateway has decided one.
                markers.append(asyncio.run(work.run_stream(work.ERROR, tracer, name=MARKER)))
                assert tracer_provider.force_flush()
                kept = [kept_traces(path) for path in stack.outputs]
                return all(any(m in gateway for m in markers) for gateway in kept)

            poll_until(markers_everywhere, "a marker trace kept on each gateway", stack)
            assert meter_provider.force_flush()
            expected_counts = {**WORKLOAD.counts, MARKER: len(markers)}
            scraped: dict[str, Any] = {}

            def counts_exact() -> bool:
                scraped["counts"] = stream_counts(stack.prometheus)
                return scraped["counts"] == expected_counts

            poll_until(
                counts_exact, f"stream counts {expected_counts} at the agent", stack, scraped
            )
        finally:
            _telemetry.use_providers()
            meter_provider.shutdown()
            tracer_provider.shutdown()

        per_gateway = [kept_traces(path) for path in stack.outputs]
        report: dict[str, dict[str, int]] = {}
        for kind in work.KINDS:
            ids = [trace_id for trace_id, k in sent.items() if k == kind]
            homes = {t: [i for i, g in enumerate(per_gateway) if t in g] for t in ids}
            kept = [t for t in ids if homes[t]]
            whole = [
                t
                for t in kept
                if len(homes[t]) == 1 and per_gateway[homes[t][0]][t] == SPANS_PER_TRACE
            ]
            report[kind] = {"sent": len(ids), "kept": len(kept), "complete": len(whole)}
            assert whole == kept, (
                kind,
                {t: homes[t] for t in kept if t not in whole},
                stack.output(),
            )
            if kind in work.INTERESTING:
                assert len(kept) == len(ids), (kind, report[kind], stack.output())
        low, high = binomial_bounds(WORKLOAD.counts[work.HEALTHY], SHARE)
        healthy_kept = report[work.HEALTHY]["kept"]
        with capsys.disabled():
            print(
                f"\nscale e2e: {report}; healthy kept {healthy_kept}"
                f"/{WORKLOAD.counts[work.HEALTHY]} (bounds {low}..{high}); markers {len(markers)}"
            )
        assert low <= healthy_kept <= high, (report, stack.output())
        assert set().union(*per_gateway) <= set(sent) | set(markers)
        assert all(per_gateway), "each gateway kept traces: the agent routed to both"


def poll_until(
    condition: Any, what: str, stack: Stack, state: dict[str, Any] | None = None
) -> None:
    """Wait for `condition` within WAIT_S; on a timeout, show the collectors' output."""
    try:
        until_sync(condition, within=WAIT_S, what=what)
    except TimeoutError as error:
        raise AssertionError(f"{error}; last seen {state}\n{stack.output()}") from None
