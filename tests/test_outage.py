"""Collector outages with the real collector (the build of collector/manifest.yaml).

The application (benchmarks/outage.py's ``--app`` mode: one stream every 20 ms, exported with
``thunkscope.configure()``) runs while the gateway is killed and restarted. Through the
per-host agent of deploy/otel-agent.yaml (disk-backed sending queue) nothing may be lost;
sending straight to the gateway, the cumulative metrics still carry every stream and the
application finishes with a bounded shutdown. The figures (latency ratio, what a direct
outage loses) are the benchmark's: nothing here asserts on a timing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support.otelcol import RunningCollector, collector
from support.stack_tools import poll

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "deploy" / "otel-agent.yaml"

pytestmark = pytest.mark.slow


def _load_outage() -> ModuleType:
    spec = importlib.util.spec_from_file_location("outage_bench", REPO / "benchmarks" / "outage.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


outage = _load_outage()


def _endpoints() -> dict[str, str]:
    return {k: f"127.0.0.1:{outage.free_port()}" for k in ("grpc", "http", "health")}


@contextlib.contextmanager
def _gateway(workdir: Path, ends: dict[str, str], run: int) -> Iterator[RunningCollector]:
    config = outage.gateway_config(workdir, ends["grpc"], ends["http"], ends["health"])
    with collector([config], workdir / f"gateway-{run}.log", health_endpoint=ends["health"]) as c:
        yield c


def _application(endpoint: str, protocol: str, duration: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "benchmarks" / "outage.py"),
            "--app",
            endpoint,
            protocol,
            str(duration),
            "1,2",  # the latency marks: read by the benchmark only
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _produced(application: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = application.communicate(timeout=300)
    assert application.returncode == 0, f"the application failed:\n{err[-4000:]}"
    produced: dict[str, Any] = json.loads(out.splitlines()[-1])
    return produced


def _run_with_gateway_outage(
    workdir: Path, protocol: str, outage_s: float, *, agent: bool
) -> tuple[dict[str, Any], dict[str, int], list[Path]]:
    """Runs the application while the gateway goes down for `outage_s`, then waits (up to
    2 min) until the gateway has received every stream's telemetry: through the agent all of
    it, straight to the gateway the cumulative metrics (what the outage lost stays lost)."""
    gw = _endpoints()
    logs: list[Path] = []
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(_gateway(workdir, gw, 1))
        logs.append(first.log)
        front = gw
        if agent:
            front = _endpoints()
            (workdir / "queue").mkdir()
            overlay = outage.agent_overlay(
                workdir, front["grpc"], front["http"], front["health"], gw["grpc"]
            )
            running_agent = stack.enter_context(
                collector([AGENT, overlay], workdir / "agent.log", health_endpoint=front["health"])
            )
            logs.append(running_agent.log)
        address = front["http"] if protocol == "http/protobuf" else front["grpc"]
        application = _application(f"http://{address}", protocol, 3.0 + outage_s + 3.0)
        # The outage starts once the gateway has received telemetry from the application.
        poll(
            lambda: _assert_positive(outage.received(workdir)["metrics"]),
            timeout=60,
            what="the application's first export at the gateway",
        )
        first.process.kill()
        first.process.wait()
        time.sleep(outage_s)  # the outage itself: the stimulus, not a wait for a condition
        second = stack.enter_context(_gateway(workdir, gw, 2))
        logs.append(second.log)
        produced = _produced(application)
        streams = produced["streams"]
        awaited = ("traces", "logs", "metrics") if agent else ("metrics",)
        got = outage.received(workdir)
        deadline = time.monotonic() + 120
        while any(got[s] < streams for s in awaited) and time.monotonic() < deadline:
            time.sleep(0.5)
            got = outage.received(workdir)
        # The file exporter flushes every 100 ms: one more read after the last arrival.
        time.sleep(0.5)
        return produced, outage.received(workdir), logs


def _assert_positive(value: int) -> None:
    assert value > 0


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


class TestThroughTheAgent:
    @pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
    def test_a_30_s_gateway_outage_loses_nothing(self, tmp_path: Path, protocol: str) -> None:
        """The agent's disk queue bridges a 30 s gateway outage: every span, log record and
        stream count the application produced reaches the restarted gateway."""
        produced, got, logs = _run_with_gateway_outage(tmp_path, protocol, 30.0, agent=True)
        streams = produced["streams"]
        assert streams > 0
        assert got == {"traces": streams, "logs": streams, "metrics": streams}, _tails(logs)


class TestStraightToTheGateway:
    @pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
    def test_a_3_s_outage_keeps_the_metrics_and_the_application(
        self, tmp_path: Path, protocol: str
    ) -> None:
        """Without an agent the application still finishes every stream and shuts down; the
        cumulative metrics carry every stream; spans and logs arrive at most once each."""
        produced, got, logs = _run_with_gateway_outage(tmp_path, protocol, 3.0, agent=False)
        streams = produced["streams"]
        assert streams > 0
        assert got["metrics"] == streams, _tails(logs)
        assert 0 < got["traces"] <= streams, _tails(logs)
        assert 0 < got["logs"] <= streams, _tails(logs)
        assert produced["shutdown_s"] >= 0
