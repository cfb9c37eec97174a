"""Alerting end to end: Debian's Prometheus evaluates the shipped rules on a real thunkscope
workload and Debian's Alertmanager notifies a webhook receiver run by the test."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.stack_prometheus import prometheus
from support.stack_tools import (
    READY_TIMEOUT_S,
    free_port,
    poll,
    require_binary,
    running,
    wait_http_ok,
)
from test_alerts import differences, generate

REPO_ROOT = Path(__file__).resolve().parents[1]
ALERTMANAGER_CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
WORKLOAD = Path(__file__).resolve().parent / "support" / "alert_workload.py"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"

#: Test-only knob overrides: shorter thresholds, for: and windows, nothing else.
E2E_OVERRIDES = {
    "stuck_idle_s": "3",
    "stuck_idle_for": "2s",
    "burn_page_fast_long": "30s",
    "burn_page_fast_short": "10s",
    "burn_page_for": "2s",
}
#: Generous: a loaded 2-core machine, scrape and evaluation at 1 s, group_wait 1 s.
NOTIFY_DEADLINE_S = 180.0


@dataclass
class Webhook:
    """Alertmanager's notifications as received: (monotonic time, payload)."""

    url: str
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def alerts(self, status: str, alertname: str) -> list[tuple[float, dict[str, Any]]]:
        """Each alert of that name and status in a notification, with its arrival time."""
        return [
            (at, alert)
            for at, payload in list(self.received)
            for alert in payload["alerts"]
            if alert["status"] == status and alert["labels"]["alertname"] == alertname
        ]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """An HTTP receiver on a free loopback port recording every POSTed notification."""
    hook = Webhook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.received.append((time.monotonic(), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Stack:
    """A workload, the Prometheus evaluating the rules on it and the Alertmanager."""

    job: str
    workdir: Path
    release: Path
    logs: list[Path]
    started: float = 0.0

    def output(self) -> str:
        """The programs' output, for a failure message."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in self.logs
            if log.exists()
        )


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """The shipped Alertmanager config with the receivers pointed at the test's webhook
    and the grouping waits at 1 s; the routes as shipped."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook_url + receiver["name"]
    config["route"] |= {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}
    return config


@pytest.fixture
def stack(request: pytest.FixtureRequest, webhook: Webhook, tmp_path: Path) -> Iterator[Stack]:
    """Starts the workload of `request.param` ('hang' or 'timeouts'), Alertmanager and a
    Prometheus loading the rules generated with E2E_OVERRIDES."""
    mode: str = request.param
    prom_binary = require_binary("prometheus")
    am_binary = ALERTMANAGER if Path(ALERTMANAGER).exists() else require_binary("alertmanager")
    job = f"svc-{mode}"
    rules = tmp_path / "rules.yml"
    rules.write_text(generate.render(E2E_OVERRIDES), encoding="utf-8")
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(yaml.safe_dump(alertmanager_config(webhook.url)), encoding="utf-8")
    am_port, metrics_port = free_port(), free_port()
    release = tmp_path / "release"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    )
    workload_log, am_log = tmp_path / "workload.log", tmp_path / "alertmanager.log"
    stack = Stack(job, tmp_path, release, [workload_log, am_log, tmp_path / "prom/prometheus.log"])
    am_args = [
        am_binary,
        f"--config.file={am_config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    workload_args = [sys.executable, str(WORKLOAD), "--port", str(metrics_port), "--mode", mode]
    workload_args += ["--release", str(release)]
    extra = (
        f"rule_files: [{json.dumps(str(rules))}]\n"
        "alerting:\n  alertmanagers:\n"
        f"    - static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]\n"
    )
    with (
        running(am_args, log=am_log) as am,
        running(workload_args, log=workload_log, env=env) as workload,
    ):
        wait_http_ok(f"http://127.0.0.1:{am_port}/-/ready", timeout=READY_TIMEOUT_S,
                     process=am, log=am_log)  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{metrics_port}/metrics", timeout=READY_TIMEOUT_S,
                     process=workload, log=workload_log)  # fmt: skip
        stack.started = time.monotonic()  # the workload serves /metrics: its streams run
        with prometheus(
            prom_binary,
            tmp_path / "prom",
            job=job,
            targets=[f"127.0.0.1:{metrics_port}"],
            extra_config=extra,
            extra_args=("--rules.alert.resend-delay=1s",),
        ):
            yield stack
        assert workload.poll() is None, stack.output()


def wait_for(webhook: Webhook, status: str, alertname: str, stack: Stack, **labels: str) -> float:
    """Waits for a notification of `alertname` in `status` with `labels`; its arrival time."""

    def arrived() -> float:
        for at, alert in webhook.alerts(status, alertname):
            if all(alert["labels"].get(k) == v for k, v in labels.items()):
                return at
        raise AssertionError(f"no {status} {alertname} {labels} yet")

    try:
        return poll(arrived, timeout=NOTIFY_DEADLINE_S, what=f"{status} {alertname}")
    except AssertionError as error:
        raise AssertionError(f"{error}\nreceived: {webhook.received}\n{stack.output()}") from error


class TestOverrides:
    def test_e2e_overrides_change_only_their_numbers(self) -> None:
        """The rules the end-to-end tests load differ from the shipped ones only in the
        overridden thresholds, for: and windows."""
        assert differences(generate.rules(), generate.rules(E2E_OVERRIDES)) == {
            (generate.DEFAULTS[knob], value) for knob, value in E2E_OVERRIDES.items()
        }


class TestAlertmanagerConfig:
    def test_amtool_accepts_the_shipped_config(self) -> None:
        """amtool check-config passes on deploy/alertmanager/alertmanager.yml."""
        amtool = require_binary("amtool")
        result = subprocess_run([amtool, "check-config", str(ALERTMANAGER_CONFIG)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout, result.stdout

    @pytest.mark.parametrize(
        ("labels", "receiver"),
        [
            (["alertname=ThunkscopeStreamsStuck", "severity=critical"], "thunkscope-pages"),
            (
                ["alertname=ThunkscopeStreamErrorBudgetBurn", "severity=warning"],
                "thunkscope-tickets",
            ),
            (["alertname=ThunkscopeCacheThrashing", "severity=warning"], "thunkscope-tickets"),
        ],
    )
    def test_amtool_routes_by_severity(self, labels: list[str], receiver: str) -> None:
        """amtool config routes test sends critical alerts to pages, the others to tickets."""
        amtool = require_binary("amtool")
        args = [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}"]
        result = subprocess_run([*args, f"--verify.receivers={receiver}", *labels])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == receiver


def subprocess_run(args: list[str]) -> Any:
    """Runs a short command, capturing its text output."""
    import subprocess

    return subprocess.run(args, capture_output=True, text=True, timeout=60)


class TestAlertsEndToEnd:
    @pytest.mark.parametrize("stack", ["hang"], indirect=True)
    def test_stuck_stream_fires_then_resolves(self, stack: Stack, webhook: Webhook) -> None:
        """A stream that hangs fires ThunkscopeStreamsStuck with its name and service at the
        webhook (routed to pages); once it ends, the webhook gets the resolved alert."""
        hung = stack.started  # the workload starts its hanging stream first
        labels = {"thunkscope_stream_name": "chat", "job": stack.job, "reason": "idle"}
        fired = wait_for(webhook, "firing", "ThunkscopeStreamsStuck", stack, **labels)
        (alert,) = {
            json.dumps(a["labels"], sort_keys=True): a
            for _, a in webhook.alerts("firing", "ThunkscopeStreamsStuck")
        }.values()
        expected = {"alertname": "ThunkscopeStreamsStuck", "severity": "critical"} | labels
        assert alert["labels"] == expected
        assert alert["annotations"]["description"].startswith(
            f"A running stream chat of service {stack.job} has gone "
        )
        receivers = {p["receiver"] for _, p in webhook.received}
        assert receivers == {"thunkscope-pages"}
        stack.release.touch()
        ended = time.monotonic()
        resolved = wait_for(webhook, "resolved", "ThunkscopeStreamsStuck", stack, **labels)
        assert resolved > ended  # resolved by the end of the stream, not before
        print(
            f"\nmeasured: hang -> firing notification {fired - hung:.1f} s "
            f"(threshold 3 s + for 2 s); stream end -> resolved {resolved - ended:.1f} s"
        )

    @pytest.mark.parametrize("stack", ["timeouts"], indirect=True)
    def test_timeouts_burn_the_error_budget(self, stack: Stack, webhook: Webhook) -> None:
        """Streams that mostly time out fire ThunkscopeStreamErrorBudgetBurn (critical) for
        their stream name and service."""
        started = stack.started
        labels = {"thunkscope_stream_name": "flaky", "job": stack.job, "severity": "critical"}
        fired = wait_for(webhook, "firing", "ThunkscopeStreamErrorBudgetBurn", stack, **labels)
        (alert,) = {
            json.dumps(a["labels"], sort_keys=True): a
            for _, a in webhook.alerts("firing", "ThunkscopeStreamErrorBudgetBurn")
            if a["labels"]["severity"] == "critical"
        }.values()
        assert alert["labels"] == {"alertname": "ThunkscopeStreamErrorBudgetBurn"} | labels
        assert "ends in error or timeout for" in alert["annotations"]["description"]
        print(f"\nmeasured: start of timeouts -> burn notification {fired - started:.1f} s")
