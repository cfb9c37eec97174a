"""The Grafana dashboards of this folder, as code.

Each dashboard is built with Grafana's own typed builders (grafana-foundation-sdk) from
the telemetry names of the contract (`thunkscope.names`), and written next to this file
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
from itertools import count
from pathlib import Path
from string import ascii_uppercase
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, logs, loki, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

try:
    from thunkscope import names
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from thunkscope import names

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


def prom(expr: str, legend: str, *, exemplars: bool = False) -> Any:
    """A Prometheus target; its panel gives it a refId by position (`panel_targets`)."""
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .range()
        .exemplar(exemplars)
        .datasource(PROMETHEUS)
    )


def percentiles(metric: names.Metric, matchers: str, by: str = "") -> list[Any]:
    """p50, p95 and p99 targets of one histogram, with exemplars."""
    prefix = f"{shown(by)} " if by else ""
    return [
        prom(quantile(q, metric, matchers, by), f"{prefix}p{round(q * 100)}", exemplars=True)
        for q in (0.5, 0.95, 0.99)
    ]


def spread(metric: names.Metric, matchers: str) -> list[Any]:
    """p50, p95 and mean targets of a histogram of counts (items, thunks), without exemplars."""
    return [
        prom(quantile(0.5, metric, matchers), "p50"),
        prom(quantile(0.95, metric, matchers), "p95"),
        prom(mean(metric, matchers), "mean"),
    ]


def panel_targets(panel: Any, targets: tuple[Any, ...]) -> Any:
    """Adds the targets in order with refIds A, B, C...: a panel's refIds must be unique."""
    for ref, target in zip(ascii_uppercase, targets, strict=False):
        panel = panel.with_target(target.ref_id(ref))
    return panel


