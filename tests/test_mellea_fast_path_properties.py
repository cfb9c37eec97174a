"""The fast path behaves as the installed mellea's own ``send_to_queue``, script for script.

Hypothesis draws a stream script (the response's form, the items and the gaps before
them, how the backend ends: normally, with an error, with its own TimeoutError, or by
hanging; what the backend does with a cancel it swallows; how its iterator closes;
chunk_timeout and on_timeout; a bounded queue and a slow consumer; the producer task
cancelled at some moment) and runs it three times in virtual time: through mellea's
original function, through the wrapping path (mellea's function observed) and through
the fast path. A consumer and the thunk must not tell the original and the fast path
apart: the same items, sentinel or exception (type and message) at the same virtual
moments, the same backend calls (each ``anext``, each cancel, each close) at the same
moments, the same ``on_timeout`` calls and mellea debug lines, the same final state of
the task, and on 0.8 the same time to first byte and chunk intervals on the thunk. The
fast path and the wrapping path must leave the same telemetry.

Every timed thing sits on its own grid of binary fractions (item gaps on quarters,
the consumer's pauses add 1/1024 each, timeouts 1/32, the cancel 1/2048), so no two
timers ever fall due at the same virtual moment: the order of such ties is the event
loop's heap's, not the behaviour under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import importlib.metadata
import inspect
import logging
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from thunkscope import _inflight, _telemetry, names, testing
from thunkscope.instrumentation import _fast
from thunkscope.instrumentation._stream import observe_send_to_queue

pytestmark = pytest.mark.mellea

START = 1000.0  # the virtual clock's start
HANG = 50.0  # a hang: longer than any chunk_timeout drawn
EPOCH = datetime.datetime(2026, 1, 1)
GAPS = (0.0, 0.25, 1.0, 3.0, 12.0)
TIMEOUTS = (2.0 + 1 / 32, 10.0 + 1 / 32)
CONSUMER_PAUSES = (0.0, 0.25 + 1 / 1024, 1.0 + 1 / 1024)


class Boom(Exception):
    """The scripted backend failure."""


@dataclass(frozen=True)
class Script:
    """One drawn stream, the same for every run."""

    response: str  # see RESPONSES
    gaps: tuple[float, ...]  # the backend's wait before each item
    ending: str  # "end", "raise", "raise_timeout", "hang"
    swallow: str | None  # a cancel the backend catches becomes: "item", "end", "raise", ...
    closer: str  # see CLOSERS
    chunk_timeout: float | None
    on_timeout: str | None  # None, "ok", "raises" (0.8)
    maxsize: int
    pause: float  # the consumer's pause before each get
    cancel_at: float | None  # seconds after the start at which the producer is cancelled


RESPONSES = (
    "iterator",  # the iterator handed over directly (mellea's huggingface backend)
    "coroutine_iterator",  # a coroutine answering an iterator (openai, ollama, ...)
    "generator",  # a coroutine answering a native async generator
    "stream_like",  # __aiter__ answers another object (openai's AsyncStream does)
    "steps_only",  # __aiter__ answers an object with __anext__ only
    "coroutine_value",  # a coroutine answering one value (not streaming)
    "coroutine_raises",
    "coroutine_timeout",  # the backend's own TimeoutError before any item
)
CLOSERS = ("aclose", "close", "close_coroutine", "aclose_fails", "none")


# --- the backend ----------------------------------------------------------------------------------


class Backend:
    """The scripted backend: what it yields and when, and a log of what was asked of it."""

    def __init__(self, script: Script, log: list[tuple[float, str]]) -> None:
        self.script = script
        self.log = log
        self.index = 0
        self.swallowed = False

    def note(self, what: str) -> None:
        self.log.append((asyncio.get_running_loop().time(), what))

    async def wait(self, seconds: float) -> str | None:
        """Sleep; a cancel is raised, or swallowed once and answered as the script says."""
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.note(f"cancelled at {self.index}")
            if self.script.swallow is None or self.swallowed:
                raise
            self.swallowed = True
            return self.script.swallow
        return None

    async def next(self) -> str:
        script, index = self.script, self.index
        self.note(f"next {index}")
        if index < len(script.gaps):
            late = await self.wait(script.gaps[index])
        elif script.ending == "hang":
            late = await self.wait(HANG)
            if late is None:
                raise StopAsyncIteration
        elif script.ending == "raise":
            raise Boom(f"failed at {index}")
        elif script.ending == "raise_timeout":
            raise TimeoutError(f"backend's own timeout at {index}")
        else:
            raise StopAsyncIteration
        if late == "end":
            raise StopAsyncIteration
        if late == "raise":
            raise Boom(f"late failure at {index}")
        if late == "raise_timeout":
            raise TimeoutError(f"backend's own late timeout at {index}")
        self.index += 1
        return f"{'late-' if late else ''}item-{index}"

    async def generator(self) -> Any:
        try:
            while True:
                try:
                    item = await self.next()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            self.note("generator finally")


class Steps:
    """An async iterator stepping the backend; its close methods as the script says."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __aiter__(self) -> Steps:
        return self

    async def __anext__(self) -> str:
        return await self.backend.next()


