"""The local observability stack, proved with real programs.

docker-compose.yml by a real docker-compose v2 binary, the Prometheus config by
promtool, the collector and Grafana provisioning by reading them against each other
and against the contract (`thunkscope.names`), and every dashboard query by a real
Prometheus that scrapes the real `thunkscope demo` workload once a second.
The programs come from `bash scripts/install-stack-tools.sh` (CI runs it).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from support.promql_names import emitted_series, label_of, unknown_references
from support.scripts import load_script
from support.stack_dashboards import (
    DASHBOARDS_DIR,
    Query,
    load_dashboards,
    metric_names,
    name_patterns,
    panels,
    parse_label_values,
    queries,
    regex_alternation,
    substitute,
    variable_names,
    variables,
)
from support.stack_dashboards import (
    datasource_uids as dashboard_datasource_uids,
)
from support.stack_prometheus import PrometheusAPI, QueryError, Sample, finite, prometheus
from support.stack_tools import (
    READY_TIMEOUT_S,
    REPO_ROOT,
    free_port,
    poll,
    require_binary,
    running,
    wait_http_ok,
)
from thunkscope import names

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DEPLOY = REPO_ROOT / "deploy"
COLLECTOR_CONFIG = DEPLOY / "otel-collector.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"

# How Grafana's $__rate_interval is substituted when the queries run here: four 1 s scrape
# intervals, as Grafana computes it for a short range, plus one for the current scrape.
RATE_WINDOW = "5s"
DEMO_JOB = "thunkscope-demo"
DEMO_SECONDS = 90  # the fixture stops it earlier; long enough never to end mid-test
WAIT_FOR_DATA_S = 60.0

# Panels the demo workload does not fill yet, with the reason. Keep this empty: a panel
# listed here is one a newcomer running the demo sees empty.
DEMO_LEAVES_EMPTY: dict[str, str] = {}


def load_yaml(path: Path) -> Any:
    """A YAML file's content."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prometheus_queries() -> list[Query]:
    """Every query of every committed dashboard that runs on Prometheus."""
    return [q for q in queries(load_dashboards()) if q.datasource_type == "prometheus"]


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    """The real docker-compose v2 binary run on docker-compose.yml with `args`, output captured."""
    binary = require_binary("docker-compose")
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def compose_model() -> dict[str, Any]:
    """docker-compose.yml as the real docker-compose resolves it (`config --format json`)."""
    result = docker_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def bind_mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts: container path -> host path."""
    return {
        str(volume["target"]): Path(volume["source"])
        for volume in service.get("volumes", [])
        if volume.get("type") == "bind"
    }


def published_ports(service: Mapping[str, Any]) -> set[int]:
    """The host ports a compose service publishes."""
    return {int(port["published"]) for port in service.get("ports", [])}


def image_tag(service: Mapping[str, Any]) -> str:
    """The tag of a compose service's image ('' when it has none)."""
    image = str(service["image"])
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


# --- docker-compose.yml --------------------------------------------------------------------


