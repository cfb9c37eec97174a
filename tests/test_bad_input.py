"""Bad input everywhere public: a clear TypeError or ValueError that names the argument.

One table per kind of entry point. Every row gives a wrong type or an out-of-range value
to one argument; the answer must be the stated exception with the argument's name in its
message. `send_to_queue` usually runs as a task nobody awaits, so there the error is put
on the queue as well (and the coroutine it was given is closed), so no consumer hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.metrics import _internal as metrics_internal

import thunkscope
from support.fakes import Thunk
from thunkscope import (
    ClientCache,
    TelemetryHandle,
    _config,
    configure,
    configure_logging,
    send_to_queue,
    wait_for_all_mots,
)
from thunkscope._telemetry import telemetry


@dataclass(frozen=True)
class Case:
    """One bad call: what to call, the exception it must raise, the argument it must name."""

    call: Callable[[], Any]
    error: type[Exception]
    names: str

    def check(self) -> None:
        with pytest.raises(self.error) as info:
            self.call()
        assert type(info.value) is self.error
        assert self.names in str(info.value), str(info.value)


def rows(table: dict[str, Case]) -> Any:
    return pytest.mark.parametrize("case", list(table.values()), ids=list(table))


# --- send_to_queue ----------------------------------------------------------------------

STREAM_ARGUMENTS: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "chunk_timeout str": ({"chunk_timeout": "10"}, ValueError, "chunk_timeout"),
    "chunk_timeout list": ({"chunk_timeout": [1]}, ValueError, "chunk_timeout"),
    "chunk_timeout bool": ({"chunk_timeout": True}, ValueError, "chunk_timeout"),
    "chunk_timeout zero": ({"chunk_timeout": 0}, ValueError, "chunk_timeout"),
    "chunk_timeout negative": ({"chunk_timeout": -1.5}, ValueError, "chunk_timeout"),
    "chunk_timeout nan": ({"chunk_timeout": float("nan")}, ValueError, "chunk_timeout"),
    "stall_after str": ({"stall_after": "soon"}, ValueError, "stall_after"),
    "stall_after negative": ({"stall_after": -1}, ValueError, "stall_after"),
    "on_timeout not callable": ({"on_timeout": "stop"}, TypeError, "on_timeout"),
    "name int": ({"name": 3}, TypeError, "name"),
    "name empty": ({"name": ""}, ValueError, "name"),
}


class TestSendToQueue:
    @pytest.mark.parametrize(
        ("kwargs", "error", "argument"),
        list(STREAM_ARGUMENTS.values()),
        ids=list(STREAM_ARGUMENTS),
    )
    async def test_error_named_and_on_the_queue(
        self, kwargs: dict[str, Any], error: type[Exception], argument: str
    ) -> None:
        """A bad argument is an error naming it, put on the queue with nothing after it."""

        async def backend() -> str:
            return "never awaited"

        co = backend()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(co, queue, **kwargs)
        assert queue.qsize() == 1
        put = queue.get_nowait()
        assert type(put) is error
        assert argument in str(put)
        assert co.cr_frame is None  # closed: Python will not warn it was never awaited

    async def test_not_a_queue_raises(self) -> None:
        """Something that is not a queue cannot take the error: a TypeError naming aqueue."""

        async def backend() -> str:
            return "never awaited"

        co = backend()
        with pytest.raises(TypeError, match="aqueue"):
            await send_to_queue(co, ["not", "a", "queue"])  # type: ignore[arg-type]
        assert co.cr_frame is None


# --- wait_for_all_mots ------------------------------------------------------------------

GATHER_CASES: dict[str, tuple[Any, str]] = {
    "None": (None, "mots"),
    "an int": (5, "mots"),
    "a thunk without avalue": ([Thunk(1), object()], "mots[1]"),
    "a string": ("abc", "mots[0]"),
}


class TestWaitForAllMots:
    @pytest.mark.parametrize(
        ("mots", "argument"), list(GATHER_CASES.values()), ids=list(GATHER_CASES)
    )
    async def test_type_error_names_the_culprit(self, mots: Any, argument: str) -> None:
        """Not an iterable of thunks is a TypeError naming mots (or the bad element)."""
        with pytest.raises(TypeError) as info:
            await wait_for_all_mots(mots)
        assert argument in str(info.value)


# --- synchronous entry points -------------------------------------------------------------


def _cache() -> ClientCache[Any, Any]:
    return ClientCache(2, name="bad-input")


# ClientCache(capacity, **kwargs): SPEC section 1 makes every bad capacity a ValueError.
CACHE_CASES: list[tuple[tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ((0,), {}, ValueError, "capacity"),
    ((-1,), {}, ValueError, "capacity"),
    ((2.5,), {}, ValueError, "capacity"),
    (("2",), {}, ValueError, "capacity"),
    ((None,), {}, ValueError, "capacity"),
    ((True,), {}, ValueError, "capacity"),
    ((2,), {"name": 3}, TypeError, "name"),
    ((2,), {"name": ""}, ValueError, "name"),
    ((2,), {"on_evict": "close"}, TypeError, "on_evict"),
]

# configure(**kwargs): every argument, checked before anything is set up.
CONFIGURE_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"service_name": 3}, TypeError, "service_name"),
    ({"service_name": " "}, ValueError, "service_name"),
    ({"endpoint": 4318}, TypeError, "endpoint"),
    ({"endpoint": "localhost:4318"}, ValueError, "endpoint"),
    ({"protocol": "http"}, ValueError, "protocol"),
    ({"protocol": 1}, TypeError, "protocol"),
    ({"headers": [("a", "b")]}, TypeError, "headers"),
    ({"headers": {"a": 1}}, TypeError, "headers"),
    ({"log_format": "xml"}, ValueError, "log_format"),
    ({"log_level": "loud"}, ValueError, "log_level"),
    ({"log_level": 10}, TypeError, "log_level"),
    ({"spans": "some"}, ValueError, "spans"),
    ({"stall_after": -1}, ValueError, "stall_after"),
    ({"stall_after": "soon"}, TypeError, "stall_after"),
    ({"capture_content": "yes"}, TypeError, "capture_content"),
    ({"content_limit": 0}, ValueError, "content_limit"),
    ({"content_limit": 2.5}, TypeError, "content_limit"),
    ({"name_limit": -1}, ValueError, "name_limit"),
    ({"metric_export_interval_s": 0}, ValueError, "metric_export_interval_s"),
    ({"metric_export_interval_s": "10"}, TypeError, "metric_export_interval_s"),
    ({"metric_readers": 5}, TypeError, "metric_readers"),
    ({"metric_readers": [object()]}, TypeError, "metric_readers[0]"),
    ({"span_processors": ["x"]}, TypeError, "span_processors[0]"),
]

handle = TelemetryHandle
serve = thunkscope.serve_debug
OTHER_CASES: dict[str, Case] = {
    "ClientCache.get unhashable": Case(lambda: _cache().get([1]), TypeError, "key"),
    "ClientCache.put unhashable": Case(lambda: _cache().put({}, "v"), TypeError, "key"),
    "configure_logging log_format": Case(
        lambda: configure_logging("xml"), ValueError, "log_format"
    ),  # type: ignore[arg-type]
    "configure_logging level": Case(lambda: configure_logging(level="loud"), ValueError, "level"),
    "configure_logging provider": Case(
        lambda: configure_logging(logger_provider="p"),
        TypeError,
        "logger_provider",  # type: ignore[arg-type]
    ),
    "TelemetryHandle.shutdown": Case(lambda: handle().shutdown(0), ValueError, "timeout_s"),
    "TelemetryHandle.force_flush": Case(lambda: handle().force_flush("1"), TypeError, "timeout_s"),  # type: ignore[arg-type]
    "iter_queue not a queue": Case(lambda: thunkscope.iter_queue([]), TypeError, "aqueue"),  # type: ignore[arg-type]
    "serve_debug host int": Case(lambda: serve(host=5), ValueError, "host"),  # type: ignore[arg-type]
    "serve_debug host public": Case(lambda: serve(host="0.0.0.0"), ValueError, "host"),
    "serve_debug port negative": Case(lambda: serve(port=-1), ValueError, "port"),
    "serve_debug port str": Case(lambda: serve(port="80"), ValueError, "port"),  # type: ignore[arg-type]
}


@pytest.fixture
def configure_stops_at_its_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail loudly, and set up nothing, should configure() get past its argument checks."""

    def past_the_checks(*_: Any, **__: Any) -> Any:
        raise AssertionError("configure() accepted a bad argument and went on to set up export")

    monkeypatch.setattr(_config, "Exporters", past_the_checks)
    settings_before = repr(telemetry.settings)
    yield
    assert repr(telemetry.settings) == settings_before  # no setting changed either
    assert trace_api._TRACER_PROVIDER is None
    assert metrics_internal._METER_PROVIDER is None


