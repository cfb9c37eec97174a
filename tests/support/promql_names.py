"""What a PromQL expression refers to, checked against what thunkscope emits.

Shared by the dashboard and the alert-rule tests: a query over a metric or a label the
package never emits is a panel that stays empty or an alert that can never fire.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from support.stack_dashboards import metric_names
from thunkscope import names

#: Labels every scraped series may carry besides its metric's attributes.
SCRAPE_LABELS = frozenset({"job", "instance", "__name__"})

_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")


def label_of(attribute: str) -> str:
    """The Prometheus label an OTel attribute becomes."""
    return attribute.replace(".", "_")


def emitted_series() -> dict[str, names.Metric]:
    """Every Prometheus series name the package emits, with the contract's metric behind it."""
    found: dict[str, names.Metric] = {}
    for metric in names.METRICS:
        if metric.kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                found[metric.prometheus_name + suffix] = metric
        else:
            found[metric.prometheus_name] = metric
    return found


def labels_of(series: str, emitted: Mapping[str, names.Metric]) -> set[str]:
    """The labels a series of the package can carry."""
    metric = emitted[series]
    labels = {label_of(attribute) for attribute in metric.attributes} | SCRAPE_LABELS
    return labels | ({"le"} if series.endswith("_bucket") else set())


def referenced_labels(expr: str) -> set[str]:
    """The labels an expression matches on, groups by or templates."""
    found = {m for m in _MATCHER_LABEL.findall(expr) if m != "__name__"}
    for group in _GROUPING.findall(expr):
        found.update(label.strip() for label in group.split(",") if label.strip())
    found.update(_TEMPLATE_LABEL.findall(expr))
    return found


def unknown_references(
    expr: str, recorded: Mapping[str, set[str]] | None = None
) -> tuple[set[str], set[str]]:
    """(metrics, labels) `expr` uses that neither the package nor a recording rule emits.

    `recorded` maps recording-rule names to the labels their series carry. A label counts
    as known when one of the expression's metrics carries it.
    """
    emitted = emitted_series()
    recorded = dict(recorded or {})
    metrics = metric_names(expr)
    unknown_metrics = metrics - set(emitted) - set(recorded)
    known_labels = set(SCRAPE_LABELS)
    for metric in metrics:
        if metric in emitted:
            known_labels |= labels_of(metric, emitted)
        elif metric in recorded:
            known_labels |= recorded[metric]
    if re.search(r'__name__\s*=~\s*"thunkscope_', expr):  # any thunkscope series
        known_labels |= {label for series in emitted for label in labels_of(series, emitted)}
    return unknown_metrics, referenced_labels(expr) - known_labels
