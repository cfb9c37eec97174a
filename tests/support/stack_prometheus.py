"""A real Prometheus for tests: started on a free loopback port, queried over its HTTP API.

Used by tests/test_stack.py to scrape the demo workload every second and run every
dashboard query against what it scraped. Works with Debian's Prometheus 2.42 and later.
"""

from __future__ import annotations

import contextlib
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.stack_tools import READY_TIMEOUT_S, free_port, running, wait_http_ok


class QueryError(AssertionError):
    """Prometheus refused a query (bad PromQL, bad parameters): the answer's error text."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant-query answer: its labels and its value."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One series of a range-query answer: its labels and its (time, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


def _value(raw: str) -> float:
    return float(raw)  # Prometheus sends "NaN", "+Inf", "-Inf" as strings; float() reads them


class PrometheusAPI:
    """A thin client of Prometheus' /api/v1 endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _get(self, path: str, params: dict[str, str | list[str]]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"{self.base_url}{path}?{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            # 400 and 422 carry the parser's or evaluator's message in the JSON body.
            with error:
                try:
                    answer = json.load(error)
                except ValueError:
                    raise QueryError(f"{url}: HTTP {error.code}") from error
        if answer.get("status") != "success":
            raise QueryError(f"{answer.get('errorType')}: {answer.get('error')} ({params})")
        return answer["data"]

    def instant(self, expr: str, at: float | None = None) -> list[Sample]:
        """Evaluates `expr` at time `at` (default: now); vector and scalar answers."""
        params: dict[str, str | list[str]] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [Sample({}, _value(data["result"][1]))]
        if data["resultType"] != "vector":
            raise QueryError(f"{expr!r} gave a {data['resultType']}, not an instant vector")
        return [Sample(item["metric"], _value(item["value"][1])) for item in data["result"]]

    def matrix(self, expr: str, at: float | None = None) -> list[Series]:
        """Evaluates a range-vector selector such as `metric[10s]`: the raw samples."""
        params: dict[str, str | list[str]] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] != "matrix":
            raise QueryError(f"{expr!r} gave a {data['resultType']}, not a range vector")
        return [
            Series(item["metric"], [(float(t), _value(v)) for t, v in item["values"]])
            for item in data["result"]
        ]

    def range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """Evaluates `expr` at every `step` seconds from `start` to `end`, as a panel does."""
        data = self._get(
            "/api/v1/query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"},
        )
        return [
            Series(item["metric"], [(float(t), _value(v)) for t, v in item["values"]])
            for item in data["result"]
        ]

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of `label` on series matching selector `match` (Grafana's label_values)."""
        data: list[str] = self._get(f"/api/v1/label/{label}/values", {"match[]": [match]})
        return data


def finite(values: list[float]) -> list[float]:
    """The values that are neither NaN nor infinite."""
    return [value for value in values if math.isfinite(value)]


@dataclass(frozen=True)
class RunningPrometheus:
    """A started Prometheus: its API, its URL and where it logs."""

    api: PrometheusAPI
    url: str
    log: Path


CONFIG_TEMPLATE = """\
global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: {job}
    honor_labels: {honor_labels}
    static_configs:
      - targets: [{targets}]
"""


@contextlib.contextmanager
def prometheus(
    binary: str,
    workdir: Path,
    *,
    job: str,
    targets: list[str],
    interval: str = "1s",
    extra_config: str = "",
    extra_args: tuple[str, ...] = (),
    honor_labels: bool = False,
) -> Iterator[RunningPrometheus]:
    """Runs Prometheus on a free 127.0.0.1 port, scraping `targets` as job `job`.

    `honor_labels` keeps the `job` and `instance` labels the target sets, as
    deploy/prometheus.yml does for the collector's exporter (`job` = service.name).

    `extra_config` adds top-level sections (rule_files, alerting); `extra_args` flags."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        CONFIG_TEMPLATE.format(
            interval=interval,
            job=job,
            targets=", ".join(f'"{t}"' for t in targets),
            honor_labels="true" if honor_labels else "false",
        )
        + extra_config
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "prometheus.log"
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        *extra_args,
    ]
    with running(args, log=log) as process:
        wait_http_ok(f"{url}/-/ready", timeout=READY_TIMEOUT_S, process=process, log=log)
        yield RunningPrometheus(PrometheusAPI(url), url, log)
