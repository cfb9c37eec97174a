"""Builds thunkscope's Prometheus recording and alerting rules from documented knobs.

    python deploy/alerts/generate.py                       # rewrites thunkscope-rules.yml
    python deploy/alerts/generate.py --set stuck_idle_s=600 --output my-rules.yml
    python deploy/alerts/generate.py --knobs               # lists every knob and its default

The committed ``thunkscope-rules.yml`` is this script's output with every knob at its
default (a test checks it), so a user changes a threshold or a window by regenerating with
``--set``, never by editing the shipped file. Alert names, labels and annotations follow
SPEC section 6 and the monitoring-mixin conventions: label ``severity``; annotations
``summary`` (static), ``description`` (templated), ``runbook_url`` and ``dashboard_url``.
Metric and label names come from `thunkscope.names`, so the rules cannot drift from what
the package emits. Bad input (a threshold that is not a number, a window Prometheus would
reject) fails naming the knob, before any file is written.
"""

# ruff: noqa: E501 - the knob table reads best one knob a line
from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

try:
    from thunkscope import names
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from thunkscope import names

HERE = Path(__file__).resolve().parent
RULES_FILE = HERE / "thunkscope-rules.yml"

KnobKind = Literal["number", "duration", "text"]


@dataclass(frozen=True)
class Knob:
    """One threshold, window or link of the rules: its default and what it changes."""

    name: str
    kind: KnobKind
    default: str
    doc: str


KNOBS: tuple[Knob, ...] = (
    Knob("stuck_idle_s", "number", "300", "StreamsStuck: seconds a running stream may go without an item."),
    Knob("stuck_idle_for", "duration", "1m", "StreamsStuck (idle): how long the idle time stays over the threshold."),
    Knob("stuck_no_finish_window", "duration", "15m", "StreamsStuck: streams running while none finished over this window."),
    Knob("stuck_no_finish_for", "duration", "1m", "StreamsStuck (none finishing): for: of that rule."),
    Knob("stalling_ratio", "number", "0.05", "StreamsStalling: stalls per ended stream above which it fires."),
    Knob("stalling_window", "duration", "15m", "StreamsStalling: the window the ratio is taken over."),
    Knob("stalling_for", "duration", "5m", "StreamsStalling: for:."),
    Knob("slo", "number", "0.99", "ErrorBudgetBurn: the success objective (error and timeout outcomes fail it)."),
    Knob("burn_page_fast", "number", "14.4", "ErrorBudgetBurn: burn rate of the fast critical pair."),
    Knob("burn_page_fast_long", "duration", "1h", "ErrorBudgetBurn: long window of the fast pair."),
    Knob("burn_page_fast_short", "duration", "5m", "ErrorBudgetBurn: short window of the fast pair."),
    Knob("burn_page_slow", "number", "6", "ErrorBudgetBurn: burn rate of the slow critical pair."),
    Knob("burn_page_slow_long", "duration", "6h", "ErrorBudgetBurn: long window of the slow pair."),
    Knob("burn_page_slow_short", "duration", "30m", "ErrorBudgetBurn: short window of the slow pair."),
    Knob("burn_ticket", "number", "3", "ErrorBudgetBurn: burn rate of the warning pair."),
    Knob("burn_ticket_long", "duration", "1d", "ErrorBudgetBurn: long window of the warning pair."),
    Knob("burn_ticket_short", "duration", "2h", "ErrorBudgetBurn: short window of the warning pair."),
    Knob("burn_page_for", "duration", "2m", "ErrorBudgetBurn (critical): for:."),
    Knob("burn_ticket_for", "duration", "15m", "ErrorBudgetBurn (warning): for:."),
    Knob("latency_window", "duration", "5m", "TimeToFirstItemSlow, QueueBackpressure: the rate window of the quantiles."),
    Knob("ttfi_p95_s", "number", "10", "TimeToFirstItemSlow (warning): p95 time to first item, seconds."),
    Knob("ttfi_p95_for", "duration", "10m", "TimeToFirstItemSlow (warning): for:."),
    Knob("ttfi_p99_s", "number", "30", "TimeToFirstItemSlow (critical): p99 time to first item, seconds."),
    Knob("ttfi_p99_for", "duration", "5m", "TimeToFirstItemSlow (critical): for:."),
    Knob("put_wait_p99_s", "number", "1", "QueueBackpressure: p99 put-wait, seconds."),
    Knob("put_wait_for", "duration", "10m", "QueueBackpressure: for:."),
    Knob("eviction_ratio", "number", "0.1", "CacheThrashing: evictions per lookup above which it fires."),
    Knob("eviction_window", "duration", "5m", "CacheThrashing: the rate window."),
    Knob("eviction_for", "duration", "15m", "CacheThrashing: for:."),
    Knob("absent_lookback", "duration", "1h", "TelemetryAbsent: a job that reported within this, at its start..."),
    Knob("absent_for", "duration", "10m", "TelemetryAbsent: ...and has reported nothing for this long."),
    Knob("runbook_base", "text", "https://github.com/thunkscope/thunkscope/blob/main/docs/runbook.md", "Where docs/runbook.md is served; #<alert> is appended."),
    Knob("grafana_url", "text", "http://localhost:3000", "Grafana's base URL for the dashboard links."),
)  # fmt: skip