class WithAclose(Steps):
    async def aclose(self) -> None:
        self.backend.note("aclose")


class WithClose(Steps):
    def close(self) -> None:
        self.backend.note("close")


class WithCloseCoroutine(Steps):
    def close(self) -> Any:
        self.backend.note("close")

        async def closing() -> None:
            self.backend.note("close awaited")

        return closing()


class WithFailingAclose(Steps):
    async def aclose(self) -> None:
        self.backend.note("aclose")
        raise RuntimeError("the close failed")


STEPS: dict[str, type[Steps]] = {
    "aclose": WithAclose,
    "close": WithClose,
    "close_coroutine": WithCloseCoroutine,
    "aclose_fails": WithFailingAclose,
    "none": Steps,
}


class StreamLike(Steps):
    """Like openai's AsyncStream: iterating it makes a new async generator each time."""

    def __aiter__(self) -> Any:  # type: ignore[override]
        self.backend.note("aiter")
        return self.backend.generator()


class OnlyNext:
    """What a __aiter__ may answer: an object with __anext__ and no __aiter__."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def __anext__(self) -> str:
        return await self.backend.next()


class StepsOnly(Steps):
    def __aiter__(self) -> Any:  # type: ignore[override]
        self.backend.note("aiter")
        return OnlyNext(self.backend)


def response_of(script: Script, backend: Backend) -> Any:
    """The `co` mellea's send_to_queue is given for the script."""
    kind = script.response
    if kind == "iterator":
        return STEPS[script.closer](backend)

    async def answer() -> Any:
        await asyncio.sleep(0)
        if kind == "coroutine_raises":
            raise Boom("no answer")
        if kind == "coroutine_timeout":
            raise TimeoutError("the backend's own timeout")
        if kind == "coroutine_value":
            return "the whole answer"
        if kind == "generator":
            return backend.generator()
        if kind == "stream_like":
            return StreamLike(backend)
        if kind == "steps_only":
            return StepsOnly(backend)
        return STEPS[script.closer](backend)

    return answer()


# --- scripts --------------------------------------------------------------------------------------


def release() -> _fast.Release:
    return _fast.RELEASES[importlib.metadata.version("mellea")]


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """Small scripts over the installed release's parameters."""
    this = release()
    count = draw(st.integers(0, 4))
    cancelled = draw(st.integers(0, 3)) == 0  # one stream in four: the rest end by themselves
    cancel_at = draw(st.integers(0, 60)) / 4 + 1 / 2048 if cancelled else None
    timeout = draw(st.sampled_from((None, *TIMEOUTS))) if this.timeout else None
    # The first cancel the backend sees (the deadline's or an outside one) it may swallow.
    swallow = draw(st.sampled_from((None, None, None, "item", "end", "raise", "raise_timeout")))
    return Script(
        response=draw(st.sampled_from(RESPONSES)),
        gaps=tuple(draw(st.lists(st.sampled_from(GAPS), min_size=count, max_size=count))),
        ending=draw(st.sampled_from(("end", "raise", "raise_timeout", "hang"))),
        swallow=swallow,
        closer=draw(st.sampled_from(CLOSERS)),
        chunk_timeout=timeout,
        on_timeout=draw(st.sampled_from((None, "ok", "raises"))) if this.on_timeout else None,
        maxsize=draw(st.sampled_from((0, 1, 2))),
        pause=draw(st.sampled_from(CONSUMER_PAUSES)),
        cancel_at=cancel_at,
    )


