"""_streamrec: one stream record for both loops, so both record the same stream the same way.

Hypothesis draws stream scripts (items, gaps, backend errors, hangs past chunk_timeout,
cancellations) and runs each through thunkscope's own `send_to_queue` loop and through
mellea's own `send_to_queue` observed by the instrumentation's loop. Apart from what is
measured (durations, gaps) and the ids only mellea has, the two must leave the same
telemetry: span status and attributes, span events, metric series and log events. Runs in
the mellea environments, with the installed mellea's function.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import Telemetry, in_memory_telemetry
from thunkscope import _inflight, _telemetry, names, send_to_queue, testing

# mellea's original must time out the hanging scripts: 0.7 on (0.6 has no chunk_timeout).
pytestmark = [pytest.mark.mellea, pytest.mark.mellea07plus]

NAME = "rec"
TIMEOUT = 0.25  # chunk_timeout where a script hangs; every other wait is 0-2 ms
FOREVER = 60.0  # a hang: ended by the deadline or the cancel, never by itself
MEASURED = {
    names.STREAM_ID,
    names.STREAM_MAX_ITEM_GAP,
    names.STREAM_PUT_WAIT,
    names.STREAM_TIME_TO_FIRST_ITEM,
}


class Boom(Exception):
    """The scripted backend failure."""


@dataclass(frozen=True)
class Script:
    """One drawn stream, the same for both loops."""

    response: str  # "iterator", "coroutine_iterator", "coroutine_value", "coroutine_raises"
    gaps: tuple[float, ...]  # before each item
    fail_at: int | None  # raise Boom instead of this item
    hang_at: int | None  # wait past chunk_timeout instead of this item
    cancel_at: int | None  # the consumer cancels the producer once it has this many items
    chunk_timeout: float | None


class ScriptedIterator:
    """The backend's items, as the script says."""

    def __init__(self, script: Script, holding: asyncio.Event) -> None:
        self.script = script
        self.index = 0
        self.holding = holding  # set once the backend hangs where the script cancels

    def __aiter__(self) -> ScriptedIterator:
        return self

    async def __anext__(self) -> str:
        script, index = self.script, self.index
        if script.cancel_at == index:
            self.holding.set()
        if script.cancel_at == index or script.hang_at == index:
            await asyncio.sleep(FOREVER)
        if script.fail_at == index:
            raise Boom(f"failed at {index}")
        if index >= len(script.gaps):
            raise StopAsyncIteration
        await asyncio.sleep(script.gaps[index])
        self.index += 1
        return f"item-{index}"

    async def aclose(self) -> None:
        return None


def backend(script: Script, holding: asyncio.Event) -> Any:
    if script.response == "iterator":
        return ScriptedIterator(script, holding)

    async def answer() -> Any:
        await asyncio.sleep(0)
        if script.response == "coroutine_raises":
            raise Boom("no answer")
        if script.response == "coroutine_value":
            return "value"
        return ScriptedIterator(script, holding)

    return answer()


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """Small scripts: at most one of fail, hang and cancel, each at an item index."""
    count = draw(st.integers(0, 5))
    response = draw(
        st.sampled_from(["iterator", "coroutine_iterator", "coroutine_value", "coroutine_raises"])
    )
    ending = draw(st.sampled_from(["end", "fail", "hang", "cancel"]))
    iterates = response in ("iterator", "coroutine_iterator")
    at = draw(st.integers(0, count)) if iterates and ending != "end" else None
    return Script(
        response=response,
        gaps=tuple(
            draw(st.lists(st.sampled_from([0.0, 0.001, 0.002]), min_size=count, max_size=count))
        ),
        fail_at=at if ending == "fail" else None,
        hang_at=at if ending == "hang" else None,
        cancel_at=at if ending == "cancel" else None,
        chunk_timeout=TIMEOUT if ending == "hang" else draw(st.sampled_from([None, 5.0])),
    )