DEFAULTS: dict[str, str] = {knob.name: knob.default for knob in KNOBS}

# A Prometheus duration as its parser (and so promtool) accepts it: units largest first.
_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")


class KnobError(ValueError):
    """A knob override that cannot make valid rules; the message names the knob."""


def settings(overrides: Mapping[str, str]) -> dict[str, str]:
    """The knobs with `overrides` applied, each checked; raises KnobError naming the knob."""
    kinds = {knob.name: knob.kind for knob in KNOBS}
    for name, value in overrides.items():
        kind = kinds.get(name)
        if kind is None:
            raise KnobError(f"unknown knob {name!r}: see --knobs")
        if kind == "number":
            try:
                number = float(value)
            except ValueError:
                raise KnobError(f"knob {name}: {value!r} is not a number") from None
            if not math.isfinite(number) or number < 0:
                raise KnobError(f"knob {name}: {value!r} must be a finite number >= 0")
        elif kind == "duration" and (not value or not _DURATION.match(value) or not
                                     re.search(r"[1-9]", value)):  # fmt: skip
            raise KnobError(
                f"knob {name}: {value!r} is not a Prometheus duration such as 30s, 5m or 1h"
            )
    if "slo" in overrides and not 0 < float(overrides["slo"]) < 1:
        raise KnobError(f"knob slo: {overrides['slo']!r} must lie strictly between 0 and 1")
    return DEFAULTS | dict(overrides)


# --- names ---------------------------------------------------------------------------------------

JOB = "job"
STREAM = names.STREAM_NAME.replace(".", "_")
OUTCOME = names.STREAM_OUTCOME.replace(".", "_")
CACHE = names.CACHE_NAME.replace(".", "_")
BY_STREAM = f"{JOB}, {STREAM}"
BY_CACHE = f"{JOB}, {CACHE}"
LEVEL = f"{JOB}_{STREAM}"
FAILED = f'{OUTCOME}=~"{names.OUTCOME_ERROR}|{names.OUTCOME_TIMEOUT}"'


def failure_ratio(window: str) -> str:
    """The recording rule name of the failed share of ended streams over `window`."""
    return f"{LEVEL}:thunkscope_stream_failures:ratio_rate{window}"


def series(metric: names.Metric, suffix: str = "") -> str:
    """A metric's Prometheus series (histograms add _bucket, _sum or _count)."""
    return metric.prometheus_name + suffix


def p(q: float, metric: names.Metric, window: str) -> str:
    """The q-quantile of a classic histogram per job and stream over `window`."""
    buckets = series(metric, "_bucket")
    return f"histogram_quantile({q}, sum by ({BY_STREAM}, le) (rate({buckets}[{window}])))"


# --- rules ---------------------------------------------------------------------------------------


PRESENT = f"{JOB}:thunkscope_metrics:present"


def recording_rules(k: Mapping[str, str]) -> list[dict[str, Any]]:
    """Failed share of ended streams per job and stream name over every burn-rate window:
    rate of failed over rate of all, summed first, so busy processes weigh more. And one
    series per job that reports thunkscope metrics now (one metric name, so the absence
    alert can look back over it: a range over many metric names cannot)."""
    count = series(names.STREAM_DURATION, "_count")
    windows = [
        k[f"burn_{pair}_{span}"]
        for pair in ("page_fast", "page_slow", "ticket")
        for span in ("short", "long")
    ]
    present = {"record": PRESENT, "expr": f'group by ({JOB}) ({{__name__=~"thunkscope_.+"}})\n'}
    return [present] + [
        {
            "record": failure_ratio(window),
            "expr": (
                f"sum by ({BY_STREAM}) (rate({count}{{{FAILED}}}[{window}]))\n"
                f"/\nsum by ({BY_STREAM}) (rate({count}[{window}]))\n"
            ),
        }
        for window in dict.fromkeys(windows)  # each window once, in order
    ]


def annotations(k: Mapping[str, str], alert: str, summary: str, description: str,
                dashboard: str) -> dict[str, str]:  # fmt: skip
    """The four annotations of one alert."""
    return {
        "summary": summary,
        "description": description,
        "runbook_url": f"{k['runbook_base']}#{alert.lower()}",
        "dashboard_url": f"{k['grafana_url']}/d/{dashboard}",
    }


