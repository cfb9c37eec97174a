"""Shared fixtures: in-memory OTel providers wired into thunkscope, and captured log events."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan

from thunkscope import _telemetry
from thunkscope.testing import (  # the tests import these from here too
    Recorded,
    VirtualTimeLoop,
    in_memory_providers,  # noqa: F401
    in_memory_telemetry,
)

pytest_plugins = ["support.collectors"]


# The project's tests record through the public helpers users get (thunkscope.testing).
Telemetry = Recorded


def events_of(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    """The span's events as (name, attributes) pairs."""
    return [(event.name, dict(event.attributes or {})) for event in span.events]


class AtLeast:
    """Equal to any finite number not below `low`: a measured duration in an exact dict.

    `low` must be an ordering that holds logically (a gap noticed only after `stall_after`,
    a sleep that ran before the figure was taken); there is no upper bound, because how much
    longer it took depends on the machine's load.
    """

    def __init__(self, low: float) -> None:
        self.low = low

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int | float) and math.isfinite(other) and self.low <= other

    def __repr__(self) -> str:
        return f"AtLeast({self.low})"


class Counted:
    """A function wrapped to count its calls."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.function(*args)


class BrokenMeterProvider(NoOpMeterProvider):
    """A meter provider that cannot even make a meter: thunkscope's instruments fail."""

    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("meter provider broke")


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Point thunkscope at fresh in-memory providers for one test."""
    with in_memory_telemetry() as fresh:
        yield fresh


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    """thunkscope's structlog events of one test, as event dicts (level included)."""
    with structlog.testing.capture_logs() as captured:
        yield captured
    structlog.reset_defaults()  # capture_logs leaves structlog marked as configured


@pytest.fixture
def stdlib_records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Records of the standard library logger ``thunkscope`` at every level."""
    caplog.set_level(logging.DEBUG, logger="thunkscope")
    return caplog


@pytest.fixture
def fresh_failure_reports() -> Iterator[None]:
    """report_failure's once-per-place-and-type memory, empty for one test, restored after."""
    saved = set(_telemetry._reported)
    _telemetry._reported.clear()
    try:
        yield
    finally:
        _telemetry._reported.clear()
        _telemetry._reported.update(saved)


@pytest.fixture
async def timers() -> AsyncIterator[list[float]]:
    """Delays of every asyncio timer scheduled on the running loop meanwhile (call_later too)."""
    loop = asyncio.get_running_loop()
    scheduled: list[float] = []
    call_at = loop.call_at

    def counting_at(when: float, *args: Any, **kwargs: Any) -> Any:
        scheduled.append(when - loop.time())
        return call_at(when, *args, **kwargs)

    loop.call_at = counting_at  # type: ignore[method-assign]
    try:
        yield scheduled
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _isolated_settings() -> Iterator[None]:
    """Each test starts from the settings of the environment, and leaves them so."""
    saved = _telemetry.telemetry.settings
    _telemetry.telemetry.settings = _telemetry.Settings.from_env()
    try:
        yield
    finally:
        _telemetry.telemetry.settings = saved
        structlog.reset_defaults()


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Discovery files of each test's debug endpoints go to a directory of its own."""
    runtime = tmp_path_factory.mktemp("runtime")
    monkeypatch.setenv("THUNKSCOPE_RUNTIME_DIR", str(runtime))
    return runtime


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason, tests whose mellea environment this is not.

    CI never relies on this: scripts/test.sh selects them with ``-m`` per environment,
    so each runs exactly where it can. This only keeps an ad-hoc ``pytest`` honest.
    """
    import importlib.metadata
    import importlib.util

    have = importlib.util.find_spec("mellea") is not None
    version = importlib.metadata.version("mellea") if have else ""
    for item in items:
        if item.get_closest_marker("mellea") and not have:
            item.add_marker(pytest.mark.skip(reason="needs mellea: run scripts/test.sh"))
        if item.get_closest_marker("mellea07plus") and version.startswith("0.6"):
            item.add_marker(pytest.mark.skip(reason="needs mellea 0.7+: run scripts/test.sh"))
        if item.get_closest_marker("mellea08") and not version.startswith("0.8"):
            item.add_marker(pytest.mark.skip(reason="needs mellea 0.8: run scripts/test.sh"))
        if item.get_closest_marker("without_mellea") and have:
            item.add_marker(pytest.mark.skip(reason="needs an environment without mellea"))


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Any:
    """Async tests marked ``virtual_time`` run on thunkscope.testing's virtual-time loop,
    made thunkscope's clock: sleeps and stalls take no real time, and gaps are exact."""
    if item.get_closest_marker("virtual_time") is None:
        return {"asyncio": asyncio.new_event_loop}  # one factory: the test id is unchanged
    return {"virtual": lambda: VirtualTimeLoop().install_clock()}