# --- one run --------------------------------------------------------------------------------------


@dataclass
class Seen:
    """Everything a consumer, the backend and the thunk can observe of one run."""

    received: list[tuple[float, Any]]
    backend: list[tuple[float, str]]
    on_timeout: list[float]
    task: tuple[Any, ...]
    mellea_debug: list[str]
    thunk: tuple[Any, ...] | None


class _MelleaDebug(logging.Handler):
    """mellea's log lines from this thread (not from a background loop other tests left)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def virtual_mellea_clocks(
    loop: testing.VirtualTimeLoop, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """mellea's clocks (and the fast path's copy of them) on the virtual clock."""
    from mellea.helpers import async_helpers

    virtual_perf = types.SimpleNamespace(perf_counter=loop.time)
    with monkeypatch.context() as patch:
        if hasattr(async_helpers, "time"):
            patch.setattr(async_helpers, "time", virtual_perf)
        patch.setattr(_fast, "time", virtual_perf)
        base = importlib.import_module("mellea.core.base")
        if hasattr(base, "datetime"):

            class VirtualDatetime(datetime.datetime):
                @classmethod
                def now(cls, tz: Any = None) -> Any:
                    return EPOCH + datetime.timedelta(seconds=loop.time())

            shim = types.SimpleNamespace(**vars(datetime))
            shim.datetime = VirtualDatetime
            patch.setattr(base, "datetime", shim)
        yield


def _call(function: Callable[..., Any], script: Script, co: Any, target: Any, seen: Seen) -> Any:
    kwargs: dict[str, Any] = {}
    if release().timeout:
        kwargs["chunk_timeout"] = script.chunk_timeout
    if script.on_timeout is not None:

        def on_timeout() -> None:
            seen.on_timeout.append(asyncio.get_running_loop().time())
            if script.on_timeout == "raises":
                raise RuntimeError("on_timeout failed")

        kwargs["on_timeout"] = on_timeout
    return function(co, target, **kwargs)


async def scenario(script: Script, function: Callable[..., Any]) -> Seen:
    """Run `function` (a send_to_queue) over the script as mellea's backends do."""
    loop = asyncio.get_running_loop()
    seen = Seen([], [], [], (), [], None)
    backend = Backend(script, seen.backend)
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=script.maxsize)
    this = release()
    mot: Any = None
    target: Any = queue
    if this.thunk:
        from mellea.core import ModelOutputThunk

        mot = ModelOutputThunk(None)
        mot._gen.queue = queue
        mot._gen.start = EPOCH + datetime.timedelta(seconds=loop.time())
        target = mot
    producer = asyncio.create_task(
        _call(function, script, response_of(script, backend), target, seen)
    )
    if script.cancel_at is not None:
        loop.call_at(START + script.cancel_at, producer.cancel)
    while True:
        if script.pause:
            await asyncio.sleep(script.pause)
        get = asyncio.ensure_future(queue.get())
        await asyncio.wait({get, producer}, return_when=asyncio.FIRST_COMPLETED)
        if not get.done():
            get.cancel()
            await asyncio.gather(get, return_exceptions=True)
            if producer.done() and queue.empty():
                break
            continue
        item = get.result()
        value = (type(item).__name__, str(item)) if isinstance(item, BaseException) else item
        seen.received.append((loop.time(), value))
        if item is None or isinstance(item, BaseException):
            break
    await asyncio.wait({producer})
    if producer.cancelled():
        seen.task = ("cancelled",)
    elif producer.exception() is not None:
        error = producer.exception()
        seen.task = ("raised", type(error).__name__, str(error))
    else:
        seen.task = ("returned", producer.result())
    seen.received.extend((loop.time(), ("left", item)) for item in _drain(queue))
    if mot is not None:
        seen.thunk = (
            mot._gen.first_chunk_received,
            mot.generation.ttfb_ms,
            list(mot._gen.chunk_intervals),
        )
    return seen


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    left = []
    while not queue.empty():
        item = queue.get_nowait()
        left.append(type(item).__name__ if isinstance(item, BaseException) else item)
    return left