class TestComposeFile:
    def test_docker_compose_accepts_the_file(self) -> None:
        """The real docker-compose v2 binary validates docker-compose.yml without complaint."""
        result = docker_compose("config", "-q")
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", result.stderr

    def test_every_image_is_pinned_to_the_expected_major_version(self) -> None:
        """Each service's image has an explicit version tag: collector contrib, Jaeger 2, Prometheus
        3, Loki 3, Grafana, Alertmanager 0.x."""
        services = compose_model()["services"]
        expected = {
            "otel-collector": ("otel/opentelemetry-collector-contrib", r"0\.\d+\.\d+"),
            "jaeger": ("jaegertracing/jaeger", r"2\.\d+\.\d+"),
            "prometheus": ("prom/prometheus", r"v3\.\d+\.\d+"),
            "loki": ("grafana/loki", r"3\.\d+\.\d+"),
            "grafana": ("grafana/grafana", r"\d+\.\d+\.\d+"),
            "alertmanager": ("prom/alertmanager", r"v0\.\d+\.\d+"),
        }
        assert set(services) == set(expected)
        for name, (repository, tag) in expected.items():
            image = str(services[name]["image"])
            assert image.startswith(repository + ":"), image
            assert re.fullmatch(tag, image_tag(services[name])), image

    def test_bind_mounts_point_at_files_in_the_repository(self) -> None:
        """Every bind-mounted config or folder exists in the repository."""
        for name, service in compose_model()["services"].items():
            for target, source in bind_mounts(service).items():
                assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
                assert source.resolve().is_relative_to(REPO_ROOT), source

    def test_collector_gets_its_config_and_publishes_otlp_ports(self) -> None:
        """The collector runs deploy/otel-collector.yaml and publishes OTLP gRPC 4317, HTTP 4318."""
        collector = compose_model()["services"]["otel-collector"]
        mounts = bind_mounts(collector)
        config_flags = [arg for arg in collector["command"] if arg.startswith("--config=")]
        assert len(config_flags) == 1
        target = config_flags[0].removeprefix("--config=")
        assert mounts[target].resolve() == COLLECTOR_CONFIG
        assert {4317, 4318} <= published_ports(collector)

    def test_prometheus_gets_its_config_and_keeps_exemplars(self) -> None:
        """Prometheus runs deploy/prometheus.yml with exemplar storage on."""
        service = compose_model()["services"]["prometheus"]
        flags = dict(arg.split("=", 1) for arg in service["command"] if "=" in arg)
        assert bind_mounts(service)[flags["--config.file"]].resolve() == PROMETHEUS_CONFIG
        assert "exemplar-storage" in flags.get("--enable-feature", "").split(",")

    def test_grafana_gets_provisioning_and_the_dashboards_folder(self) -> None:
        """Grafana mounts the datasources, the dashboard provider and dashboards/ at the provider's
        path."""
        mounts = bind_mounts(compose_model()["services"]["grafana"])
        by_source = {source.resolve(): target for target, source in mounts.items()}
        assert by_source[DATASOURCES.parent] == "/etc/grafana/provisioning/datasources"
        assert by_source[DASHBOARD_PROVIDERS.parent] == "/etc/grafana/provisioning/dashboards"
        provider_paths = {p["options"]["path"] for p in load_yaml(DASHBOARD_PROVIDERS)["providers"]}
        assert provider_paths == {by_source[DASHBOARDS_DIR]}


# --- Prometheus and collector configs --------------------------------------------------


