"""_events: which events are logged, and what a filtered one costs, when the app set up structlog.

When the application configured structlog, thunkscope's events flow through its
processors; a level its wrapper class filters out is not built at all (no fields, no
trace context), so a cache hit with debug off stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from conftest import Counted
from support.faulty import run_python
from thunkscope import ClientCache, names
from thunkscope import _events as events


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    """Event dicts of the application's structlog processors; structlog reset after."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    try:
        yield capture.entries
    finally:
        structlog.reset_defaults()


def filtering_at(level: int) -> None:
    """The application's structlog wrapper class: a filtering bound logger at `level`."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


class TestStructlogLevels:
    def test_filtering_bound_logger_decides_what_is_enabled(
        self, captured: list[dict[str, Any]]
    ) -> None:
        """With a filtering bound logger at INFO, debug is off and info on."""
        filtering_at(logging.INFO)
        assert events.enabled(events.DEBUG) is False
        assert events.enabled(events.INFO) is True
        assert events.enabled(events.WARNING) is True

    def test_enabled_events_flow_through_the_apps_processors(
        self, captured: list[dict[str, Any]]
    ) -> None:
        """Events at an enabled level reach the app's processors; filtered ones do not."""
        filtering_at(logging.INFO)
        events.emit(events.DEBUG, "cache.hit", cache="c")
        events.emit(events.INFO, "cache.miss", cache="c")
        assert [(e["event"], e["log_level"]) for e in captured] == [("cache.miss", "info")]

    def test_a_new_wrapper_class_is_seen_at_once(self, captured: list[dict[str, Any]]) -> None:
        """Reconfiguring structlog's level changes the answer on the next call."""
        filtering_at(logging.INFO)
        assert events.enabled(events.DEBUG) is False
        filtering_at(logging.DEBUG)
        assert events.enabled(events.DEBUG) is True
        filtering_at(logging.ERROR)
        assert events.enabled(events.WARNING) is False
        assert events.enabled(events.ERROR) is True

    def test_a_wrapper_class_that_cannot_say_lets_everything_through(
        self, captured: list[dict[str, Any]]
    ) -> None:
        """A wrapper class without is_enabled_for: every level is enabled, as before."""
        structlog.configure(wrapper_class=structlog.BoundLogger)
        assert events.enabled(events.DEBUG) is True
        events.emit(events.DEBUG, "cache.hit", cache="c")
        assert [e["event"] for e in captured] == ["cache.hit"]

    def test_stdlib_bound_logger_asks_the_stdlib_logger(
        self, captured: list[dict[str, Any]]
    ) -> None:
        """structlog.stdlib.BoundLogger answers from the stdlib logger ``thunkscope``'s level."""
        structlog.configure(
            wrapper_class=structlog.stdlib.BoundLogger,
            logger_factory=structlog.stdlib.LoggerFactory(),
        )
        logger = logging.getLogger(names.LOGGER_NAME)
        saved = logger.level
        try:
            logger.setLevel(logging.INFO)
            assert events.enabled(events.DEBUG) is False
            assert events.enabled(events.INFO) is True
            logger.setLevel(logging.DEBUG)
            assert events.enabled(events.DEBUG) is True
        finally:
            logger.setLevel(saved)


class TestFilteredEventsCostNothing:
    def test_filtered_emit_builds_no_trace_context(
        self, captured: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A debug event that the app's level filters out never looks up the trace context."""
        filtering_at(logging.INFO)
        trace_context = Counted(events.trace_context)
        monkeypatch.setattr(events, "trace_context", trace_context)
        events.emit(events.DEBUG, "cache.hit", cache="c")
        assert trace_context.calls == 0
        events.emit(events.INFO, "cache.miss", cache="c")
        assert trace_context.calls == 1

    def test_cache_hit_with_debug_filtered_logs_nothing(
        self, captured: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A cache hit with the app's structlog at INFO builds and logs no event."""
        filtering_at(logging.INFO)
        cache: ClientCache[str, int] = ClientCache(2, name="events-filtered")
        cache.put("a", 1)
        trace_context = Counted(events.trace_context)
        monkeypatch.setattr(events, "trace_context", trace_context)
        captured.clear()
        assert cache.get("a") == 1
        assert captured == []
        assert trace_context.calls == 0
        assert cache.get("b") is None  # a miss, at info, is logged
        assert [e["event"] for e in captured] == [names.LOG_CACHE_MISS]


class TestStructlogStateIsOnlyRead:
    def test_importing_thunkscope_writes_nothing_into_structlog(self) -> None:
        """Importing thunkscope and using a cache leave structlog's configuration as it was."""
        result = run_python(
            """
            import json, structlog
            before = dict(vars(structlog._config._CONFIG))
            import thunkscope
            cache = thunkscope.ClientCache(2)
            cache.put(1, "a")
            assert cache.get(1) == "a"
            after = dict(vars(structlog._config._CONFIG))
            print(json.dumps({"before": repr(before), "after": repr(after),
                              "configured": structlog.is_configured()}))
            """
        )
        assert result["after"] == result["before"] == "{}"
        assert result["configured"] is False

    def test_hits_follow_structlog_being_configured_and_reset(self) -> None:
        """A hit logs through structlog once the app configures it, and not after a reset."""
        cache: ClientCache[str, int] = ClientCache(2, name="events-follow")
        cache.put("a", 1)
        capture = structlog.testing.LogCapture()
        structlog.configure(processors=[capture], cache_logger_on_first_use=False)
        try:
            assert cache.get("a") == 1
        finally:
            structlog.reset_defaults()
        assert cache.get("a") == 1  # structlog reset: the hit is not logged through it
        assert [e["event"] for e in capture.entries] == [names.LOG_CACHE_HIT]
