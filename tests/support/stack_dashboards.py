"""Reading the committed Grafana dashboards (dashboards/*.json) for tests/test_stack.py.

Panels, their queries and datasources, template variables, Grafana's variable
substitution, and the metric names a PromQL expression reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from support.stack_tools import REPO_ROOT

DASHBOARDS_DIR = REPO_ROOT / "dashboards"


@dataclass(frozen=True)
class Query:
    """One query of one panel."""

    dashboard: str
    panel: str
    panel_type: str
    ref_id: str
    datasource_type: str
    datasource_uid: str
    expr: str

    @property
    def where(self) -> str:
        """`dashboard / panel [refId]`, to name the query in a failure message."""
        return f"{self.dashboard} / {self.panel} [{self.ref_id}]"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every committed dashboard, by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included, rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panels(panel)
        else:
            yield panel


def datasource_of(owner: Mapping[str, Any], fallback: Mapping[str, Any]) -> dict[str, str]:
    """The datasource reference of a target or panel, falling back to the enclosing one's."""
    ref = owner.get("datasource") or fallback.get("datasource") or {}
    if isinstance(ref, str):  # legacy: a datasource name
        return {"type": "", "uid": ref}
    return {"type": str(ref.get("type", "")), "uid": str(ref.get("uid", ""))}


def queries(dashboards: Mapping[str, Mapping[str, Any]]) -> list[Query]:
    """Every target of every panel of the given dashboards."""
    found: list[Query] = []
    for name, dashboard in dashboards.items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                ref = datasource_of(target, panel)
                found.append(
                    Query(
                        dashboard=name,
                        panel=str(panel.get("title", "")),
                        panel_type=str(panel.get("type", "")),
                        ref_id=str(target.get("refId", "")),
                        datasource_type=ref["type"],
                        datasource_uid=ref["uid"],
                        expr=str(target.get("expr", "")),
                    )
                )
    return found


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's template variables."""
    listed: list[dict[str, Any]] = dashboard.get("templating", {}).get("list", [])
    return listed


def datasource_uids(dashboard: Mapping[str, Any]) -> set[str]:
    """Every datasource uid the dashboard refers to: panels, targets, variables, annotations."""
    uids: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("datasource")
            if isinstance(ref, dict) and isinstance(ref.get("uid"), str):
                uids.add(ref["uid"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    # "-- Grafana --" and mixed-datasource uids are Grafana's own, never provisioned.
    return uids - {"grafana", "-- Grafana --", "-- Mixed --", "-- Dashboard --"}


_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")


def variable_names(expr: str) -> set[str]:
    """The template variables an expression uses ($x, ${x}, ${x:fmt}, [[x]])."""
    return {next(group for group in match.groups() if group) for match in _VARIABLE.finditer(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with every variable replaced from `values`; KeyError names one left unknown."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values[name]

    return _VARIABLE.sub(replace, expr)


def regex_alternation(values: list[str]) -> str:
    """A multi-value selection as Grafana formats it into a Prometheus regex: `(a|b)`."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


def parse_label_values(query: str) -> tuple[str | None, str]:
    """`label_values(selector, label)` as (selector or None, label)."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    return match.group("selector"), match.group("label")


# --- metric names in PromQL -------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?!\w)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not labels, functions or keywords).

    Also the names in `{__name__="..."}` matchers that are exact.
    """
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def name_patterns(expr: str) -> set[str]:
    """The regexes of `{__name__=~"..."}` matchers in an expression."""
    return set(re.findall(r'__name__\s*=~\s*"([^"]+)"', expr))