class TestPrometheusConfig:
    def test_promtool_accepts_the_config(self) -> None:
        """`promtool check config` passes on deploy/prometheus.yml."""
        promtool = require_binary("promtool")
        result = subprocess.run(
            [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_scrapes_the_collector_exporter_keeping_the_service_as_job(self) -> None:
        """Prometheus scrapes the collector's prometheus exporter with honor_labels, so job stays
        service.name."""
        config = load_yaml(PROMETHEUS_CONFIG)
        exporter_port = load_yaml(COLLECTOR_CONFIG)["exporters"]["prometheus"]["endpoint"]
        port = exporter_port.rsplit(":", 1)[1]
        jobs = [
            job
            for job in config["scrape_configs"]
            if any(
                f"otel-collector:{port}" in static["targets"]
                for static in job.get("static_configs", [])
            )
        ]
        assert len(jobs) == 1
        assert jobs[0].get("honor_labels") is True


class TestCollectorConfig:
    def test_pipelines_reference_only_defined_components(self) -> None:
        """Every receiver, processor, exporter and extension a pipeline names is defined in the
        config."""
        config = load_yaml(COLLECTOR_CONFIG)
        service = config["service"]
        for extension in service.get("extensions", []):
            assert extension in (config.get("extensions") or {}), extension
        connectors = set(config.get("connectors") or {})
        assert service["pipelines"]
        for name, pipeline in service["pipelines"].items():
            assert name.split("/", 1)[0] in {"traces", "metrics", "logs"}, name
            assert pipeline.get("receivers"), name
            assert pipeline.get("exporters"), name
            for kind in ("receivers", "processors", "exporters"):
                defined = set(config.get(kind) or {}) | connectors
                for component in pipeline.get(kind, []):
                    assert component in defined, f"pipeline {name}: {kind} {component} undefined"

    def test_every_signal_reaches_its_store(self) -> None:
        """Traces go to Jaeger, metrics to the prometheus exporter and logs to Loki over OTLP."""
        config = load_yaml(COLLECTOR_CONFIG)
        pipelines = config["service"]["pipelines"]
        exporters = config["exporters"]

        def endpoints(signal: str) -> set[str]:
            return {str(exporters[e].get("endpoint", "")) for e in pipelines[signal]["exporters"]}

        assert "jaeger:4317" in endpoints("traces")
        assert any(e.endswith(":8889") for e in endpoints("metrics"))
        assert "http://loki:3100/otlp" in endpoints("logs")
        services = set(compose_model()["services"])
        assert {"jaeger", "loki", "otel-collector"} <= services

    def test_receives_otlp_on_4317_and_4318(self) -> None:
        """The otlp receiver listens on gRPC 4317 and HTTP 4318 on all interfaces."""
        protocols = load_yaml(COLLECTOR_CONFIG)["receivers"]["otlp"]["protocols"]
        assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
        assert protocols["http"]["endpoint"] == "0.0.0.0:4318"

    def test_uses_the_component_names_of_the_pinned_version(self) -> None:
        """No exporter goes by a name the pinned collector (0.144 and later) deprecated."""
        retired = {"otlp": "otlp_grpc", "otlphttp": "otlp_http", "logging": "debug"}
        for exporter in load_yaml(COLLECTOR_CONFIG)["exporters"]:
            kind = exporter.split("/", 1)[0]
            assert kind not in retired, f"{exporter}: use {retired.get(kind)}"


# --- Grafana provisioning and dashboards -----------------------------------------------


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    """The provisioned Grafana datasources, by uid."""
    return {ds["uid"]: ds for ds in load_yaml(DATASOURCES)["datasources"]}


class TestGrafanaProvisioning:
    def test_every_datasource_a_dashboard_uses_is_provisioned(self) -> None:
        """Every datasource uid in every panel, target and variable is provisioned, with the same
        type."""
        provisioned = provisioned_datasources()
        for name, dashboard in load_dashboards().items():
            for uid in dashboard_datasource_uids(dashboard):
                assert uid in provisioned, f"{name} uses datasource uid {uid!r}"
            for query in queries({name: dashboard}):
                assert provisioned[query.datasource_uid]["type"] == query.datasource_type

    def test_signals_link_to_each_other(self) -> None:
        """Log lines link to traces by trace_id, traces to their logs, and exemplars to traces."""
        provisioned = provisioned_datasources()
        by_type = {ds["type"]: uid for uid, ds in provisioned.items()}
        jaeger, loki = by_type["jaeger"], by_type["loki"]

        derived = provisioned[loki]["jsonData"]["derivedFields"]
        assert any(
            field["datasourceUid"] == jaeger and field["matcherRegex"] == "trace_id"
            for field in derived
        )
        to_logs = provisioned[jaeger]["jsonData"]["tracesToLogsV2"]
        assert to_logs["datasourceUid"] == loki
        assert "__trace.traceId" in to_logs["query"]
        exemplars = provisioned[by_type["prometheus"]]["jsonData"]["exemplarTraceIdDestinations"]
        assert any(e["datasourceUid"] == jaeger and e["name"] == "trace_id" for e in exemplars)

    def test_prometheus_datasource_knows_the_scrape_interval(self) -> None:
        """The Prometheus datasource's timeInterval equals the scrape interval, so $__rate_interval
        fits."""
        interval = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
        prom = next(ds for ds in provisioned_datasources().values() if ds["type"] == "prometheus")
        assert prom["jsonData"]["timeInterval"] == interval


def load_generator() -> ModuleType:
    """dashboards/generate.py as a module."""
    return load_script(DASHBOARDS_DIR / "generate.py", "dashboards_generate")


class TestDashboards:
    def test_committed_json_is_what_the_generator_builds(self) -> None:
        """Each dashboards/*.json equals what dashboards/generate.py builds, and no other JSON is
        there."""
        import grafana_foundation_sdk  # noqa: F401 - the generator's library, a test dependency

        generator = load_generator()
        expected = dict(generator.rendered())
        committed = {
            path: path.read_text(encoding="utf-8") for path in DASHBOARDS_DIR.glob("*.json")
        }
        assert set(committed) == set(expected)
        for path, text in expected.items():
            assert committed[path] == text, (
                f"{path.name} is stale: run python dashboards/generate.py"
            )

    def test_the_three_dashboards_exist_with_unique_uids_and_panel_ids(self) -> None:
        """Streams, Client cache and Gather are there; uids and panel ids are unique."""
        dashboards = load_dashboards()
        assert set(dashboards) == {"streams.json", "client-cache.json", "gather.json"}
        uids = [d["uid"] for d in dashboards.values()]
        assert len(set(uids)) == len(uids)
        for name, dashboard in dashboards.items():
            ids = [p["id"] for p in dashboard["panels"]] + [
                child["id"] for p in dashboard["panels"] for child in p.get("panels", [])
            ]
            assert len(set(ids)) == len(ids), name

    def test_every_queried_metric_is_one_the_package_emits(self) -> None:
        """Each metric name in a panel or variable query is a series of the contract's metrics,
        and each label it matches or groups on is one those series carry."""
        emitted = emitted_series()
        for query in prometheus_queries():
            queried = metric_names(query.expr)
            assert queried, f"{query.where}: no metric in {query.expr}"
            unknown = queried - set(emitted)
            assert not unknown, f"{query.where}: {sorted(unknown)} not emitted"
            _, labels = unknown_references(query.expr)
            assert not labels, f"{query.where}: labels {sorted(labels)} not emitted"
        for name, dashboard in load_dashboards().items():
            for variable in variables(dashboard):
                selector, _ = parse_label_values(variable["query"])
                for pattern in name_patterns(selector or ""):
                    assert any(re.fullmatch(pattern, s) for s in emitted), (name, pattern)
                assert set(metric_names(selector or "")) <= set(emitted), name

    def test_every_metric_of_the_contract_has_a_panel(self) -> None:
        """Every metric in thunkscope.names.METRICS is shown by at least one panel."""
        emitted = emitted_series()
        shown = {
            emitted[name].name
            for query in prometheus_queries()
            for name in metric_names(query.expr)
            if name in emitted
        }
        assert shown == {metric.name for metric in names.METRICS}

    def test_every_selector_is_templated_by_service_and_name(self) -> None:
        """Every series selector filters job by $service, and by $stream or $cache where the metric
        has that label."""
        emitted = emitted_series()
        by_name = {
            label_of(names.STREAM_NAME): "$stream",
            label_of(names.CACHE_NAME): "$cache",
        }
        for query in prometheus_queries():
            selectors = re.findall(r"(thunkscope_\w+)\{([^}]*)\}", query.expr)
            for metric_name, matchers in selectors:
                assert 'job=~"$service"' in matchers, f"{query.where}: {metric_name}"
                for attribute in emitted[metric_name].attributes:
                    variable = by_name.get(label_of(attribute))
                    if variable is not None:
                        assert f'=~"{variable}"' in matchers, f"{query.where}: {metric_name}"
            outside = re.sub(r"\{[^}]*\}", "{}", query.expr)
            bare = [m for m in re.findall(r"(thunkscope_\w+)(?![\w{])", outside) if m in emitted]
            assert not bare, f"{query.where}: {bare} selected without $service"

    def test_variables_are_label_values_queries_on_prometheus(self) -> None:
        """$service reads the job label, $stream and $cache their name labels, all multi-valued with
        All."""
        expected_labels = {
            "service": "job",
            "stream": label_of(names.STREAM_NAME),
            "cache": label_of(names.CACHE_NAME),
        }
        for name, dashboard in load_dashboards().items():
            listed = variables(dashboard)
            assert listed[0]["name"] == "service", name
            for variable in listed:
                assert variable["datasource"]["uid"] in provisioned_datasources()
                _, label = parse_label_values(variable["query"])
                assert label == expected_labels[variable["name"]], name
                assert variable["multi"]
                assert variable["includeAll"]
                assert variable["allValue"] == ".*"


# --- every dashboard query against a real Prometheus scraping the demo ------------------


@dataclass(frozen=True)
class ScrapedDemo:
    """A real Prometheus scraping `thunkscope demo` every second."""

    api: PrometheusAPI
    job: str
    started: float

    def last_scrape(self) -> float:
        """The time of the latest scrape of the demo (a time every series has a sample at)."""
        samples = self.api.instant(f'timestamp(up{{job="{self.job}"}})')
        assert samples, "no scrape yet"
        return samples[0].value


@pytest.fixture(scope="module")
def scraped_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedDemo]:
    """Runs the demo serving /metrics, and a Prometheus scraping it at 1 s, both on loopback."""
    import opentelemetry.exporter.prometheus  # noqa: F401 - the demo's /metrics, a test dependency

    binary = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("stack")
    port = free_port()
    env = dict(os.environ)
    # The checkout's package wins, installed or not (CI installs it; a bare checkout works too).
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    )
    demo_args = [
        sys.executable, "-m", "thunkscope", "demo",
        "--prometheus-port", str(port),
        "--duration", str(DEMO_SECONDS),
        "--service-name", DEMO_JOB,
    ]  # fmt: skip
    demo_log = workdir / "demo.log"
    started = time.time()
    with (
        running(demo_args, log=demo_log, env=env) as demo,
        prometheus(
            binary, workdir / "prometheus", job=DEMO_JOB, targets=[f"127.0.0.1:{port}"]
        ) as prom,
    ):
        wait_http_ok(
            f"http://127.0.0.1:{port}/metrics", timeout=READY_TIMEOUT_S, process=demo, log=demo_log
        )
        scraped = ScrapedDemo(prom.api, DEMO_JOB, started)

        def scraped_twice() -> None:
            # Two scrapes: every rate() over the window has two samples to work with.
            counts = prom.api.instant(f'count_over_time(up{{job="{DEMO_JOB}"}}[1m])')
            assert counts, "no scrape yet"
            assert counts[0].value >= 2, "fewer than two scrapes"
            up = prom.api.instant(f'up{{job="{DEMO_JOB}"}}')
            assert up, "no scrape yet"
            assert up[0].value == 1, f"scrape failing: {prom.log.read_text()[-2000:]}"

        poll(scraped_twice, timeout=WAIT_FOR_DATA_S, what="Prometheus scraping the demo")
        yield scraped
        assert demo.poll() is None, (
            "the demo ended before the tests did:\n" + demo_log.read_text()[-4000:]
        )


