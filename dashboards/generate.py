"""The Grafana dashboards of this folder, as code.

Each dashboard is built with Grafana's own typed builders (grafana-foundation-sdk) from
the telemetry names of the contract (`thunkscope._names`), and written next to this file
as JSON, which is what Grafana's file provider loads. After editing, regenerate:

    python dashboards/generate.py

tests/test_stack.py fails while a committed JSON file differs from what this script
generates, and runs every PromQL expression below against a real Prometheus scraping the
demo workload.

Conventions shared by all three dashboards:
- `$service` selects Prometheus' `job` label. Through the stack's collector that is the
  application's service.name (the collector's prometheus exporter sets it); when
  Prometheus scrapes an application's own /metrics it is the scrape job's name.
- `$stream` and `$cache` select the stream and cache names the application gave.
- Rates use `$__rate_interval`, which Grafana derives from the datasource's scrape interval.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, logs, loki, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

try:
    from thunkscope import _names as names
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from thunkscope import _names as names

HERE = Path(__file__).resolve().parent

# Datasource uids, as provisioned in deploy/grafana/provisioning/datasources/.
PROMETHEUS = dashboard_models.DataSourceRef(type_val="prometheus", uid="prometheus")
LOKI = dashboard_models.DataSourceRef(type_val="loki", uid="loki")

SERVICE_LABEL = "job"
RATE = "$__rate_interval"
TAG = "thunkscope"


def label(attribute: str) -> str:
    """The Prometheus label an OTel metric attribute becomes."""
    return attribute.replace(".", "_")


STREAM = label(names.STREAM_NAME)
OUTCOME = label(names.STREAM_OUTCOME)
ERROR_TYPE = label(names.ERROR_TYPE)
CACHE = label(names.CACHE_NAME)
RESULT = label(names.CACHE_RESULT)
GATHER_OUTCOME = label(names.GATHER_OUTCOME)
LOOP_FOUND = label(names.EVENT_LOOP_FOUND)


def series(metric: names.Metric, suffix: str = "") -> str:
    """The Prometheus series name of a metric (histograms add _bucket, _sum or _count)."""
    return metric.prometheus_name + suffix


def selector(*matchers: str) -> str:
    """A label selector body: the service matcher first, then the given ones."""
    return ", ".join((f'{SERVICE_LABEL}=~"$service"', *matchers))


def shown(label_name: str) -> str:
    """A legend placeholder for a label's value: `{{label}}`."""
    return "{{" + label_name + "}}"


def total(metric: names.Metric, matchers: str, by: str = "") -> str:
    """`sum [by (...)] (<series>{<matchers>})`: a gauge or up-down counter, summed."""
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}({series(metric)}{{{matchers}}})"


def rate(metric: names.Metric, suffix: str, matchers: str, by: str = "") -> str:
    """`sum [by (...)] (rate(<series>{<matchers>}[$__rate_interval]))`."""
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({series(metric, suffix)}{{{matchers}}}[{RATE}]))"


def quantile(q: float, metric: names.Metric, matchers: str, by: str = "") -> str:
    """`histogram_quantile(q, ...)` over a classic histogram's buckets."""
    grouping = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, {rate(metric, '_bucket', matchers, grouping)})"


def mean(metric: names.Metric, matchers: str, by: str = "") -> str:
    """A histogram's mean over the rate window: rate of the sum over rate of the count."""
    return f"{rate(metric, '_sum', matchers, by)} / {rate(metric, '_count', matchers, by)}"


def share(part: str, whole: str) -> str:
    """`part / whole` of two unlabelled sums; zero, not empty, while `part` has no series."""
    return f"({part} or vector(0)) / {whole}"


def prom(expr: str, legend: str, ref: str = "A", *, exemplars: bool = False) -> Any:
    """A Prometheus target."""
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .range()
        .exemplar(exemplars)
        .datasource(PROMETHEUS)
    )