def mellea_target(queue: asyncio.Queue[Any]) -> Any:
    """What the installed mellea's send_to_queue takes: the queue (0.7) or a thunk (0.8)."""
    from mellea.core import ModelOutputThunk
    from mellea.helpers import async_helpers

    original = inspect.unwrap(async_helpers.send_to_queue)
    if "mot" not in inspect.signature(original).parameters:
        return queue
    mot = ModelOutputThunk(None)
    mot._gen.queue = queue
    return mot


async def through_core(script: Script, queue: asyncio.Queue[Any], holding: asyncio.Event) -> None:
    co = backend(script, holding)
    await send_to_queue(co, queue, chunk_timeout=script.chunk_timeout, name=NAME)


async def through_mellea(script: Script, queue: asyncio.Queue[Any], holding: asyncio.Event) -> None:
    from mellea.helpers import async_helpers

    from thunkscope.instrumentation._stream import observe_send_to_queue

    original = inspect.unwrap(async_helpers.send_to_queue)
    await observe_send_to_queue(
        original,
        (backend(script, holding), mellea_target(queue)),
        {"chunk_timeout": script.chunk_timeout},
        NAME,
        None,
    )


async def run(script: Script, loop: Any) -> list[Any]:
    """Run one loop over the script; what the consumer got."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    holding = asyncio.Event()
    producer = asyncio.create_task(loop(script, queue, holding))
    received: list[Any] = []
    while True:
        if script.cancel_at is not None and len(received) == script.cancel_at:
            await holding.wait()
            producer.cancel()
            break
        item = await queue.get()
        received.append(type(item).__name__ if isinstance(item, BaseException) else item)
        if item is None or isinstance(item, BaseException):
            break
    await asyncio.gather(producer, return_exceptions=True)
    return received


def recorded(telemetry: Telemetry, logs: list[dict[str, Any]]) -> dict[str, Any]:
    """The telemetry of one stream, less what is measured and what only mellea knows."""
    (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
    attributes = dict(span.attributes or {})
    series = {}
    for metric in names.METRICS:
        for point in telemetry.points(metric.name):
            key = (metric.name, tuple(sorted(dict(point.attributes).items())))
            series[key] = getattr(point, "count", None)
    return {
        "status": (span.status.status_code.name, span.status.description),
        "attributes": {
            k: v for k, v in attributes.items() if k.startswith("thunkscope.") and k not in MEASURED
        }
        | {"measured": sorted(MEASURED & attributes.keys())},
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "series": series,
        "logs": [
            (e["event"], e["log_level"], e.get("items"), e.get("error_type"))
            for e in logs
            if e["event"].startswith("stream.")
        ],
    }


def record_of(script: Script, loop: Any) -> tuple[list[Any], dict[str, Any]]:
    with in_memory_telemetry() as telemetry, structlog.testing.capture_logs() as logs:
        with testing.virtual_time() as virtual:  # gaps, hangs and timeouts in no real time
            received = virtual.run_until_complete(run(script, loop))
        assert _inflight.registered() == 0
        return received, recorded(telemetry, logs)


class TestBothLoops:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(script=scripts())
    def test_same_telemetry(self, script: Script) -> None:
        """The same script gives the same queue and the same telemetry through both loops."""
        saved = _telemetry.telemetry.settings.stall_after
        _telemetry.telemetry.settings.stall_after = None  # stalls are timing, tested elsewhere
        try:
            core_received, core = record_of(script, through_core)
            mellea_received, mellea = record_of(script, through_mellea)
        finally:
            _telemetry.telemetry.settings.stall_after = saved
        event(f"outcome {core['attributes'][names.STREAM_OUTCOME]}")
        # mellea words its own timeout; the consumer still sees a TimeoutError from both.
        assert mellea_received == core_received
        assert mellea["status"][0] == core["status"][0]
        if core["attributes"][names.STREAM_OUTCOME] != names.OUTCOME_TIMEOUT:
            assert mellea["status"] == core["status"]
        else:
            assert (
                core["status"][1]
                == mellea["status"][1]
                == (f"no item from the backend within chunk_timeout={TIMEOUT:g}s")
            )
        assert mellea["attributes"] == core["attributes"]
        assert mellea["events"] == core["events"]
        assert mellea["series"] == core["series"]
        assert mellea["logs"] == core["logs"]