def variable_values(api: PrometheusAPI, dashboard: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each variable's values as Grafana would list them, resolving earlier variables as All."""
    values: dict[str, list[str]] = {}
    for variable in variables(dashboard):
        selector, label = parse_label_values(variable["query"])
        if selector is not None:
            selector = substitute(selector, {name: ".*" for name in values})
        values[variable["name"]] = api.label_values(label, selector or '{__name__=~".+"}')
    return values


def selections(api: PrometheusAPI, dashboard: Mapping[str, Any]) -> list[dict[str, str]]:
    """Two ways a user fills the variables: All, and every listed value picked explicitly."""
    listed = variable_values(api, dashboard)
    picked = {name: regex_alternation(found) for name, found in listed.items() if found}
    everything = {name: ".*" for name in listed}
    base = {"__rate_interval": RATE_WINDOW}
    return [base | everything, base | everything | picked]


ALL = {"__rate_interval": RATE_WINDOW, "service": ".*", "stream": ".*", "cache": ".*"}


def dashboard_queries(file: str, panel: str, kind: str = "timeseries") -> dict[str, str]:
    """The Prometheus queries of one panel by refId, with every variable at All."""
    found = {
        q.ref_id: substitute(q.expr, ALL)
        for q in prometheus_queries()
        if q.dashboard == file and q.panel == panel and q.panel_type == kind
    }
    assert found, f"no {kind} panel {panel!r} in {file}"
    return found


def values_of(samples: list[Sample]) -> list[float]:
    """The values of an instant-query answer."""
    return [sample.value for sample in samples]


class TestDashboardQueriesOnPrometheus:
    def test_variables_list_the_workload(self, scraped_demo: ScrapedDemo) -> None:
        """$service lists the scrape job, $stream the demo's streams and $cache its cache."""

        def listed() -> None:
            dashboards = load_dashboards()
            for dashboard in dashboards.values():
                values = variable_values(scraped_demo.api, dashboard)
                assert values["service"] == [DEMO_JOB]
            streams = variable_values(scraped_demo.api, dashboards["streams.json"])["stream"]
            assert {"chat-stream", "chat-single"} <= set(streams)
            caches = variable_values(scraped_demo.api, dashboards["client-cache.json"])["cache"]
            assert caches == ["demo-llm-clients"]

        poll(listed, timeout=WAIT_FOR_DATA_S, what="variables listing the demo's labels")

    def test_a_broken_query_is_reported(self, scraped_demo: ScrapedDemo) -> None:
        """The harness sees Prometheus refuse bad PromQL, so a passing query really parsed."""
        with pytest.raises(QueryError, match="parse"):
            scraped_demo.api.instant("sum(rate(thunkscope_cache_lookups_total[5s])")
        with pytest.raises(QueryError):
            scraped_demo.api.instant('up{job=~"$service"}[$__rate_interval]')

    def test_every_query_parses_and_runs(self, scraped_demo: ScrapedDemo) -> None:
        """Every Prometheus query of every panel runs, as an instant and a range query, with All and
        with picked values."""
        api = scraped_demo.api
        now = time.time()
        dashboards = load_dashboards()
        ran = 0
        for name, dashboard in dashboards.items():
            for values in selections(api, dashboard):
                for query in prometheus_queries():
                    if query.dashboard != name:
                        continue
                    assert variable_names(query.expr) <= set(values), query.where
                    expr = substitute(query.expr, values)
                    assert "$" not in expr, (query.where, expr)
                    api.instant(expr)
                    api.range(expr, start=now - 30, end=now, step=1)
                    ran += 1
        assert ran == 2 * len(prometheus_queries())

    def test_every_panel_shows_data(self, scraped_demo: ScrapedDemo) -> None:
        """Every Prometheus query returns a series over the run, but those in DEMO_LEAVES_EMPTY."""
        api = scraped_demo.api

        def all_filled() -> None:
            now = time.time()
            empty = [
                q.where
                for q in prometheus_queries()
                if not api.range(
                    substitute(q.expr, ALL), start=scraped_demo.started, end=now, step=1
                )
            ]
            unexpected = [where for where in empty if where not in DEMO_LEAVES_EMPTY]
            assert not unexpected, f"empty panels: {unexpected}"

        poll(all_filled, timeout=WAIT_FOR_DATA_S, what="every panel showing data")

    def test_hit_ratio_matches_the_hit_and_miss_counters(self, scraped_demo: ScrapedDemo) -> None:
        """The hit-ratio panels lie in [0, 1] and equal hits over lookups computed from the raw
        counters."""
        api = scraped_demo.api
        by_cache = dashboard_queries("client-cache.json", "Hit ratio")["A"]
        counter = names.CACHE_LOOKUPS.prometheus_name
        cache_label, result_label = label_of(names.CACHE_NAME), label_of(names.CACHE_RESULT)

        def consistent() -> None:
            at = scraped_demo.last_scrape()
            raw = api.matrix(f'{counter}{{job="{scraped_demo.job}"}}[{RATE_WINDOW}]', at=at)
            increases: dict[str, dict[str, float]] = {}
            for series in raw:
                assert len(series.points) >= 2, "fewer than two samples in the window"
                first, last = series.points[0][1], series.points[-1][1]
                per_cache = increases.setdefault(series.labels[cache_label], {})
                per_cache[series.labels[result_label]] = last - first
            panel = {s.labels[cache_label]: s.value for s in api.instant(by_cache, at=at)}
            assert panel, "hit ratio panel empty"
            assert set(panel) <= set(increases)
            for cache, ratio in panel.items():
                assert 0.0 <= ratio <= 1.0, (cache, ratio)
                lookups = sum(increases[cache].values())
                assert lookups > 0
                expected = increases[cache].get(names.RESULT_HIT, 0.0) / lookups
                assert math.isclose(ratio, expected, abs_tol=0.05), (cache, ratio, expected)

        poll(consistent, timeout=WAIT_FOR_DATA_S, what="hit ratio against the counters")

    def test_hit_ratio_stat_agrees_with_the_counters_since_start(
        self, scraped_demo: ScrapedDemo
    ) -> None:
        """The single-figure hit ratio lies in [0, 1], near hits/(hits+misses) scraped, which the
        demo makes both of."""
        api = scraped_demo.api
        stat_expr = dashboard_queries("client-cache.json", "Hit ratio", "stat")["A"]
        counter = names.CACHE_LOOKUPS.prometheus_name
        result_label = label_of(names.CACHE_RESULT)

        def plausible() -> None:
            totals = {
                s.labels[result_label]: s.value
                for s in api.instant(f"sum by ({result_label}) ({counter})")
            }
            assert totals.get(names.RESULT_HIT, 0) > 0
            assert totals.get(names.RESULT_MISS, 0) > 0
            ratio = values_of(api.instant(stat_expr))
            assert len(ratio) == 1, ratio
            assert 0.0 <= ratio[0] <= 1.0, ratio
            cumulative = totals[names.RESULT_HIT] / sum(totals.values())
            # The demo's mix is steady: the windowed ratio stays near the cumulative one.
            assert abs(ratio[0] - cumulative) <= 0.25, (ratio, cumulative)

        poll(plausible, timeout=WAIT_FOR_DATA_S, what="hit ratio stat")

    def test_lookups_by_result_are_hits_and_misses(self, scraped_demo: ScrapedDemo) -> None:
        """Lookups per second come per cache as hit and miss series, non-negative, with some
        traffic."""
        api = scraped_demo.api
        expr = dashboard_queries("client-cache.json", "Lookups per second by result")["A"]
        result_label = label_of(names.CACHE_RESULT)

        def flowing() -> None:
            samples = api.instant(expr)
            results = {s.labels[result_label] for s in samples}
            assert {names.RESULT_HIT, names.RESULT_MISS} <= results
            assert results <= {names.RESULT_HIT, names.RESULT_MISS, names.RESULT_STALE}
            assert all(v >= 0 for v in values_of(samples))
            assert sum(values_of(samples)) > 0

        poll(flowing, timeout=WAIT_FOR_DATA_S, what="lookups by result")

    def test_evictions_are_counted(self, scraped_demo: ScrapedDemo) -> None:
        """The demo's capacity-2 cache used from three loops evicts: the evictions panel shows a
        positive rate."""
        api = scraped_demo.api
        expr = dashboard_queries("client-cache.json", "Evictions per second")["A"]

        def evicting() -> None:
            total = values_of(api.instant(f"sum({names.CACHE_EVICTIONS.prometheus_name})"))
            assert total
            assert total[0] > 0
            series = api.range(expr, start=scraped_demo.started, end=time.time(), step=1)
            assert series
            assert max(v for s in series for _, v in s.points) > 0

        poll(evicting, timeout=WAIT_FOR_DATA_S, what="evictions")

    def test_entries_stay_within_the_limit(self, scraped_demo: ScrapedDemo) -> None:
        """Entries never exceed the limit, and the fill ratio lies in [0, 1]."""
        api = scraped_demo.api
        series = dashboard_queries("client-cache.json", "Entries against the limit")
        fill = dashboard_queries("client-cache.json", "Fill", "stat")["A"]
        cache_label = label_of(names.CACHE_NAME)

        def bounded() -> None:
            at = scraped_demo.last_scrape()
            entries = {s.labels[cache_label]: s.value for s in api.instant(series["A"], at=at)}
            limits = {s.labels[cache_label]: s.value for s in api.instant(series["B"], at=at)}
            assert entries
            assert set(entries) == set(limits)
            for cache, count in entries.items():
                assert 0 <= count <= limits[cache] == 2, (cache, count, limits[cache])
            ratio = values_of(api.instant(fill, at=at))
            assert len(ratio) == 1
            assert 0.0 <= ratio[0] <= 1.0

        poll(bounded, timeout=WAIT_FOR_DATA_S, what="entries against the limit")

    def test_stream_duration_percentiles_are_ordered_and_plausible(
        self, scraped_demo: ScrapedDemo
    ) -> None:
        """p50 <= p95 <= p99 of stream duration and time to first item, all positive and under the
        demo's bounds."""
        api = scraped_demo.api
        duration = dashboard_queries("streams.json", "Stream duration")
        ttfi = dashboard_queries("streams.json", "Time to first item")

        def ordered() -> None:
            at = scraped_demo.last_scrape()
            for panel, ceiling in ((duration, 5.0), (ttfi, 0.5)):
                figures = []
                for ref in ("A", "B", "C"):
                    values = finite(values_of(api.instant(panel[ref], at=at)))
                    assert len(values) == 1, (ref, values)
                    figures.append(values[0])
                p50, p95, p99 = figures
                assert 0 < p50 <= p95 <= p99 <= ceiling, figures

        poll(ordered, timeout=WAIT_FOR_DATA_S, what="stream duration percentiles")

    def test_active_streams_are_whole_and_seen_running(self, scraped_demo: ScrapedDemo) -> None:
        """Active streams are non-negative whole numbers, above zero in some scrape while the demo
        streams."""
        api = scraped_demo.api
        expr = dashboard_queries("streams.json", "Active streams")["A"]
        stream_label = label_of(names.STREAM_NAME)

        def running_streams() -> None:
            series = api.range(expr, start=scraped_demo.started, end=time.time(), step=1)
            assert {s.labels.get(stream_label) for s in series} >= {"chat-stream"}
            values = [v for s in series for _, v in s.points]
            assert all(v >= 0 and v == int(v) for v in values), values
            assert max(values) > 0

        poll(running_streams, timeout=WAIT_FOR_DATA_S, what="active streams")

    def test_stalls_and_outcomes_fit_the_workload(self, scraped_demo: ScrapedDemo) -> None:
        """The demo's stalled stream shows as a stall, its timeout and its failing stream as
        outcomes and error types."""
        api = scraped_demo.api
        stalls = dashboard_queries("streams.json", "Stalls and timeouts")
        errors = dashboard_queries("streams.json", "Error rate by error.type")["A"]
        outcomes = dashboard_queries("streams.json", "Stream rate by outcome")["A"]
        stream_label = label_of(names.STREAM_NAME)
        error_label, outcome_label = label_of(names.ERROR_TYPE), label_of(names.STREAM_OUTCOME)

        def fitting() -> None:
            raw = api.instant(f"sum by ({stream_label}) ({names.STREAM_STALLS.prometheus_name})")
            assert {s.labels[stream_label]: s.value for s in raw}.get("chat-stream", 0) >= 1
            for ref in ("A", "B"):
                samples = api.instant(stalls[ref])
                assert samples, ref
                assert all(v >= 0 for v in values_of(samples)), ref
            error_types = {s.labels[error_label] for s in api.instant(errors)}
            assert {"TimeoutError", "ConnectionResetError"} <= error_types
            ended = {s.labels[outcome_label] for s in api.instant(outcomes)}
            assert {names.OUTCOME_COMPLETED, names.OUTCOME_ERROR, names.OUTCOME_TIMEOUT} <= ended

        poll(fitting, timeout=WAIT_FOR_DATA_S, what="stalls and outcomes")

    def test_ratio_panels_lie_between_zero_and_one(self, scraped_demo: ScrapedDemo) -> None:
        """Every panel in percent units gives values in [0, 1]."""
        api = scraped_demo.api
        ratio_panels = [
            (name, panel)
            for name, dashboard in load_dashboards().items()
            for panel in panels(dashboard)
            if panel.get("fieldConfig", {}).get("defaults", {}).get("unit") == "percentunit"
        ]
        assert len(ratio_panels) >= 4

        def bounded() -> None:
            for name, panel in ratio_panels:
                for ref, expr in dashboard_queries(name, panel["title"], panel["type"]).items():
                    values = finite(values_of(api.instant(expr)))
                    assert values, (name, panel["title"], ref)
                    assert all(0.0 <= v <= 1.0 for v in values), (name, panel["title"], values)

        poll(bounded, timeout=WAIT_FOR_DATA_S, what="ratio panels")