def percentiles(metric: names.Metric, matchers: str, by: str = "") -> list[Any]:
    """p50, p95 and p99 targets of one histogram, with exemplars."""
    prefix = f"{shown(by)} " if by else ""
    return [
        prom(quantile(q, metric, matchers, by), f"{prefix}p{round(q * 100)}", ref, exemplars=True)
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


class Ids:
    """Hands out panel ids, unique within a dashboard."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next += 1
        return self._next


def graph(
    ids: Ids,
    title: str,
    description: str,
    targets: list[Any],
    *,
    unit: str,
    width: int = 12,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> Any:
    """A time series panel."""
    panel = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(8)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def single(ids: Ids, title: str, description: str, expr: str, *, unit: str) -> Any:
    """A stat panel showing the last value of one expression, with a sparkline."""
    return (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(6)
        .height(4)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(prom(expr, title))
    )


def log_panel(ids: Ids, title: str, description: str, line_filter: str) -> Any:
    """Recent log lines of the selected services from Loki; each line links to its trace."""
    expr = f'{{service_name=~"$service"}} |= "{line_filter}"'
    return (
        logs.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(LOKI)
        .span(24)
        .height(10)
        .show_time(True)
        .wrap_log_message(True)
        .enable_log_details(True)
        .sort_order(common.LogsSortOrder.DESCENDING)
        .with_target(loki.Dataquery().expr(expr).ref_id("A").datasource(LOKI))
    )


def variable(name: str, title: str, query: str, description: str) -> Any:
    """A multi-value Prometheus label variable with an All option matching everything."""
    return (
        dashboard.QueryVariable(name)
        .label(title)
        .description(description)
        .datasource(PROMETHEUS)
        .query(query)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


SERVICE_VARIABLE_QUERY = f'label_values({{__name__=~"thunkscope_.+"}}, {SERVICE_LABEL})'


def base(uid: str, title: str, description: str) -> Any:
    """A dashboard with the shared settings, the $service variable and links to the others."""
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .refresh("10s")
        .time("now-15m", "now")
        .timezone("browser")
        .link(
            dashboard.DashboardLink("thunkscope")
            .type(dashboard_models.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(
            variable(
                "service",
                "Service",
                SERVICE_VARIABLE_QUERY,
                "Prometheus job: the application's service.name via the collector.",
            )
        )
    )


def streams() -> Any:
    """Streams: is the backend answering, how fast, and is the consumer keeping up?"""
    ids = Ids()
    sel = selector(f'{STREAM}=~"$stream"')
    not_completed = selector(f'{STREAM}=~"$stream"', f'{OUTCOME}!="completed"')
    errors = selector(f'{STREAM}=~"$stream"', f'{ERROR_TYPE}!=""')
    timeouts = selector(f'{STREAM}=~"$stream"', f'{OUTCOME}="timeout"')
    duration = names.STREAM_DURATION
    return (
        base(
            "thunkscope-streams",
            "thunkscope / Streams",
            "send_to_queue: streams running, their outcomes and errors, time to first item, "
            "gaps between items, stalls and timeouts, and consumer backpressure.",
        )
        .with_variable(
            variable(
                "stream",
                "Stream",
                f'label_values({{__name__=~"thunkscope_stream_.+", {selector()}}}, {STREAM})',
                "The name given to send_to_queue (thunkscope.stream.name).",
            )
        )
        .with_row(dashboard.Row("Now").id(ids()))
        .with_panel(
            single(
                ids,
                "Active streams",
                "Streams running now.",
                total(names.STREAM_ACTIVE, sel),
                unit="short",
            )
        )
        .with_panel(
            single(
                ids,
                "Streams per second",
                "Streams that ended, whatever their outcome.",
                rate(duration, "_count", sel),
                unit="reqps",
            )
        )
        .with_panel(
            single(
                ids,
                "Streams not completed",
                "Share of ended streams whose outcome was not `completed`: "
                "errors, timeouts and cancellations.",
                share(rate(duration, "_count", not_completed), rate(duration, "_count", sel)),
                unit="percentunit",
            )
        )
        .with_panel(
            single(
                ids,
                "Time to first item p95",
                "95th percentile of the wait for the first item.",
                quantile(0.95, names.STREAM_TTFI, sel),
                unit="s",
            )
        )
        .with_row(dashboard.Row("Throughput and outcomes").id(ids()))
        .with_panel(
            graph(
                ids,
                "Active streams",
                "Streams running now, by stream name.",
                [prom(total(names.STREAM_ACTIVE, sel, STREAM), shown(STREAM))],
                unit="short",
            )
        )
        .with_panel(
            graph(
                ids,
                "Stream rate by outcome",
                "Streams ending per second: completed, error, timeout, cancelled.",
                [prom(rate(duration, "_count", sel, OUTCOME), shown(OUTCOME))],
                unit="reqps",
            )
        )
        .with_panel(
            graph(
                ids,
                "Error rate by error.type",
                "Streams ending in an error per second, by the exception type forwarded "
                "to the queue (TimeoutError for chunk timeouts).",
                [
                    prom(
                        rate(duration, "_count", errors, ERROR_TYPE),
                        shown(ERROR_TYPE),
                    )
                ],
                unit="reqps",
            )
        )
        .with_panel(
            graph(
                ids,
                "Stalls and timeouts",
                "Stalls: gaps in which the backend gave nothing for stall_after seconds. "
                "Timeouts: streams ended by chunk_timeout.",
                [
                    prom(rate(names.STREAM_STALLS, "", sel, STREAM), f"stalls {shown(STREAM)}"),
                    prom(
                        rate(duration, "_count", timeouts, STREAM),
                        f"timeouts {shown(STREAM)}",
                        "B",
                    ),
                ],
                unit="ops",
            )
        )
        .with_row(dashboard.Row("Latency").id(ids()))
        .with_panel(
            graph(
                ids,
                "Time to first item",
                "Wait from the start of a stream to its first item: the backend's latency "
                "before it answers. Exemplars link to traces.",
                percentiles(names.STREAM_TTFI, sel),
                unit="s",
                width=8,
            )
        )
        .with_panel(
            graph(
                ids,
                "Stream duration",
                "Wall time of one send_to_queue call. Exemplars link to traces.",
                percentiles(duration, sel),
                unit="s",
                width=8,
            )
        )
        .with_panel(
            graph(
                ids,
                "Max item gap p95",
                "95th percentile of the longest wait between two items of a stream, by stream "
                "name: how close streams come to chunk_timeout.",
                [
                    prom(
                        quantile(0.95, names.STREAM_MAX_GAP, sel, STREAM),
                        shown(STREAM),
                        exemplars=True,
                    )
                ],
                unit="s",
                width=8,
            )
        )
        .with_row(dashboard.Row("Backpressure and size").id(ids()))
        .with_panel(
            graph(
                ids,
                "Put-wait of streams that blocked",
                "Time a stream spent blocked on a full queue (the consumer is slower than "
                "the backend), over the streams that blocked at all.",
                [
                    prom(
                        quantile(0.95, names.QUEUE_PUT_WAIT, sel, STREAM),
                        f"p95 {shown(STREAM)}",
                        exemplars=True,
                    ),
                    prom(mean(names.QUEUE_PUT_WAIT, sel, STREAM), f"mean {shown(STREAM)}", "B"),
                ],
                unit="s",
                width=6,
            )
        )
        .with_panel(
            graph(
                ids,
                "Streams that blocked",
                "Share of ending streams that blocked on a full queue at least once: "
                "put_wait is recorded only for those.",
                [
                    prom(
                        f"{rate(names.QUEUE_PUT_WAIT, '_count', sel, STREAM)}"
                        f" / {rate(names.STREAM_DURATION, '_count', sel, STREAM)}",
                        shown(STREAM),
                    )
                ],
                unit="percentunit",
                width=6,
                maximum=1,
            )
        )
        .with_panel(
            graph(
                ids,
                "Time blocked on put",
                "Seconds spent blocked on full queues per second, summed over streams.",
                [prom(rate(names.QUEUE_PUT_WAIT, "_sum", sel, STREAM), shown(STREAM))],
                unit="s",
                width=6,
            )
        )
        .with_panel(
            graph(
                ids,
                "Items per stream",
                "Items one stream put on the queue.",
                [
                    prom(quantile(0.5, names.STREAM_ITEM_COUNT, sel), "p50"),
                    prom(quantile(0.95, names.STREAM_ITEM_COUNT, sel), "p95", "B"),
                    prom(mean(names.STREAM_ITEM_COUNT, sel), "mean", "C"),
                ],
                unit="short",
                width=6,
            )
        )
        .with_row(dashboard.Row("Logs").id(ids()))
        .with_panel(
            log_panel(
                ids,
                "Stream events",
                "thunkscope's stream.* log events of the selected services; a line's "
                "trace_id links to its trace.",
                "stream.",
            )
        )
    )


def client_cache() -> Any:
    """Client cache: does the per-loop client cache hit, and is its capacity right?"""
    ids = Ids()
    sel = selector(f'{CACHE}=~"$cache"')
    lookups = names.CACHE_LOOKUPS
    hits = selector(f'{CACHE}=~"$cache"', f'{RESULT}="hit"')
    hit_ratio_by_cache = f"{rate(lookups, '', hits, CACHE)} / {rate(lookups, '', sel, CACHE)}"
    return (
        base(
            "thunkscope-client-cache",
            "thunkscope / Client cache",
            "ClientCache: lookups and hit ratio, evictions, and entries against capacity.",
        )
        .with_variable(
            variable(
                "cache",
                "Cache",
                f'label_values({{__name__=~"thunkscope_cache_.+", {selector()}}}, {CACHE})',
                "The name given to ClientCache (thunkscope.cache.name).",
            )
        )
        .with_row(dashboard.Row("Now").id(ids()))
        .with_panel(
            single(
                ids,
                "Hit ratio",
                "Hits over all lookups, all selected caches.",
                f"{rate(lookups, '', hits)} / {rate(lookups, '', sel)}",
                unit="percentunit",
            )
        )
        .with_panel(
            single(ids, "Lookups per second", "All results.", rate(lookups, "", sel), unit="ops")
        )
        .with_panel(
            single(
                ids,
                "Evictions per second",
                "Entries pushed out by a new key at capacity.",
                rate(names.CACHE_EVICTIONS, "", sel),
                unit="ops",
            )
        )
        .with_panel(
            single(
                ids,
                "Fill",
                "Entries held over capacity, all selected caches.",
                f"{total(names.CACHE_ENTRY_COUNT, sel)} / {total(names.CACHE_ENTRY_LIMIT, sel)}",
                unit="percentunit",
            )
        )
        .with_row(dashboard.Row("Lookups").id(ids()))
        .with_panel(
            graph(
                ids,
                "Lookups per second by result",
                "ClientCache.get calls per second, by cache and result.",
                [
                    prom(
                        rate(lookups, "", sel, f"{CACHE}, {RESULT}"),
                        f"{shown(CACHE)} {shown(RESULT)}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            graph(
                ids,
                "Hit ratio",
                "Hits over all lookups, by cache. A falling ratio with evictions rising means "
                "the capacity is below the number of event loops in use.",
                [prom(hit_ratio_by_cache, shown(CACHE))],
                unit="percentunit",
                maximum=1,
            )
        )
        .with_row(dashboard.Row("Capacity").id(ids()))
        .with_panel(
            graph(
                ids,
                "Evictions per second",
                "Least recently used entries evicted, by cache.",
                [prom(rate(names.CACHE_EVICTIONS, "", sel, CACHE), shown(CACHE))],
                unit="ops",
                width=8,
            )
        )
        .with_panel(
            graph(
                ids,
                "Entries against the limit",
                "Entries held and capacity, by cache.",
                [
                    prom(total(names.CACHE_ENTRY_COUNT, sel, CACHE), f"{shown(CACHE)} entries"),
                    prom(total(names.CACHE_ENTRY_LIMIT, sel, CACHE), f"{shown(CACHE)} limit", "B"),
                ],
                unit="short",
                width=8,
            )
        )
        .with_panel(
            graph(
                ids,
                "Event loop lookups per second",
                "get_current_event_loop calls, by whether a loop was running.",
                [
                    prom(
                        rate(names.EVENT_LOOP_LOOKUPS, "", selector(), LOOP_FOUND),
                        f"found={shown(LOOP_FOUND)}",
                    )
                ],
                unit="ops",
                width=8,
            )
        )
        .with_row(dashboard.Row("Logs").id(ids()))
        .with_panel(
            log_panel(
                ids,
                "Cache events",
                "thunkscope's cache.* log events (misses and evictions at info).",
                "cache.",
            )
        )
    )


def gather() -> Any:
    """Gather: how many thunks are awaited together, how long, and how often it fails."""
    ids = Ids()
    sel = selector()
    duration = names.GATHER_DURATION
    failed = selector(f'{ERROR_TYPE}!=""')
    return (
        base(
            "thunkscope-gather",
            "thunkscope / Gather",
            "wait_for_all_mots: calls per second, duration percentiles, size and failures.",
        )
        .with_row(dashboard.Row("Now").id(ids()))
        .with_panel(
            single(
                ids,
                "Gathers per second",
                "wait_for_all_mots calls.",
                rate(duration, "_count", sel),
                unit="ops",
            )
        )
        .with_panel(
            single(
                ids,
                "Failed",
                "Share of calls that raised.",
                share(rate(duration, "_count", failed), rate(duration, "_count", sel)),
                unit="percentunit",
            )
        )
        .with_panel(
            single(
                ids,
                "Duration p95",
                "95th percentile of one call.",
                quantile(0.95, duration, sel),
                unit="s",
            )
        )
        .with_panel(
            single(
                ids,
                "Mean size",
                "Thunks awaited by one call.",
                mean(names.GATHER_SIZE_METRIC, sel),
                unit="short",
            )
        )
        .with_row(dashboard.Row("Calls").id(ids()))
        .with_panel(
            graph(
                ids,
                "Gathers per second by outcome",
                "wait_for_all_mots calls per second.",
                [prom(rate(duration, "_count", sel, GATHER_OUTCOME), shown(GATHER_OUTCOME))],
                unit="ops",
            )
        )
        .with_panel(
            graph(
                ids,
                "Failures by error.type",
                "Calls per second that raised, by the type of the first exception.",
                [prom(rate(duration, "_count", failed, ERROR_TYPE), shown(ERROR_TYPE))],
                unit="ops",
            )
        )
        .with_panel(
            graph(
                ids,
                "Duration",
                "Wall time of one call: the slowest thunk of the batch. Exemplars link to traces.",
                percentiles(duration, sel),
                unit="s",
            )
        )
        .with_panel(
            graph(
                ids,
                "Size",
                "Thunks awaited by one call.",
                [
                    prom(quantile(0.5, names.GATHER_SIZE_METRIC, sel), "p50"),
                    prom(quantile(0.95, names.GATHER_SIZE_METRIC, sel), "p95", "B"),
                    prom(mean(names.GATHER_SIZE_METRIC, sel), "mean", "C"),
                ],
                unit="short",
            )
        )
        .with_row(dashboard.Row("Logs").id(ids()))
        .with_panel(log_panel(ids, "Gather events", "thunkscope's gather.* log events.", "gather."))
    )


DASHBOARDS: dict[str, Callable[[], Any]] = {
    "streams.json": streams,
    "client-cache.json": client_cache,
    "gather.json": gather,
}


def render(build: Callable[[], Any]) -> str:
    """One dashboard as the JSON text committed in this folder."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def rendered() -> Iterator[tuple[Path, str]]:
    """Every dashboard file of this folder with the text it should hold."""
    for filename, build in DASHBOARDS.items():
        yield HERE / filename, render(build)


def main() -> None:
    """Writes every dashboard JSON file next to this script."""
    for path, text in rendered():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
