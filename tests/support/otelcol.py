"""The real OpenTelemetry Collector (the thunkscope distribution) and Jaeger v2 for tests.

Both are Go programs built from their published modules by `scripts/build-collector.sh`
and `scripts/build-jaeger.sh` into ~/.cache/thunkscope (CI builds them through
`scripts/install-stack-tools.sh`; here the scripts only print the cached path). A program
is started with its output in a log file, and waited for by probing its readiness while
watching its exit: a bad config or a port in use fails the test at once with the program's
own error message, never with a timeout.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import urllib.error
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.stack_tools import REPO_ROOT, free_port, http_get, poll, running

COLLECTOR_SCRIPT = REPO_ROOT / "scripts" / "build-collector.sh"
JAEGER_SCRIPT = REPO_ROOT / "scripts" / "build-jaeger.sh"

# Where the repo's collector configs live; every YAML file there whose `service` section
# has `pipelines` is a collector config (see `shipped_collector_configs`).
CONFIG_DIRS = (REPO_ROOT / "deploy", REPO_ROOT / "collector")


class ProgramFailed(RuntimeError):
    """A real program exited, or never became ready: its own output is in the message."""


@functools.cache
def built_binary(script: Path) -> str:
    """The path `script` prints: the cached binary, built first when it is not cached yet."""
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, check=False, timeout=3600
    )
    if result.returncode != 0:
        pytest.fail(f"{script.name} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1]


def collector_binary() -> str:
    """The thunkscope collector built from collector/manifest.yaml."""
    return built_binary(COLLECTOR_SCRIPT)


def jaeger_binary() -> str:
    """Jaeger v2 built from github.com/jaegertracing/jaeger."""
    return built_binary(JAEGER_SCRIPT)


def shipped_collector_configs() -> list[Path]:
    """Every collector config the repo ships: YAML files under deploy/ and collector/ whose
    `service` section declares `pipelines`."""
    found: list[Path] = []
    for directory in CONFIG_DIRS:
        for path in sorted([*directory.rglob("*.yaml"), *directory.rglob("*.yml")]):
            document = yaml.safe_load(path.read_text())
            if not isinstance(document, dict):
                continue
            service = document.get("service")
            if isinstance(service, dict) and "pipelines" in service:
                found.append(path)
    return found


def validate(binary: str, configs: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    """`otelcol validate` on the merge of `configs` (later files override earlier ones)."""
    args = [binary, "validate", *(f"--config={config}" for config in configs)]
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)


def _wait_ready(
    process: subprocess.Popen[bytes], url: str, log: Path, *, what: str, timeout: float
) -> None:
    """Polls `url` until it answers, failing at once with the log if `process` exits."""

    def ready() -> None:
        output = log.read_text(errors="replace")
        if process.poll() is not None:
            raise ProgramFailed(
                f"{what} failed before it was ready (exited with {process.returncode}):\n"
                + output[-6000:]
            )
        # The collector prints its fatal error as a line "Error: ..." then may linger after
        # its shutdown for a while: that line is the end, not something to wait out.
        fatal = [line for line in output.splitlines() if line.startswith("Error: ")]
        if fatal:
            raise ProgramFailed(
                f"{what} failed before it was ready ({fatal[-1]}):\n" + output[-6000:]
            )
        try:
            http_get(url)
        except urllib.error.URLError as error:
            raise OSError(str(error)) from error

    try:
        poll(ready, timeout=timeout, what=f"waiting for {what} at {url}")
    except ProgramFailed:
        raise
    except AssertionError as error:
        raise ProgramFailed(
            f"{error}; its output:\n" + log.read_text(errors="replace")[-6000:]
        ) from error


@dataclass(frozen=True)
class RunningCollector:
    """A started collector: its process, log and the health endpoint it answered on."""

    process: subprocess.Popen[bytes]
    log: Path
    health_url: str


@contextlib.contextmanager
def collector(
    configs: Sequence[Path], log: Path, *, health_endpoint: str, timeout: float = 60
) -> Iterator[RunningCollector]:
    """Runs the built collector on the merge of `configs`; ready once its health_check
    extension (at `health_endpoint`, host:port) answers."""
    args = [collector_binary(), *(f"--config={config}" for config in configs)]
    url = f"http://{health_endpoint}/"
    with running(args, log=log) as process:
        _wait_ready(process, url, log, what="the collector", timeout=timeout)
        yield RunningCollector(process, log, url)


@dataclass(frozen=True)
class RunningJaeger:
    """A started Jaeger v2: where it receives OTLP and where its query API answers."""

    process: subprocess.Popen[bytes]
    log: Path
    otlp_grpc: str
    otlp_http: str
    query_url: str


JAEGER_CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@contextlib.contextmanager
def jaeger(workdir: Path, timeout: float = 60) -> Iterator[RunningJaeger]:
    """Runs Jaeger v2 with in-memory storage and its OTLP receiver on free loopback ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("health", "query", "query_grpc", "grpc", "http")}
    config = workdir / "jaeger.yaml"
    config.write_text(JAEGER_CONFIG.format(**ports))
    log = workdir / "jaeger.log"
    with running([jaeger_binary(), f"--config={config}"], log=log) as process:
        query_url = f"http://127.0.0.1:{ports['query']}"
        _wait_ready(process, f"{query_url}/api/services", log, what="jaeger", timeout=timeout)
        yield RunningJaeger(
            process,
            log,
            otlp_grpc=f"127.0.0.1:{ports['grpc']}",
            otlp_http=f"http://127.0.0.1:{ports['http']}",
            query_url=query_url,
        )