def observe(script: Script, function: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Seen:
    """One run in virtual time, mellea's debug lines captured."""
    from mellea.core import MelleaLogger

    logger = MelleaLogger.get_logger()
    handler = _MelleaDebug()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with testing.virtual_time(START) as loop, virtual_mellea_clocks(loop, monkeypatch):
            seen = loop.run_until_complete(scenario(script, function))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    seen.mellea_debug = handler.messages
    return seen


def original() -> Any:
    from mellea.helpers import async_helpers

    return inspect.unwrap(async_helpers.send_to_queue)


def fast() -> Any:
    default = getattr(
        importlib.import_module("mellea.helpers.async_helpers"), "DEFAULT_CHUNK_TIMEOUT", None
    )
    return _fast.make_fast_send_to_queue(release(), original(), "prop", default)


def wrapping(script: Script) -> Any:
    def send_to_queue(co: Any, target: Any, **kwargs: Any) -> Any:
        return observe_send_to_queue(original(), (co, target), kwargs, "prop", None)

    return send_to_queue


# --- telemetry -----------------------------------------------------------------------------------

IDS = {names.STREAM_ID}
PUT_WAIT = (names.QUEUE_PUT_WAIT.name, ((names.STREAM_NAME, "prop"),))


def backend_frames(frames: Any) -> list[str]:
    """The backend's frames of a stall's producer stack: the frames above them are the
    producer's own (mellea's function and the observer, or thunkscope's loop)."""
    assert isinstance(frames, list | tuple), frames
    assert frames, frames
    return [frame for frame in frames if frame.startswith(__file__)]


def backend_stack(attributes: dict[str, Any]) -> dict[str, Any]:
    if names.STREAM_PRODUCER_STACK in attributes:
        frames = attributes[names.STREAM_PRODUCER_STACK]
        attributes[names.STREAM_PRODUCER_STACK] = backend_frames(list(frames))
    return attributes


def recorded(telemetry: testing.Recorded) -> dict[str, Any]:
    """This stream's telemetry, less its random id (every time is virtual, so exact).

    Only what carries the stream's name: the telemetry is process-wide, and mellea's
    background event loop (left by other tests' sessions) may look its loop up meanwhile.
    """
    spans = [
        span
        for span in telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        if (span.attributes or {}).get(names.STREAM_NAME) == "prop"
    ]
    series = {}
    for metric in names.METRICS:
        for point in telemetry.points(metric.name):
            attributes = dict(point.attributes)
            if attributes.get(names.STREAM_NAME) != "prop":
                continue
            key = (metric.name, tuple(sorted(attributes.items())))
            series[key] = tuple(getattr(point, k, None) for k in ("count", "sum", "value"))
    logs = []
    for entry in telemetry.logs:
        if entry.get("stream") != "prop":
            continue
        fields = {k: v for k, v in entry.items() if k not in ("stream_id", "trace_id", "span_id")}
        if "producer_stack" in fields:
            fields["producer_stack"] = backend_frames(fields["producer_stack"])
        logs.append(fields)
    return {
        "spans": [
            (
                span.status.status_code.name,
                span.status.description,
                {k: v for k, v in (span.attributes or {}).items() if k not in IDS},
                [(e.name, backend_stack(dict(e.attributes or {}))) for e in span.events],
            )
            for span in spans
        ],
        "series": series,
        "logs": logs,
    }


def telemetry_of(
    script: Script, function: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[Seen, dict[str, Any]]:
    # Every run starts from the same process state: a telemetry failure is reported once per
    # process, so an earlier run's report must not silence this one's.
    _telemetry._reported.clear()
    with testing.in_memory_telemetry(logs=True) as telemetry:
        seen = observe(script, function, monkeypatch)
        assert _inflight.registered() == 0
        return seen, recorded(telemetry)


# --- the properties ------------------------------------------------------------------------------


@pytest.fixture
def stall_after() -> Iterator[None]:
    """Stall warnings at 1.5 s, so that scripts exercise them too."""
    saved = _telemetry.telemetry.settings.stall_after
    _telemetry.telemetry.settings.stall_after = 1.5 + 1 / 4096
    try:
        yield
    finally:
        _telemetry.telemetry.settings.stall_after = saved
        structlog.reset_defaults()


def fitted(script: Script) -> Script:
    """`script` less what the installed release does not have (an explicit example's)."""
    this = release()
    timeout = script.chunk_timeout if this.timeout else None
    return dataclasses.replace(
        script,
        chunk_timeout=timeout,
        on_timeout=script.on_timeout if this.on_timeout else None,
    )


def _example(**fields: Any) -> Script:
    base = {
        "response": "coroutine_iterator",
        "gaps": (0.0, 0.25, 1.0),
        "ending": "end",
        "swallow": None,
        "closer": "aclose",
        "chunk_timeout": TIMEOUTS[0],
        "on_timeout": "ok",
        "maxsize": 0,
        "pause": 0.0,
        "cancel_at": None,
    }
    return Script(**{**base, **fields})


# Paths every run covers, whatever Hypothesis draws.
EXAMPLES = (
    _example(),  # a plain stream
    _example(gaps=(0.0, 3.0, 0.25)),  # a gap past chunk_timeout: mellea's timeout, closed
    _example(ending="hang", on_timeout="raises"),  # on_timeout fails: mellea's debug line
    _example(ending="hang", swallow="item"),  # the deadline's cancel swallowed: a late item
    _example(ending="hang", swallow="end"),
    _example(ending="hang", swallow="raise"),
    _example(ending="hang", swallow="raise_timeout"),
    _example(response="stream_like", ending="hang", closer="none"),  # aiter() is another
    _example(response="steps_only", gaps=(0.25, 12.0)),
    _example(response="iterator", closer="close_coroutine", gaps=(12.0,)),
    _example(closer="aclose_fails", ending="hang"),
    _example(ending="raise_timeout", chunk_timeout=None),  # the backend's own TimeoutError
    _example(maxsize=1, pause=1.0 + 1 / 1024, gaps=(0.0, 0.0, 0.0, 0.25)),  # backpressure
    _example(response="coroutine_value", maxsize=1, pause=0.25 + 1 / 1024),
    _example(ending="hang", chunk_timeout=None, cancel_at=7.25 + 1 / 2048),  # cancelled
    _example(maxsize=1, pause=1.0 + 1 / 1024, cancel_at=0.5 + 1 / 2048),  # cancelled in a put
    # an outside cancel the backend turns into its own TimeoutError: forwarded, not a timeout
    _example(ending="hang", chunk_timeout=None, cancel_at=3.0 + 1 / 2048, swallow="raise_timeout"),
    _example(ending="hang", chunk_timeout=None, cancel_at=3.0 + 1 / 2048, swallow="item"),
    # an outside cancel swallowed, a late item, then a stall past chunk_timeout: a timeout
    _example(ending="hang", cancel_at=0.5 + 1 / 2048, swallow="item", gaps=(0.0, 1.0)),
)


def _with_examples(test: Callable[..., Any]) -> Callable[..., Any]:
    for script in reversed(EXAMPLES):
        test = example(script=script)(test)
    return test


class TestSameAsMellea:
    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(script=scripts())
    @_with_examples
    def test_consumer_backend_and_thunk_see_the_same(
        self,
        script: Script,
        monkeypatch: pytest.MonkeyPatch,
        stall_after: None,
        fresh_failure_reports: None,
    ) -> None:
        """mellea's own function and the fast path are indistinguishable to the consumer,
        the backend and the thunk; the wrapping path is too, and leaves the same telemetry
        as the fast path."""
        pytest.importorskip("mellea")
        script = fitted(script)
        expected = observe(script, original(), monkeypatch)
        served, served_telemetry = telemetry_of(script, fast(), monkeypatch)
        wrapped, wrapped_telemetry = telemetry_of(script, wrapping(script), monkeypatch)
        event(f"task {expected.task[0]}")
        last = expected.received[-1][1] if expected.received else None
        event(f"ends with {last[0] if isinstance(last, tuple) else last!r}")
        event(f"late item: {any('late-' in str(item) for _, item in expected.received)}")
        event(f"backend closed: {any('close' in what for _, what in expected.backend)}")
        event(f"on_timeout called: {bool(expected.on_timeout)}")
        event(f"put waited: {PUT_WAIT in served_telemetry['series']}")
        if expected.thunk is not None:
            event(f"chunk intervals recorded: {len(expected.thunk[2])}")
        assert served == expected
        assert wrapped == expected
        assert served_telemetry == wrapped_telemetry
