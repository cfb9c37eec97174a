"""Bounded metric cardinality: thousands of stream or cache names yield a stated number of series.

Each of thunkscope's name caps (streams, caches) admits `name_limit` names (default 100)
as metric labels; every later name is reported as ``other``, and one warning says so.
So an instrument labelled by name alone has at most ``name_limit + 1`` series, and one
with further labels at most ``name_limit + 1`` times their combinations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from thunkscope import ClientCache, _telemetry, names, send_to_queue
from thunkscope._telemetry import DEFAULT_NAME_LIMIT, NameCap, telemetry

DISTINCT_NAMES = 10_000
MAX_SERIES = DEFAULT_NAME_LIMIT + 1  # the admitted names, and `other`


class Metrics:
    """A meter provider with an in-memory reader wired into thunkscope (no tracing)."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def values(self, metric_name: str, result: str | None = None) -> dict[str, Any]:
        """Cache name -> value of one cache metric (of one lookup result, if given)."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            point.attributes[names.CACHE_NAME]: point.value
            for resource_metrics in data.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
            if metric.name == metric_name
            for point in metric.data.data_points
            if result is None or point.attributes.get(names.CACHE_RESULT) == result
        }

    def series(self, metric_name: str) -> list[dict[str, Any]]:
        """The attribute sets of every data point of one metric, as collected now."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            dict(point.attributes or {})
            for resource_metrics in data.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
            if metric.name == metric_name
            for point in metric.data.data_points
        ]


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """Fresh name caps and cache counters, and a meter provider, for one test."""
    saved = (telemetry.stream_names, telemetry.cache_names, telemetry.cache_stats)
    telemetry.stream_names = NameCap("stream", DEFAULT_NAME_LIMIT)
    telemetry.cache_names = NameCap("cache", DEFAULT_NAME_LIMIT)
    telemetry.cache_stats = {}
    sink = Metrics()
    _telemetry.use_providers(meter_provider=sink.provider)
    try:
        yield sink
    finally:
        _telemetry.use_providers()
        sink.provider.shutdown()
        telemetry.stream_names, telemetry.cache_names, telemetry.cache_stats = saved


@pytest.fixture
def warnings_only(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """thunkscope's stdlib records at WARNING and above (debug events stay off: 10,000 calls)."""
    caplog.set_level(logging.WARNING, logger="thunkscope")
    return caplog


def cap_warnings(caplog: pytest.LogCaptureFixture, kind: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"distinct {kind} names" in r.getMessage()]


@pytest.mark.slow
class TestStreamNames:
    async def test_ten_thousand_names_fold_into_other(
        self, metrics: Metrics, warnings_only: pytest.LogCaptureFixture
    ) -> None:
        """10,000 stream names give at most name_limit + 1 series per metric, one warning."""
        for i in range(DISTINCT_NAMES):
            queue: asyncio.Queue[Any] = asyncio.Queue()
            await send_to_queue(f"answer-{i}", queue, name=f"request-{i}")
            assert queue.get_nowait() == f"answer-{i}"
        for metric in (
            "thunkscope.stream.duration",
            "thunkscope.stream.time_to_first_item",
            "thunkscope.stream.active",
        ):
            series = metrics.series(metric)
            labels = [s[names.STREAM_NAME] for s in series]
            assert len(labels) == len(set(labels)) == MAX_SERIES, metric
            assert NameCap.OTHER in labels
            assert all("otel.metric.overflow" not in s for s in series)
        (other,) = [
            p
            for p in metrics.series("thunkscope.stream.duration")
            if p[names.STREAM_NAME] == NameCap.OTHER
        ]
        assert other == {names.STREAM_NAME: "other", names.STREAM_OUTCOME: names.OUTCOME_COMPLETED}
        (warning,) = cap_warnings(warnings_only, "stream")
        assert "'other'" in warning.getMessage()

    async def test_names_under_the_cap_are_kept(self, metrics: Metrics) -> None:
        """Below the cap every name is its own series; nothing folds."""
        for name in ("alpha", "beta", "gamma"):
            await send_to_queue("x", asyncio.Queue(), name=name)
        labels = {s[names.STREAM_NAME] for s in metrics.series("thunkscope.stream.duration")}
        assert labels == {"alpha", "beta", "gamma"}


@pytest.mark.slow
class TestCacheNames:
    def test_ten_thousand_names_fold_into_other(
        self, metrics: Metrics, warnings_only: pytest.LogCaptureFixture
    ) -> None:
        """10,000 cache names give at most name_limit + 1 series per result, one warning."""
        caches = []
        for i in range(DISTINCT_NAMES):
            cache: ClientCache[int, str] = ClientCache(1, name=f"tenant-{i}")
            assert cache.get(1) is None
            cache.put(1, "a")
            cache.put(2, "b")  # evicts 1
            assert cache.get(2) == "b"
            caches.append(cache)
        lookups = metrics.series("thunkscope.cache.lookups")
        for result in (names.RESULT_HIT, names.RESULT_MISS):
            labels = [s[names.CACHE_NAME] for s in lookups if s[names.CACHE_RESULT] == result]
            assert len(labels) == len(set(labels)) == MAX_SERIES
            assert NameCap.OTHER in labels
        for metric in (
            "thunkscope.cache.evictions",
            "thunkscope.cache.entry.count",
            "thunkscope.cache.entry.limit",
        ):
            labels = [s[names.CACHE_NAME] for s in metrics.series(metric)]
            assert len(labels) == len(set(labels)) == MAX_SERIES, metric
        # the folded series still add up: every cache past the cap counts under `other`
        entries = {s[names.CACHE_NAME] for s in metrics.series("thunkscope.cache.entry.count")}
        assert NameCap.OTHER in entries
        folded = DISTINCT_NAMES - DEFAULT_NAME_LIMIT  # one entry, one eviction, one hit...
        for metric, result in (
            ("thunkscope.cache.entry.count", None),
            ("thunkscope.cache.entry.limit", None),
            ("thunkscope.cache.evictions", None),
            ("thunkscope.cache.lookups", names.RESULT_HIT),
            ("thunkscope.cache.lookups", names.RESULT_MISS),
        ):
            values = metrics.values(metric, result)
            assert values[NameCap.OTHER] == folded, metric
            assert values["tenant-0"] == 1, metric
            assert sum(values.values()) == DISTINCT_NAMES, metric
        (warning,) = cap_warnings(warnings_only, "cache")
        assert "'other'" in warning.getMessage()


class TestNameLimitSetting:
    def test_environment_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """THUNKSCOPE_NAME_LIMIT sets the cap."""
        monkeypatch.setenv("THUNKSCOPE_NAME_LIMIT", "7")
        assert _telemetry.Settings.from_env().name_limit == 7

    def test_cap_of_two(self, stdlib_records: pytest.LogCaptureFixture) -> None:
        """A cap of 2 admits the first two names, folds the rest, and warns once."""
        cap = NameCap("stream", 2)
        assert [cap.fold(name) for name in ("a", "b", "c", "a", "d", "b")] == [
            "a",
            "b",
            "other",
            "a",
            "other",
            "b",
        ]
        assert cap.names() == ["a", "b"]
        assert len(cap_warnings(stdlib_records, "stream")) == 1
