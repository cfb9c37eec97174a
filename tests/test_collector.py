"""The shipped collector configs run by the real collector (built from collector/manifest.yaml).

`otelcol validate` checks every collector config the repo ships (found, not listed, so new
ones are covered); the test overlay on deploy/otel-collector.yaml re-points endpoints and
changes nothing else; and the launcher fails with the collector's own message on bad input.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.otelcol import (
    ProgramFailed,
    collector,
    collector_binary,
    shipped_collector_configs,
    validate,
)
from support.stack_tools import REPO_ROOT, free_port

SHIPPED = REPO_ROOT / "deploy" / "otel-collector.yaml"

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
            pytest.raises(ProgramFailed, match="failed before it was ready") as failed,
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
                pytest.raises(ProgramFailed, match="failed before it was ready") as failed,
                collector([SHIPPED, path], log, health_endpoint=ends.health),
            ):
                pass
        assert "address already in use" in str(failed.value)