STREAMS_BOARD = "thunkscope-streams"
CACHE_BOARD = "thunkscope-client-cache"
OF_STREAM = f"stream {{{{ $labels.{STREAM} }}}} of service {{{{ $labels.{JOB} }}}}"


def alert(
    name: str, expr: str, wait: str, severity: str, notes: dict[str, str], reason: str = ""
) -> dict[str, Any]:
    """One alerting rule; `reason` tells apart two rules of one alert and one severity."""
    labels = {"severity": severity} | ({"reason": reason} if reason else {})
    return {"alert": name, "expr": expr, "for": wait, "labels": labels, "annotations": notes}


def alerting_rules(k: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """Every alert of SPEC section 6, thresholds and windows from the knobs."""
    count = series(names.STREAM_DURATION, "_count")
    name = "ThunkscopeStreamsStuck"
    yield alert(
        name,
        f"max by ({BY_STREAM}) ({series(names.STREAM_OLDEST_IDLE)}) > {k['stuck_idle_s']}\n",
        k["stuck_idle_for"],
        "critical",
        annotations(
            k, name, "A thunkscope stream has gone without an item for too long.",
            f"A running {OF_STREAM} has gone {{{{ $value | printf \"%.0f\" }}}} s without an "
            f"item (threshold {k['stuck_idle_s']} s).",
            STREAMS_BOARD,
        ),
        reason="idle",
    )  # fmt: skip
    yield alert(
        name,
        f"sum by ({BY_STREAM}) ({series(names.STREAM_ACTIVE)}) > 0\n"
        f"unless on ({BY_STREAM})\n"
        f"sum by ({BY_STREAM}) (increase({count}[{k['stuck_no_finish_window']}])) > 0\n",
        k["stuck_no_finish_for"],
        "critical",
        annotations(
            k, name, "thunkscope streams are running but none has finished.",
            f"{{{{ $value | printf \"%.0f\" }}}} {OF_STREAM} running, and none finished in "
            f"the last {k['stuck_no_finish_window']}.",
            STREAMS_BOARD,
        ),
        reason="none_finished",
    )  # fmt: skip
    stalls = series(names.STREAM_STALLS)
    name = "ThunkscopeStreamsStalling"
    window = k["stalling_window"]
    yield alert(
        name,
        f"sum by ({BY_STREAM}) (increase({stalls}[{window}]))\n"
        f"/\nsum by ({BY_STREAM}) (increase({count}[{window}]))\n"
        f"> {k['stalling_ratio']}\n",
        k["stalling_for"],
        "warning",
        annotations(
            k, name, "Many thunkscope streams stall: the backend pauses mid-answer.",
            f"{OF_STREAM} stalled {{{{ $value | humanizePercentage }}}} of its streams over "
            f"{window} (threshold {k['stalling_ratio']}).",
            STREAMS_BOARD,
        ),
    )  # fmt: skip
    name = "ThunkscopeStreamErrorBudgetBurn"
    budget = f"(1 - {k['slo']})"
    pairs = {
        "critical": [("page_fast", k["burn_page_fast"]), ("page_slow", k["burn_page_slow"])],
        "warning": [("ticket", k["burn_ticket"])],
    }
    for severity, burns in pairs.items():
        exprs = [
            f"(\n  {failure_ratio(k[f'burn_{pair}_long'])} > {factor} * {budget}\n"
            f"and\n  {failure_ratio(k[f'burn_{pair}_short'])} > {factor} * {budget}\n)"
            for pair, factor in burns
        ]
        wait = k["burn_page_for" if severity == "critical" else "burn_ticket_for"]
        yield alert(
            name,
            "\nor\n".join(exprs) + "\n",
            wait,
            severity,
            annotations(
                k, name, "thunkscope streams fail fast enough to exhaust the error budget.",
                f"{OF_STREAM} ends in error or timeout for {{{{ $value | humanizePercentage }}}}"
                f" of its streams, burning the {k['slo']} success objective too fast.",
                STREAMS_BOARD,
            ),
        )  # fmt: skip
    name = "ThunkscopeTimeToFirstItemSlow"
    for severity, q, threshold, wait in (
        ("warning", 0.95, k["ttfi_p95_s"], k["ttfi_p95_for"]),
        ("critical", 0.99, k["ttfi_p99_s"], k["ttfi_p99_for"]),
    ):
        yield alert(
            name,
            f"{p(q, names.STREAM_TTFI, k['latency_window'])} > {threshold}\n",
            wait,
            severity,
            annotations(
                k, name, "thunkscope streams wait long for their first item.",
                f"p{round(q * 100)} time to first item of {OF_STREAM} is "
                f"{{{{ $value | printf \"%.1f\" }}}} s (threshold {threshold} s).",
                STREAMS_BOARD,
            ),
        )  # fmt: skip
    name = "ThunkscopeQueueBackpressure"
    yield alert(
        name,
        f"{p(0.99, names.QUEUE_PUT_WAIT, k['latency_window'])} > {k['put_wait_p99_s']}\n",
        k["put_wait_for"],
        "warning",
        annotations(
            k, name, "Consumers are not keeping up with thunkscope streams.",
            f"p99 put-wait of {OF_STREAM} is {{{{ $value | printf \"%.1f\" }}}} s "
            f"(threshold {k['put_wait_p99_s']} s): its queue stays full.",
            STREAMS_BOARD,
        ),
    )  # fmt: skip
    name = "ThunkscopeCacheThrashing"
    window = k["eviction_window"]
    evictions = series(names.CACHE_EVICTIONS)
    lookups = series(names.CACHE_LOOKUPS)
    yield alert(
        name,
        f"sum by ({BY_CACHE}) (rate({evictions}[{window}]))\n"
        f"/\nsum by ({BY_CACHE}) (rate({lookups}[{window}]))\n"
        f"> {k['eviction_ratio']}\n"
        f"and on ({BY_CACHE})\n"
        f"sum by ({BY_CACHE}) ({series(names.CACHE_ENTRY_COUNT)})\n"
        f">= on ({BY_CACHE})\n"
        f"sum by ({BY_CACHE}) ({series(names.CACHE_ENTRY_LIMIT)})\n",
        k["eviction_for"],
        "warning",
        annotations(
            k, name, "A thunkscope ClientCache evicts much of what it holds: it is too small.",
            f"cache {{{{ $labels.{CACHE} }}}} of service {{{{ $labels.{JOB} }}}} evicts "
            f"{{{{ $value | humanizePercentage }}}} of its lookups while full "
            f"(threshold {k['eviction_ratio']}).",
            CACHE_BOARD,
        ),
    )  # fmt: skip
    name = "ThunkscopeTelemetryAbsent"
    yield alert(
        name,
        f"max_over_time({PRESENT}[{k['absent_lookback']}])\n"
        f"unless on ({JOB})\n"
        f"{PRESENT}\n",
        k["absent_for"],
        "warning",
        annotations(
            k, name, "A service that reported thunkscope metrics has stopped reporting them.",
            f"service {{{{ $labels.{JOB} }}}} reported thunkscope metrics in the last "
            f"{k['absent_lookback']} but none for {k['absent_for']}.",
            STREAMS_BOARD,
        ),
    )  # fmt: skip


def rules(overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The rule file's content for these knob overrides (checked first)."""
    k = settings(overrides or {})
    # One group: its rules run in order at each evaluation, so every alert reads the ratios
    # recorded at the same instant (groups run independently, and a reading one evaluation
    # old would move every for: by one step).
    return {
        "groups": [{"name": "thunkscope", "rules": recording_rules(k) + list(alerting_rules(k))}]
    }


class _Literal(str):
    """A string dumped in YAML's block style (the multi-line expressions)."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


yaml.SafeDumper.add_representer(_Literal, _literal)


def render(overrides: Mapping[str, str] | None = None) -> str:
    """The rule file's text: a header, then the groups in YAML."""
    content = rules(overrides)
    for group in content["groups"]:
        for rule in group["rules"]:
            rule["expr"] = _Literal(rule["expr"])
    header = "# Generated by deploy/alerts/generate.py"
    if overrides:
        header += " with " + " ".join(f"{key}={value}" for key, value in overrides.items())
    else:
        header += " with every knob at its default: regenerate, do not edit"
    return header + "\n" + yaml.safe_dump(content, sort_keys=False, width=100)


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """`knob=value` arguments as a dict; a pair without '=' is an error naming it."""
    found: dict[str, str] = {}
    for pair in pairs:
        knob, sep, value = pair.partition("=")
        if not sep:
            raise KnobError(f"--set {pair!r}: expected knob=value")
        found[knob.strip()] = value.strip()
    return found


def main(argv: list[str] | None = None) -> int:
    """Command line: --set knob=value ..., --output FILE (default: the shipped file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    parser.add_argument("--output", type=Path, default=RULES_FILE)
    parser.add_argument("--knobs", action="store_true", help="list the knobs and exit")
    args = parser.parse_args(argv)
    if args.knobs:
        for knob in KNOBS:
            print(f"{knob.name:24} {knob.default:10} {knob.doc}")
        return 0
    try:
        text = render(parse_sets(args.set))  # every check runs before anything is written
    except KnobError as error:
        print(f"generate.py: {error}", file=sys.stderr)
        return 2
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