def graph(
    title: str,
    description: str,
    *targets: Any,
    unit: str,
    width: int = 12,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> Any:
    """A time series panel; `laid_out` gives it its id."""
    panel = (
        timeseries.Panel()
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
    return panel_targets(panel, targets)


def single(title: str, description: str, expr: str, *, unit: str) -> Any:
    """A stat panel showing the last value of one expression, with a sparkline."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(6)
        .height(4)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return panel_targets(panel, (prom(expr, title),))


def log_panel(title: str, description: str, line_filter: str) -> Any:
    """Recent log lines of the selected services from Loki; each line links to its trace."""
    expr = f'{{service_name=~"$service"}} |= "{line_filter}"'
    return (
        logs.Panel()
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


def laid_out(board: Any, rows: dict[str, list[Any]]) -> Any:
    """Adds each row, then its panels, numbering rows and panels 1, 2, 3... in that order.

    Grafana wants panel ids unique within a dashboard, rows included; the builders place
    each panel on the grid after the one added before it, so the order is the layout.
    """
    ids = count(1)
    for title, panels in rows.items():
        board = board.with_row(dashboard.Row(title).id(next(ids)))
        for panel in panels:
            board = board.with_panel(panel.id(next(ids)))
    return board


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
    sel = selector(f'{STREAM}=~"$stream"')
    not_completed = selector(f'{STREAM}=~"$stream"', f'{OUTCOME}!="completed"')
    errors = selector(f'{STREAM}=~"$stream"', f'{ERROR_TYPE}!=""')
    timeouts = selector(f'{STREAM}=~"$stream"', f'{OUTCOME}="timeout"')
    duration = names.STREAM_DURATION
    put_wait = names.QUEUE_PUT_WAIT
    board = base(
        "thunkscope-streams",
        "thunkscope / Streams",
        "send_to_queue: streams running, their outcomes and errors, time to first item, "
        "gaps between items, stalls and timeouts, and consumer backpressure.",
    ).with_variable(
        variable(
            "stream",
            "Stream",
            f'label_values({{__name__=~"thunkscope_stream_.+", {selector()}}}, {STREAM})',
            "The name given to send_to_queue (thunkscope.stream.name).",
        )
    )
    return laid_out(
        board,
        {
            "Now": [
                single(
                    "Active streams",
                    "Streams running now.",
                    total(names.STREAM_ACTIVE, sel),
                    unit="short",
                ),
                single(
                    "Streams per second",
                    "Streams that ended, whatever their outcome.",
                    rate(duration, "_count", sel),
                    unit="reqps",
                ),
                single(
                    "Streams not completed",
                    "Share of ended streams whose outcome was not `completed`: "
                    "errors, timeouts and cancellations.",
                    share(rate(duration, "_count", not_completed), rate(duration, "_count", sel)),
                    unit="percentunit",
                ),
                single(
                    "Time to first item p95",
                    "95th percentile of the wait for the first item.",
                    quantile(0.95, names.STREAM_TTFI, sel),
                    unit="s",
                ),
            ],
            "Throughput and outcomes": [
                graph(
                    "Active streams",
                    "Streams running now, by stream name.",
                    prom(total(names.STREAM_ACTIVE, sel, STREAM), shown(STREAM)),
                    unit="short",
                ),
                graph(
                    "Stream rate by outcome",
                    "Streams ending per second: completed, error, timeout, cancelled.",
                    prom(rate(duration, "_count", sel, OUTCOME), shown(OUTCOME)),
                    unit="reqps",
                ),
                graph(
                    "Error rate by error.type",
                    "Streams ending in an error per second, by the exception type forwarded "
                    "to the queue (TimeoutError for chunk timeouts).",
                    prom(rate(duration, "_count", errors, ERROR_TYPE), shown(ERROR_TYPE)),
                    unit="reqps",
                ),
                graph(
                    "Stalls and timeouts",
                    "Stalls: gaps in which the backend gave nothing for stall_after seconds. "
                    "Timeouts: streams ended by chunk_timeout.",
                    prom(rate(names.STREAM_STALLS, "", sel, STREAM), f"stalls {shown(STREAM)}"),
                    prom(rate(duration, "_count", timeouts, STREAM), f"timeouts {shown(STREAM)}"),
                    unit="ops",
                ),
            ],
            "Stuck streams": [
                graph(
                    "Oldest idle stream",
                    "Longest time any running stream of the name has gone without an item, "
                    "the worst process shown (0: none running). Read at scrape time, so it "
                    "grows while a blocked event loop stops the stream; it drives the "
                    "ThunkscopeStreamsStuck alert.",
                    prom(
                        f"max by ({STREAM}) ({series(names.STREAM_OLDEST_IDLE)}{{{sel}}})",
                        shown(STREAM),
                    ),
                    unit="s",
                    width=24,
                ),
            ],
            "Latency": [
                graph(
                    "Time to first item",
                    "Wait from the start of a stream to its first item: the backend's latency "
                    "before it answers. Exemplars link to traces.",
                    *percentiles(names.STREAM_TTFI, sel),
                    unit="s",
                    width=8,
                ),
                graph(
                    "Stream duration",
                    "Wall time of one send_to_queue call. Exemplars link to traces.",
                    *percentiles(duration, sel),
                    unit="s",
                    width=8,
                ),
                graph(
                    "Max item gap p95",
                    "95th percentile of the longest wait between two items of a stream, by "
                    "stream name: how close streams come to chunk_timeout.",
                    prom(
                        quantile(0.95, names.STREAM_MAX_GAP, sel, STREAM),
                        shown(STREAM),
                        exemplars=True,
                    ),
                    unit="s",
                    width=8,
                ),
            ],
            "Backpressure and size": [
                graph(
                    "Put-wait of streams that blocked",
                    "Time a stream spent blocked on a full queue (the consumer is slower than "
                    "the backend), over the streams that blocked at all.",
                    prom(
                        quantile(0.95, put_wait, sel, STREAM),
                        f"p95 {shown(STREAM)}",
                        exemplars=True,
                    ),
                    prom(mean(put_wait, sel, STREAM), f"mean {shown(STREAM)}"),
                    unit="s",
                    width=6,
                ),
                graph(
                    "Streams that blocked",
                    "Share of ending streams that blocked on a full queue at least once: "
                    "put_wait is recorded only for those.",
                    prom(
                        f"{rate(put_wait, '_count', sel, STREAM)}"
                        f" / {rate(duration, '_count', sel, STREAM)}",
                        shown(STREAM),
                    ),
                    unit="percentunit",
                    width=6,
                    maximum=1,
                ),
                graph(
                    "Time blocked on put",
                    "Seconds spent blocked on full queues per second, summed over streams.",
                    prom(rate(put_wait, "_sum", sel, STREAM), shown(STREAM)),
                    unit="s",
                    width=6,
                ),
                graph(
                    "Items per stream",
                    "Items one stream put on the queue.",
                    *spread(names.STREAM_ITEM_COUNT, sel),
                    unit="short",
                    width=6,
                ),
            ],
            "Logs": [
                log_panel(
                    "Stream events",
                    "thunkscope's stream.* log events of the selected services; a line's "
                    "trace_id links to its trace.",
                    "stream.",
                ),
            ],
        },
    )


def client_cache() -> Any:
    """Client cache: does the per-loop client cache hit, and is its capacity right?"""
    sel = selector(f'{CACHE}=~"$cache"')
    lookups = names.CACHE_LOOKUPS
    hits = selector(f'{CACHE}=~"$cache"', f'{RESULT}="hit"')
    hit_ratio_by_cache = f"{rate(lookups, '', hits, CACHE)} / {rate(lookups, '', sel, CACHE)}"
    board = base(
        "thunkscope-client-cache",
        "thunkscope / Client cache",
        "ClientCache: lookups and hit ratio, evictions, and entries against capacity.",
    ).with_variable(
        variable(
            "cache",
            "Cache",
            f'label_values({{__name__=~"thunkscope_cache_.+", {selector()}}}, {CACHE})',
            "The name given to ClientCache (thunkscope.cache.name).",
        )
    )
    return laid_out(
        board,
        {
            "Now": [
                single(
                    "Hit ratio",
                    "Hits over all lookups, all selected caches.",
                    f"{rate(lookups, '', hits)} / {rate(lookups, '', sel)}",
                    unit="percentunit",
                ),
                single("Lookups per second", "All results.", rate(lookups, "", sel), unit="ops"),
                single(
                    "Evictions per second",
                    "Entries pushed out by a new key at capacity.",
                    rate(names.CACHE_EVICTIONS, "", sel),
                    unit="ops",
                ),
                single(
                    "Fill",
                    "Entries held over capacity, all selected caches.",
                    f"{total(names.CACHE_ENTRY_COUNT, sel)}"
                    f" / {total(names.CACHE_ENTRY_LIMIT, sel)}",
                    unit="percentunit",
                ),
            ],
            "Lookups": [
                graph(
                    "Lookups per second by result",
                    "ClientCache.get calls per second, by cache and result.",
                    prom(
                        rate(lookups, "", sel, f"{CACHE}, {RESULT}"),
                        f"{shown(CACHE)} {shown(RESULT)}",
                    ),
                    unit="ops",
                ),
                graph(
                    "Hit ratio",
                    "Hits over all lookups, by cache. A falling ratio with evictions rising "
                    "means the capacity is below the number of event loops in use.",
                    prom(hit_ratio_by_cache, shown(CACHE)),
                    unit="percentunit",
                    maximum=1,
                ),
            ],
            "Capacity": [
                graph(
                    "Evictions per second",
                    "Least recently used entries evicted, by cache.",
                    prom(rate(names.CACHE_EVICTIONS, "", sel, CACHE), shown(CACHE)),
                    unit="ops",
                    width=8,
                ),
                graph(
                    "Entries against the limit",
                    "Entries held and capacity, by cache.",
                    prom(total(names.CACHE_ENTRY_COUNT, sel, CACHE), f"{shown(CACHE)} entries"),
                    prom(total(names.CACHE_ENTRY_LIMIT, sel, CACHE), f"{shown(CACHE)} limit"),
                    unit="short",
                    width=8,
                ),
                graph(
                    "Event loop lookups per second",
                    "get_current_event_loop calls, by whether a loop was running.",
                    prom(
                        rate(names.EVENT_LOOP_LOOKUPS, "", selector(), LOOP_FOUND),
                        f"found={shown(LOOP_FOUND)}",
                    ),
                    unit="ops",
                    width=8,
                ),
            ],
            "Logs": [
                log_panel(
                    "Cache events",
                    "thunkscope's cache.* log events (misses and evictions at info).",
                    "cache.",
                ),
            ],
        },
    )


def gather() -> Any:
    """Gather: how many thunks are awaited together, how long, and how often it fails."""
    sel = selector()
    duration = names.GATHER_DURATION
    failed = selector(f'{ERROR_TYPE}!=""')
    board = base(
        "thunkscope-gather",
        "thunkscope / Gather",
        "wait_for_all_mots: calls per second, duration percentiles, size and failures.",
    )
    return laid_out(
        board,
        {
            "Now": [
                single(
                    "Gathers per second",
                    "wait_for_all_mots calls.",
                    rate(duration, "_count", sel),
                    unit="ops",
                ),
                single(
                    "Failed",
                    "Share of calls that raised.",
                    share(rate(duration, "_count", failed), rate(duration, "_count", sel)),
                    unit="percentunit",
                ),
                single(
                    "Duration p95",
                    "95th percentile of one call.",
                    quantile(0.95, duration, sel),
                    unit="s",
                ),
                single(
                    "Mean size",
                    "Thunks awaited by one call.",
                    mean(names.GATHER_SIZE_METRIC, sel),
                    unit="short",
                ),
            ],
            "Calls": [
                graph(
                    "Gathers per second by outcome",
                    "wait_for_all_mots calls per second.",
                    prom(rate(duration, "_count", sel, GATHER_OUTCOME), shown(GATHER_OUTCOME)),
                    unit="ops",
                ),
                graph(
                    "Failures by error.type",
                    "Calls per second that raised, by the type of the first exception.",
                    prom(rate(duration, "_count", failed, ERROR_TYPE), shown(ERROR_TYPE)),
                    unit="ops",
                ),
                graph(
                    "Duration",
                    "Wall time of one call: the slowest thunk of the batch. "
                    "Exemplars link to traces.",
                    *percentiles(duration, sel),
                    unit="s",
                ),
                graph(
                    "Size",
                    "Thunks awaited by one call.",
                    *spread(names.GATHER_SIZE_METRIC, sel),
                    unit="short",
                ),
            ],
            "Logs": [
                log_panel("Gather events", "thunkscope's gather.* log events.", "gather."),
            ],
        },
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
