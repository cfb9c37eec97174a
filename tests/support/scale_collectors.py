"""The shipped agent and gateway configs, turned into test configs for collectors on loopback.

The test changes only what a test must: addresses (loopback ports instead of compose
service names), the collectors' own telemetry (off, so three collectors share a host),
the gateway's export (a file instead of Tempo) and two numbers: `decision_wait` and the
slow-first-item threshold, shortened so the test takes seconds. `changed_paths` lists what
differs, and tests/test_scale_e2e.py checks it is exactly that.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from support.stack_tools import REPO_ROOT

GATEWAY = REPO_ROOT / "deploy" / "collector-gateway.yaml"
AGENT = REPO_ROOT / "deploy" / "collector-agent.yaml"

#: The test's decision_wait: a trace here lasts about a second and its spans leave the SDK
#: within its 0.2 s export schedule; 10 s leaves the rest for a loaded machine.
TEST_DECISION_WAIT = "10s"
SHIPPED_SLOW_FIRST_ITEM = "> 10.0"


def load(path: Path) -> dict[str, Any]:
    """A collector config as data."""
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def gateway_config(
    *, grpc: int, health: int, out: Path, slow_first_item_s: float
) -> dict[str, Any]:
    """The shipped gateway on loopback, exporting kept traces to the file `out`."""
    config = copy.deepcopy(load(GATEWAY))
    config["extensions"]["health_check"]["endpoint"] = f"127.0.0.1:{health}"
    config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = f"127.0.0.1:{grpc}"
    sampling = config["processors"]["tail_sampling"]
    sampling["decision_wait"] = TEST_DECISION_WAIT
    for policy in sampling["policies"]:
        if policy["name"] == "stream-slow-first-item":
            (condition,) = policy["ottl_condition"]["span"]
            assert condition.endswith(SHIPPED_SLOW_FIRST_ITEM), condition
            policy["ottl_condition"]["span"] = [
                condition.removesuffix(SHIPPED_SLOW_FIRST_ITEM) + f"> {slow_first_item_s}"
            ]
    config["exporters"] = {"file": {"path": str(out)}}
    config["service"]["pipelines"]["traces"]["exporters"] = ["file"]
    config["service"]["telemetry"] = {"metrics": {"level": "none"}}
    return config


def agent_config(*, grpc: int, health: int, metrics: int, gateways: list[int]) -> dict[str, Any]:
    """The shipped agent on loopback, routing to the test's gateways."""
    config = copy.deepcopy(load(AGENT))
    config["extensions"]["health_check"]["endpoint"] = f"127.0.0.1:{health}"
    protocols = config["receivers"]["otlp"]["protocols"]
    protocols["grpc"]["endpoint"] = f"127.0.0.1:{grpc}"
    del protocols["http"]
    resolver = config["exporters"]["load_balancing"]["resolver"]
    resolver["static"]["hostnames"] = [f"127.0.0.1:{port}" for port in gateways]
    config["exporters"]["prometheus"]["endpoint"] = f"127.0.0.1:{metrics}"
    config["service"]["telemetry"] = {"metrics": {"level": "none"}}
    return config


def changed_paths(shipped: Any, test: Any, path: str = "") -> set[str]:
    """The dotted paths at which two configs differ (list items by index)."""
    if isinstance(shipped, dict) and isinstance(test, dict):
        found: set[str] = set()
        for key in shipped.keys() | test.keys():
            where = f"{path}.{key}" if path else str(key)
            if key not in shipped or key not in test:
                found.add(where)
            else:
                found |= changed_paths(shipped[key], test[key], where)
        return found
    if isinstance(shipped, list) and isinstance(test, list) and len(shipped) == len(test):
        found = set()
        for index, (a, b) in enumerate(zip(shipped, test, strict=True)):
            found |= changed_paths(a, b, f"{path}[{index}]")
        return found
    return set() if shipped == test else {path}


def write(config: dict[str, Any], path: Path) -> Path:
    """`config` as a YAML file at `path`."""
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
