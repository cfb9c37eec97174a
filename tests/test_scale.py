"""The scale-out configs: tail-sampling gateways, the routing agent, the stack on Tempo/Mimir/Loki.

docker-compose.scale.yml by the real docker-compose binary, its Prometheus config by
promtool, the sampling policies against the contract (`thunkscope.names`: a renamed
attribute or event fails here), the sizing arithmetic of docs/scale.md against the
numbers in the configs, and Grafana's provisioning against the unchanged dashboards.
The images cannot run here (no container registry); what can run checks every file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from support.stack_dashboards import DASHBOARDS_DIR, load_dashboards, queries
from support.stack_dashboards import datasource_uids as dashboard_datasource_uids
from support.stack_tools import REPO_ROOT, require_binary
from thunkscope import names

SCALE_COMPOSE = REPO_ROOT / "docker-compose.scale.yml"
DEPLOY = REPO_ROOT / "deploy"
GATEWAY = DEPLOY / "collector-gateway.yaml"
AGENT = DEPLOY / "collector-agent.yaml"
SCALE = DEPLOY / "scale"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards"

#: What the gateway keeps beyond the healthy share, by the contract's names.
POLICY_ATTRIBUTES = {
    names.STREAM_OUTCOME,
    names.STREAM_STALL_COUNT,
    names.STREAM_PUT_WAIT,
    names.STREAM_TIME_TO_FIRST_ITEM,
}
POLICY_EVENTS = {names.EVENT_BACKPRESSURE}


def load_yaml(path: Path) -> Any:
    """A YAML file's content."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose_model() -> dict[str, Any]:
    """docker-compose.scale.yml as the real docker-compose resolves it."""
    result = subprocess.run(
        [require_binary("docker-compose"), "-f", str(SCALE_COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts: container path -> host path (resolved)."""
    return {
        str(v["target"]): Path(v["source"]).resolve()
        for v in service.get("volumes", [])
        if v.get("type") == "bind"
    }


def policies() -> dict[str, dict[str, Any]]:
    """The gateway's tail-sampling policies, by name."""
    config = load_yaml(GATEWAY)["processors"]["tail_sampling"]
    return {p["name"]: p for p in config["policies"]}


def conditions(policy: dict[str, Any]) -> list[str]:
    """Every OTTL condition of one ottl_condition policy, spans and span events."""
    ottl = policy["ottl_condition"]
    return [*ottl.get("span", []), *ottl.get("spanevent", [])]


def seconds(duration: str) -> float:
    """A collector duration such as '300s' or '5m' in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, duration
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


class TestSamplingPolicies:
    def test_every_attribute_and_event_a_policy_names_is_in_the_contract(self) -> None:
        """The attribute keys and event names in the policies are exactly the contract's names."""
        text = "\n".join(
            c for p in policies().values() if "ottl_condition" in p for c in conditions(p)
        )
        attributes = set(re.findall(r'attributes\["([^"]+)"\]', text))
        events = set(re.findall(r'\bname == "([^"]+)"', text))
        assert attributes == POLICY_ATTRIBUTES
        assert events == POLICY_EVENTS
        contract = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
        assert attributes | events <= contract

    def test_keeps_errors_unfinished_stalled_backpressured_and_slow_streams(self) -> None:
        """Each interesting kind has its policy, with the contract's values and the thresholds."""
        found = policies()
        assert found["errors"]["status_code"] == {"status_codes": ["ERROR"]}
        (outcome,) = conditions(found["stream-not-completed"])
        assert f'attributes["{names.STREAM_OUTCOME}"] != "{names.OUTCOME_COMPLETED}"' in outcome
        (stalled,) = conditions(found["stream-stalled"])
        assert stalled.endswith(f'attributes["{names.STREAM_STALL_COUNT}"] >= 1')
        assert conditions(found["stream-backpressure"]) == [
            f'attributes["{names.STREAM_PUT_WAIT}"] != nil'
            f' and attributes["{names.STREAM_PUT_WAIT}"] > 0.0',
            f'name == "{names.EVENT_BACKPRESSURE}"',
        ]
        (slow,) = conditions(found["stream-slow-first-item"])
        assert slow.endswith(f'attributes["{names.STREAM_TIME_TO_FIRST_ITEM}"] > 10.0')
        assert found["healthy-share"]["probabilistic"] == {"sampling_percentage": 10}
        assert [p["type"] for p in found.values()].count("probabilistic") == 1

    def test_no_policy_inverts_a_match(self) -> None:
        """No policy relies on invert_match, which no longer overrides the others in v0.16x."""
        for policy in policies().values():
            assert "invert_match" not in json.dumps(policy), policy["name"]

    def test_sizing_follows_the_documented_arithmetic(self) -> None:
        """decision_wait outlasts a stream stalled into the 120 s chunk_timeout, num_traces holds
        twice the design rate for decision_wait, and the memory limit holds those traces."""
        gateway = load_yaml(GATEWAY)["processors"]
        sampling = gateway["tail_sampling"]
        wait = seconds(sampling["decision_wait"])
        rate = sampling["expected_new_traces_per_sec"]
        assert wait >= 2 * 120  # a stream may run two chunk_timeouts (docs/scale.md)
        assert sampling["num_traces"] == 2 * rate * wait
        held_mib = rate * wait * 16 / 1024  # 16 KiB per trace held
        limiter = gateway["memory_limiter"]
        assert held_mib + limiter["spike_limit_mib"] <= limiter["limit_mib"]
        pipeline = load_yaml(GATEWAY)["service"]["pipelines"]["traces"]["processors"]
        assert pipeline == ["memory_limiter", "tail_sampling", "batch"]


class TestAgentRouting:
    def test_traces_go_by_trace_id_to_every_gateway_of_the_stack(self) -> None:
        """The agent's load_balancing exporter routes by traceID to exactly the compose gateways."""
        agent = load_yaml(AGENT)
        balancer = agent["exporters"]["load_balancing"]
        assert balancer["routing_key"] == "traceID"
        hosts = balancer["resolver"]["static"]["hostnames"]
        services = compose_model()["services"]
        gateways = {name for name, s in services.items() if GATEWAY in bind_mounts(s).values()}
        assert sorted(hosts) == sorted(f"{g}:4317" for g in gateways)
        assert len(gateways) == 2
        traces = agent["service"]["pipelines"]["traces"]
        assert traces["exporters"] == ["load_balancing"]
        assert "tail_sampling" not in agent.get("processors", {})

    def test_pipelines_reference_only_defined_components(self) -> None:
        """Every receiver, processor and exporter a pipeline names is defined, in both tiers."""
        for path in (AGENT, GATEWAY):
            config = load_yaml(path)
            for signal, pipeline in config["service"]["pipelines"].items():
                for kind in ("receivers", "processors", "exporters"):
                    for component in pipeline.get(kind, []):
                        assert component in config[kind], f"{path.name} {signal}: {component}"


class TestScaleCompose:
    def test_docker_compose_accepts_the_file(self) -> None:
        """The real docker-compose binary validates docker-compose.scale.yml without complaint."""
        result = subprocess.run(
            [require_binary("docker-compose"), "-f", str(SCALE_COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stderr.strip()) == (0, "")

    def test_the_engines_and_their_scalable_modes(self) -> None:
        """Tempo runs distributed, Loki simple-scalable, Mimir replicated, all on MinIO."""
        services = compose_model()["services"]

        def targets(prefix: str) -> list[str]:
            return sorted(
                arg.removeprefix("-target=")
                for name, s in services.items()
                if name.startswith(prefix)
                for arg in s["command"]
                if arg.startswith("-target=")
            )

        assert targets("tempo-") == [
            "compactor", "distributor", "ingester", "ingester", "querier", "query-frontend",
        ]  # fmt: skip
        assert targets("loki-") == ["backend", "read", "write"]
        assert targets("mimir") == ["all"]
        assert services["mimir"]["deploy"]["replicas"] == 2
        assert load_yaml(SCALE / "tempo.yaml")["storage"]["trace"]["backend"] == "s3"
        assert load_yaml(SCALE / "mimir.yaml")["common"]["storage"]["backend"] == "s3"
        assert "s3" in load_yaml(SCALE / "loki.yaml")["common"]["storage"]
        gateway = load_yaml(GATEWAY)["exporters"]["otlp_grpc/tempo"]["endpoint"]
        assert gateway == "tempo-distributor:4317"
        assert load_yaml(AGENT)["exporters"]["otlp_http/loki"]["endpoint"].startswith(
            "http://loki-write:3100"
        )

    def test_bind_mounts_point_at_files_in_the_repository(self) -> None:
        """Every bind-mounted config or folder exists in the repository."""
        for name, service in compose_model()["services"].items():
            for target, source in bind_mounts(service).items():
                assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
                assert source.is_relative_to(REPO_ROOT), source

    def test_every_image_is_pinned(self) -> None:
        """Every image has an explicit version tag, never `latest`."""
        for name, service in compose_model()["services"].items():
            tag = str(service["image"]).rsplit("/", 1)[-1].partition(":")[2]
            assert tag not in ("", "latest"), f"{name}: {service['image']}"


class TestScaleGrafana:
    def test_the_same_dashboards_and_provider_as_the_local_stack(self) -> None:
        """Grafana mounts dashboards/ and the same dashboard provider as docker-compose.yml."""
        mounts = bind_mounts(compose_model()["services"]["grafana"])
        assert mounts["/var/lib/grafana/dashboards/thunkscope"] == DASHBOARDS_DIR.resolve()
        assert mounts["/etc/grafana/provisioning/dashboards"] == DASHBOARD_PROVIDERS.resolve()

    def test_every_datasource_a_dashboard_uses_is_provisioned_with_its_type(self) -> None:
        """Each uid the unchanged dashboards use exists here with the type their queries expect."""
        provisioned = {ds["uid"]: ds for ds in load_yaml(SCALE / "datasources.yaml")["datasources"]}
        dashboards = load_dashboards()
        used = set().union(*(dashboard_datasource_uids(d) for d in dashboards.values()))
        assert used == {"prometheus", "loki"}  # no dashboard depends on traces
        for query in queries(dashboards):
            assert provisioned[query.datasource_uid]["type"] == query.datasource_type
        assert provisioned["prometheus"]["url"] == "http://mimir:9009/prometheus"
        assert provisioned["loki"]["url"] == "http://loki-read:3100"
        assert provisioned["tempo"]["type"] == "tempo"
        exemplars = provisioned["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
        assert [e["datasourceUid"] for e in exemplars] == ["tempo"]


class TestScalePrometheus:
    def test_evaluates_the_local_stacks_rules_and_alerts_through_alertmanager(self) -> None:
        """The scale Prometheus loads deploy/alerts/thunkscope-rules.yml where its config's
        relative path points, keeps 2 d for the 1 d burn window, and sends to Alertmanager."""
        services = compose_model()["services"]
        service = services["prometheus"]
        mounts = bind_mounts(service)
        config = Path(
            next(t for t, s in mounts.items() if s == (SCALE / "prometheus.yml").resolve())
        )
        (rules,) = load_yaml(SCALE / "prometheus.yml")["rule_files"]
        target = str((config.parent / rules).resolve())
        assert mounts[target] == (DEPLOY / "alerts" / "thunkscope-rules.yml").resolve()
        assert "--storage.tsdb.retention.time=2d" in service["command"]
        assert (
            bind_mounts(services["alertmanager"])["/etc/alertmanager/alertmanager.yml"]
            == (DEPLOY / "alertmanager" / "alertmanager.yml").resolve()
        )

    def test_promtool_accepts_the_config(self) -> None:
        """Debian's promtool checks deploy/scale/prometheus.yml."""
        result = subprocess.run(
            [require_binary("promtool"), "check", "config", str(SCALE / "prometheus.yml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_scrapes_the_agents_and_remote_writes_to_mimir(self) -> None:
        """Prometheus scrapes the agents' exporter keeping job labels and writes to Mimir."""
        config = load_yaml(SCALE / "prometheus.yml")
        (job,) = config["scrape_configs"]
        assert job["honor_labels"] is True
        assert job["dns_sd_configs"] == [{"names": ["agent"], "type": "A", "port": 8889}]
        assert load_yaml(AGENT)["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"
        assert config["rule_files"] == ["../alerts/thunkscope-rules.yml"]
        (remote,) = config["remote_write"]
        assert remote["url"] == "http://mimir:9009/api/v1/push"
        assert remote["send_exemplars"] is True