class TestSynchronousEntryPoints:
    @pytest.mark.parametrize(
        ("args", "kwargs", "error", "argument"),
        CACHE_CASES,
        ids=[f"{a}-{k}" for a, k, _, _ in CACHE_CASES],
    )
    def test_client_cache(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], argument: str
    ) -> None:
        """A bad capacity, name or on_evict is the stated error, naming the argument."""
        Case(lambda: ClientCache(*args, **kwargs), error, argument).check()

    @pytest.mark.parametrize(
        ("kwargs", "error", "argument"),
        CONFIGURE_CASES,
        ids=[repr(k) for k, _, _ in CONFIGURE_CASES],
    )
    @pytest.mark.usefixtures("configure_stops_at_its_checks")
    def test_configure(self, kwargs: dict[str, Any], error: type[Exception], argument: str) -> None:
        """A bad configure() argument is the stated error, naming it, with nothing set up."""
        Case(lambda: configure(**kwargs), error, argument).check()

    @rows(OTHER_CASES)
    def test_other_entry_points(self, case: Case) -> None:
        """Cache keys, logging set-up, the handle, iter_queue, serve_debug: the stated error."""
        case.check()

    def test_every_public_callable_is_covered(self) -> None:
        """Each public function and class that takes arguments has a row in some table."""
        covered = {"send_to_queue", "wait_for_all_mots", "ClientCache", "configure"} | {
            key.split()[0].split(".")[0] for key in OTHER_CASES
        }
        takes_arguments = {
            name
            for name in thunkscope.__all__
            if callable(getattr(thunkscope, name))
            and name
            not in {
                "get_current_event_loop",  # no arguments
                "inflight",  # no arguments
                "add_trace_context",  # a structlog processor: structlog calls it
                "DebugServer",  # made by serve_debug
                "QueueIterator",  # made by iter_queue
            }
        }
        assert takes_arguments <= covered, takes_arguments - covered
