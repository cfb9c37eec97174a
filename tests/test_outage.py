"""Collector outages with the real collector (the build of collector/manifest.yaml).

One scenario (benchmarks/outage.py's `run_scenario`) runs once for the module: a gateway
collector writing what it receives to files, the agent of deploy/otel-agent.yaml in front
of it, and four applications (one stream every 20 ms each): over gRPC and over OTLP/HTTP,
one straight to the gateway and one through the agent. The gateway is killed for 3 s,
10 s and 30 s in turn, then the agent for 3 s; every stream is named after the phase it
ran in, so the counts below are per application, phase and signal. Waits are for counts
(the outages themselves are held with the clock); nothing here asserts on a timing.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support.otelcol import collector_binary
from support.scripts import load_script
from test_collector import deep_merge, leaves

REPO = Path(__file__).resolve().parents[1]
OUTAGES = (3.0, 10.0, 30.0)
AGENT_OUTAGE = 3.0

pytestmark = pytest.mark.slow


def _load_outage() -> ModuleType:
    return load_script(REPO / "benchmarks" / "outage.py", "outage_bench")


outage = _load_outage()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The whole scenario, run once: its outcome (produced and received per phase)."""
    outcome = outage.run_scenario(
        tmp_path_factory.mktemp("outage"),
        outages=OUTAGES,
        agent_outage=AGENT_OUTAGE,
        binary=collector_binary(),
    )
    print(outcome.table())
    return outcome


def application(outcome: Any, shape: str, protocol: str) -> Any:
    """The scenario's application of that shape and protocol."""
    (found,) = [a for a in outcome.applications if (a.shape, a.protocol) == (shape, protocol)]
    return found


def counts(outcome: Any, app: Any, signals: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per phase, the received counts of `signals`."""
    return {
        phase: {s: outcome.got.count(app.service, phase)[s] for s in signals}
        for phase in outcome.phases
    }


def produced(outcome: Any, app: Any, signals: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per phase, what the application produced, once per signal."""
    return {
        phase: dict.fromkeys(signals, outcome.produced(app.service, phase))
        for phase in outcome.phases
    }


def shown(outcome: Any) -> str:
    """The table and the collectors' and applications' output, for a failure message."""
    return f"{outcome.table()}\n{outcome.log_tails()}"


PHASES = [
    "up",
    *(p for s in OUTAGES for p in outage.gateway_phase(s)),
    *outage.agent_phase(AGENT_OUTAGE),
]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
class TestStraightToTheGateway:
    """Without an agent, the SDK's export window (10 s) is all that bridges an outage."""

    def test_the_application_runs_through_every_outage(self, scenario: Any, protocol: str) -> None:
        """Streams ran in every phase, outages included, and the application shut down and
        exited cleanly (its shutdown() returned)."""
        app = application(scenario, "direct", protocol)
        assert scenario.phases == PHASES
        result = scenario.results[app.service]
        assert sorted(result["produced"]) == sorted(PHASES)
        assert all(result["produced"][phase] > 0 for phase in PHASES), result
        assert app.process.returncode == 0
        # The application prints its result line only after shutdown() has returned.
        assert "shutdown_s" in result

    def test_the_metrics_count_every_stream_of_every_phase(
        self, scenario: Any, protocol: str
    ) -> None:
        """The cumulative stream count reaches the gateway for every phase, outages included:
        a later export carries what an outage dropped."""
        app = application(scenario, "direct", protocol)
        assert counts(scenario, app, ("metrics",)) == produced(scenario, app, ("metrics",)), shown(
            scenario
        )

    def test_a_3_s_outage_loses_no_span_or_log_record(self, scenario: Any, protocol: str) -> None:
        """Every span and log record of the streams before and during the 3 s outage arrives:
        the exporters' retries outlast it."""
        app = application(scenario, "direct", protocol)
        early = ["up", *outage.gateway_phase(3.0)[:1]]
        got = {p: v for p, v in counts(scenario, app, ("traces", "logs")).items() if p in early}
        want = {p: v for p, v in produced(scenario, app, ("traces", "logs")).items() if p in early}
        assert got == want, shown(scenario)

    def test_no_phase_receives_more_than_it_produced(self, scenario: Any, protocol: str) -> None:
        """Distinct spans and log records per phase never exceed the streams of that phase
        (the longer outages lose some, measured by the benchmark)."""
        app = application(scenario, "direct", protocol)
        want = produced(scenario, app, ("traces", "logs"))
        over = {
            phase: got
            for phase, got in counts(scenario, app, ("traces", "logs")).items()
            if any(got[s] > want[phase][s] for s in got)
        }
        assert over == {}, shown(scenario)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
class TestThroughTheAgent:
    """The agent's disk queue bridges gateway outages; the SDK's window bridges its restart."""

    def test_nothing_is_lost(self, scenario: Any, protocol: str) -> None:
        """Every span, log record and stream count of every phase reaches the gateway: through
        the 3, 10 and 30 s gateway outages and the agent's 3 s restart."""
        app = application(scenario, "agent", protocol)
        assert scenario.results[app.service]["produced"].keys() == set(PHASES)
        assert counts(scenario, app, outage.SIGNALS) == produced(scenario, app, outage.SIGNALS), (
            shown(scenario)
        )


class TestAgentOverlay:
    """The scenario's overlay on deploy/otel-agent.yaml only re-points it."""

    def test_the_merged_config_differs_only_in_addresses(self, tmp_path: Path) -> None:
        """Merged with the overlay, the shipped agent config changes in its endpoints, the
        queue's directory and the collector's own metrics, and nothing else."""
        import yaml

        ends = {"grpc": "127.0.0.1:1", "http": "127.0.0.1:2", "health": "127.0.0.1:3"}
        overlay = yaml.safe_load(outage.agent_overlay(tmp_path, ends, "127.0.0.1:4").read_text())
        shipped = yaml.safe_load(outage.AGENT_CONFIG.read_text())
        before, after = leaves(shipped), leaves(deep_merge(shipped, overlay))
        changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        assert changed == {
            "extensions.health_check.endpoint",
            "extensions.file_storage/queue.directory",
            "receivers.otlp.protocols.grpc.endpoint",
            "receivers.otlp.protocols.http.endpoint",
            "exporters.otlp_http/gateway.endpoint",
            "service.telemetry.metrics.level",
        }
        assert after["exporters.otlp_http/gateway.endpoint"] == "http://127.0.0.1:4"
