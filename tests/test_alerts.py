"""Alert and recording rules: generated from knobs, checked and unit-tested with promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from support.promql_names import unknown_references
from support.scripts import load_script
from support.stack_tools import require_binary

REPO_ROOT = Path(__file__).resolve().parents[1]
ALERTS_DIR = REPO_ROOT / "deploy" / "alerts"
RULES = ALERTS_DIR / "thunkscope-rules.yml"
RULE_TESTS = ALERTS_DIR / "thunkscope-rules.test.yml"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"

#: SPEC section 6: every alert, with the severities its rules carry.
SPEC_ALERTS = {
    "ThunkscopeStreamsStuck": {"critical"},
    "ThunkscopeStreamsStalling": {"warning"},
    "ThunkscopeStreamErrorBudgetBurn": {"critical", "warning"},
    "ThunkscopeTimeToFirstItemSlow": {"warning", "critical"},
    "ThunkscopeQueueBackpressure": {"warning"},
    "ThunkscopeCacheThrashing": {"warning"},
    "ThunkscopeTelemetryAbsent": {"warning"},
}


def load_generator() -> ModuleType:
    """deploy/alerts/generate.py as a module."""
    return load_script(ALERTS_DIR / "generate.py", "alerts_generate")


generate = load_generator()


def rule_list(content: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule of a rule file's content, groups flattened."""
    return [rule for group in content["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs Debian's promtool; the caller shows its output on failure."""
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=120
    )


class TestShippedRules:
    def test_shipped_file_is_the_generators_default_output(self) -> None:
        """deploy/alerts/thunkscope-rules.yml equals generate.py's output with no override."""
        assert RULES.read_text(encoding="utf-8") == generate.render(), (
            "thunkscope-rules.yml is stale: run python deploy/alerts/generate.py"
        )

    def test_promtool_check_rules_is_clean(self) -> None:
        """promtool check rules accepts the file with no lint finding."""
        result = promtool("check", "rules", str(RULES))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        rules = rule_list(yaml.safe_load(RULES.read_text(encoding="utf-8")))
        assert f"SUCCESS: {len(rules)} rules found" in output, output
        assert "lint" not in output.lower(), output

    def test_promtool_unit_tests_pass(self) -> None:
        """promtool test rules runs every alert's and recording rule's unit test green."""
        result = promtool("test", "rules", str(RULE_TESTS))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout, result.stdout + result.stderr

    def test_every_rule_is_unit_tested(self) -> None:
        """The promtool tests assert every alert (a firing case) and every recording rule."""
        tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
        fired = {
            case["alertname"]
            for test in tests
            for case in test.get("alert_rule_test", [])
            if case.get("exp_alerts")
        }
        severities = {
            (case["alertname"], alert["exp_labels"]["severity"])
            for test in tests
            for case in test.get("alert_rule_test", [])
            for alert in case.get("exp_alerts") or []
        }
        recorded = {case["expr"] for test in tests for case in test.get("promql_expr_test", [])}
        rules = rule_list(yaml.safe_load(RULES.read_text(encoding="utf-8")))
        assert fired == set(SPEC_ALERTS)
        assert severities == {(a, s) for a, levels in SPEC_ALERTS.items() for s in levels}
        assert recorded == {rule["record"] for rule in rules if "record" in rule}

    def test_every_alert_of_the_spec_follows_the_mixin_conventions(self) -> None:
        """Each SPEC alert is there with its severities, a static summary, a description
        templated with the service, the stream and the value, and runbook and dashboard
        links that resolve."""
        rules = [r for r in rule_list(generate.rules()) if "alert" in r]
        found: dict[str, set[str]] = {}
        anchors = {h.lower() for h in re.findall(r"^## (\S+)", RUNBOOK.read_text(), re.M)}
        for rule in rules:
            found.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
            notes = rule["annotations"]
            assert set(notes) == {"summary", "description", "runbook_url", "dashboard_url"}
            assert "{{" not in notes["summary"], rule["alert"]
            assert "$labels.job" in notes["description"]
            if rule["alert"] != "ThunkscopeTelemetryAbsent":  # its value is always 1
                assert "$value" in notes["description"], rule["alert"]
            if "thunkscope_stream_name" in rule["expr"]:
                assert "$labels.thunkscope_stream_name" in notes["description"], rule["alert"]
            anchor = rule["alert"].lower()
            assert notes["runbook_url"].endswith(f"docs/runbook.md#{anchor}")
            assert anchor in anchors, f"docs/runbook.md has no section #{anchor}"
            assert notes["dashboard_url"].startswith("http://localhost:3000/d/thunkscope-")
        assert found == SPEC_ALERTS

    def test_rules_use_only_what_thunkscope_emits(self) -> None:
        """Every metric and label a rule queries or templates is emitted by the package or
        recorded by a rule of the file."""
        rules = rule_list(generate.rules())
        recorded = {
            rule["record"]: {"job", "thunkscope_stream_name"}
            if "ratio" in rule["record"]
            else {"job"}
            for rule in rules
            if "record" in rule
        }
        for rule in rules:
            where = rule.get("alert", rule.get("record"))
            assert unknown_references(rule["expr"], recorded) == (set(), set()), where
            for note in rule.get("annotations", {}).values():  # $labels.x in a template
                _, labels = unknown_references(f"{rule['expr']} {note!r}", recorded)
                assert labels == set(), where

    def test_the_emitted_check_catches_a_wrong_name(self) -> None:
        """The check above fails on a metric or a label the package does not emit."""
        assert unknown_references("rate(thunkscope_stream_stall_total[5m])")[0] == {
            "thunkscope_stream_stall_total"
        }
        assert unknown_references('thunkscope_stream_active{stream="x"}')[1] == {"stream"}
        assert unknown_references("sum by (outcome) (thunkscope_stream_active)")[1] == {"outcome"}


class TestKnobs:
    def test_an_override_changes_only_its_numbers(self) -> None:
        """Overriding thresholds and windows changes exactly those values in the file."""
        overrides = {"stuck_idle_s": "7", "stuck_idle_for": "3s", "burn_page_fast_short": "10s"}
        default = generate.rules()
        changed = generate.rules(overrides)
        assert differences(default, changed) == {
            ("1m", "3s"),  # the stuck alert's for:
            ("300", "7"),  # its threshold, in the expression and the description
            ("5m", "10s"),  # the short window and its recording rule
        }

    def test_bad_threshold_names_the_knob_and_writes_nothing(self, tmp_path: Path) -> None:
        """A threshold that is not a number fails naming the knob; no file appears."""
        out = tmp_path / "rules.yml"
        with pytest.raises(generate.KnobError, match="knob stuck_idle_s: 'soon' is not a number"):
            generate.render({"stuck_idle_s": "soon"})
        assert generate.main(["--set", "stuck_idle_s=soon", "--output", str(out)]) == 2
        assert not out.exists()

    @pytest.mark.parametrize("window", ["5 minutes", "5", "0m", "-1h", "1.5h", ""])
    def test_bad_window_names_the_knob_and_writes_nothing(
        self, window: str, tmp_path: Path
    ) -> None:
        """A window promtool rejects fails naming the knob; no file appears."""
        out = tmp_path / "rules.yml"
        with pytest.raises(generate.KnobError, match=r"knob stalling_window: .* Prometheus dura"):
            generate.render({"stalling_window": window})
        assert generate.main(["--set", f"stalling_window={window}", "--output", str(out)]) == 2
        assert not out.exists()

    def test_unknown_knob_and_bad_slo_are_refused(self) -> None:
        """An unknown knob, or an SLO outside (0, 1), fails naming it."""
        with pytest.raises(generate.KnobError, match="unknown knob 'stuck_idle'"):
            generate.render({"stuck_idle": "5"})
        with pytest.raises(generate.KnobError, match="knob slo: '1' must lie strictly between"):
            generate.render({"slo": "1"})

    def test_an_accepted_window_is_one_promtool_accepts(self, tmp_path: Path) -> None:
        """Windows that pass the knob check (compound ones too) make a file promtool accepts."""
        out = tmp_path / "rules.yml"
        sets = ["stalling_window=1h30m", "absent_for=90s", "burn_ticket_long=2d"]
        assert (
            generate.main([arg for s in sets for arg in ("--set", s)] + ["--output", str(out)]) == 0
        )
        result = promtool("check", "rules", str(out))
        assert result.returncode == 0, result.stdout + result.stderr


def differences(left: Any, right: Any) -> set[tuple[str, str]]:
    """The (old, new) pairs of number-or-duration tokens where two rule contents differ."""
    token = re.compile(r"\d+(?:\.\d+)?(?:ms|[smhdwy])?")
    found: set[tuple[str, str]] = set()
    a, b = yaml.safe_dump(left), yaml.safe_dump(right)
    split_a, split_b = token.split(a), token.split(b)
    assert split_a == split_b, "the texts differ in more than numbers and windows"
    for old, new in zip(token.findall(a), token.findall(b), strict=True):
        if old != new:
            found.add((old, new))
    return found


class TestStackAlerting:
    def test_compose_prometheus_loads_the_shipped_rules(self) -> None:
        """The compose Prometheus mounts thunkscope-rules.yml where deploy/prometheus.yml's
        rule_files looks, and sends alerts to the compose Alertmanager."""
        from test_stack import PROMETHEUS_CONFIG, bind_mounts, compose_model

        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
        service = compose_model()["services"]["prometheus"]
        flags = dict(arg.split("=", 1) for arg in service["command"] if "=" in arg)
        config_dir = Path(flags["--config.file"]).parent
        mounts = bind_mounts(service)
        assert [mounts[str(config_dir / path)].resolve() for path in config["rule_files"]] == [
            RULES
        ]
        targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
        assert targets == ["alertmanager:9093"]
        assert "alertmanager" in service["depends_on"]

    def test_compose_alertmanager_runs_the_shipped_config(self) -> None:
        """The compose Alertmanager runs deploy/alertmanager/alertmanager.yml on 9093."""
        from test_stack import bind_mounts, compose_model, published_ports

        service = compose_model()["services"]["alertmanager"]
        flags = dict(arg.split("=", 1) for arg in service["command"] if "=" in arg)
        config = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
        assert bind_mounts(service)[flags["--config.file"]].resolve() == config
        assert published_ports(service) == {9093}

    def test_grafana_has_the_alertmanager_datasource(self) -> None:
        """Grafana's provisioned Alertmanager datasource points at the compose Alertmanager,
        so its alert list shows the firing thunkscope alerts."""
        from test_stack import compose_model, provisioned_datasources

        (alertmanager,) = [
            ds for ds in provisioned_datasources().values() if ds["type"] == "alertmanager"
        ]
        assert alertmanager["url"] == "http://alertmanager:9093"
        assert alertmanager["jsonData"]["implementation"] == "prometheus"
        assert "alertmanager" in compose_model()["services"]["grafana"]["depends_on"]
