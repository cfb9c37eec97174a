"""No content leaks into telemetry by default; capturing exception messages is opt-in and cut short.

The end-to-end tests run a workload in a fresh interpreter with ``configure()`` exporting
to a real collector (rotel), with a secret in every stream item, single response, thunk
value, cache key and value, and exception message, then search everything rotel
received: its whole debug output, not just the parsed records.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import Telemetry
from support.collectors import RotelCollector
from support.fakes import Thunk
from support.faulty import run_python
from thunkscope import _telemetry, names, send_to_queue, wait_for_all_mots

SECRET = "HUSH7x9q"

WORKLOAD = r"""
import asyncio, gc, json, os
import thunkscope
from thunkscope import ClientCache, get_current_event_loop, send_to_queue, wait_for_all_mots

S = os.environ["SECRET"]
HANG = 0.5  # a stall standing in for a hang: 10x the chunk_timeout below

class SecretError(Exception):
    pass

async def items():
    for i in range(3):
        yield f"{S}-item-{i}"

async def fails_midway():
    yield f"{S}-item-before-error"
    raise SecretError(f"{S}-exception-message " + "x" * 400 + f"{S}-tail")

async def single():
    return f"{S}-single-response"

async def stalls():
    yield f"{S}-item-then-stall"
    await asyncio.sleep(HANG)

class Thunk:
    def __init__(self, value):
        self.value = value
    async def avalue(self):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value

def on_evict(value):
    raise SecretError(f"{S}-on-evict-message")

def on_timeout():
    raise SecretError(f"{S}-on-timeout-message")

async def main():
    for co in (items(), fails_midway(), single(), f"{S}-plain-value"):
        await send_to_queue(co, asyncio.Queue(), name="privacy")
    await send_to_queue(
        stalls(), asyncio.Queue(), name="privacy", chunk_timeout=0.05, on_timeout=on_timeout
    )
    await wait_for_all_mots([Thunk(f"{S}-thunk-value")])
    try:
        await wait_for_all_mots([Thunk(SecretError(f"{S}-thunk-exception"))])
    except SecretError:
        pass
    cache = ClientCache(1, name="privacy", on_evict=on_evict)
    cache.get(f"{S}-cache-key-1")
    cache.put(f"{S}-cache-key-1", f"{S}-cache-value-1")
    cache.get(f"{S}-cache-key-1")
    cache.put(f"{S}-cache-key-2", f"{S}-cache-value-2")  # evicts key 1
    cache.put(id(asyncio.get_running_loop()), f"{S}-loop-client")
    get_current_event_loop()
    return cache

handle = thunkscope.configure(
    service_name="privacy",
    endpoint=os.environ["ENDPOINT"],
    log_level="debug",  # every event, debug ones included, is exported
    **json.loads(os.environ.get("CONFIGURE", "{}")),
)
cache = asyncio.run(main())
gc.collect()
cache.get(12345)  # the first loop is gone: its entry is evicted as stale
handle.shutdown()
print(json.dumps({"ok": True}))
"""

SPANS_PER_RUN = 5 + 2 + 5 + 1 + 1  # streams, gathers, cache calls, loop lookup, last get


def run_workload(rotel: RotelCollector, **configure: Any) -> str:
    """Run the secret-laden workload against `rotel`; return everything rotel printed."""
    run_python(
        WORKLOAD,
        env={
            "ENDPOINT": rotel.http_endpoint,
            "SECRET": SECRET,
            "CONFIGURE": json.dumps(configure),
        },
    )
    rotel.wait_for_spans(SPANS_PER_RUN)
    rotel.wait_for_point("thunkscope.stream.duration")
    return settled_output(rotel)


def settled_output(rotel: RotelCollector, quiet_s: float = 0.3, limit_s: float = 5.0) -> str:
    """rotel's output once it stopped growing for `quiet_s` seconds."""
    deadline = time.monotonic() + limit_s
    last = rotel.output()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = rotel.output()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    return last


@pytest.mark.slow
class TestNothingLeaksByDefault:
    def test_no_secret_reaches_the_collector(self, rotel: RotelCollector) -> None:
        """Items, responses, thunk values, cache keys and values, exception texts: none exported."""
        output = run_workload(rotel)
        assert SECRET not in output
        # ...and the search was not vacuous: every signal of every helper arrived.
        assert {s["name"] for s in rotel.spans()} == {
            names.SPAN_SEND_TO_QUEUE,
            names.SPAN_WAIT_FOR_ALL_MOTS,
            names.SPAN_CACHE_GET,
            names.SPAN_CACHE_PUT,
            names.SPAN_GET_CURRENT_EVENT_LOOP,
        }
        bodies = {r["body"] for r in rotel.logs()}
        assert {"stream.error_forwarded", "gather.failed", "cache.hit", "cache.evicted"} <= bodies
        assert rotel.points("thunkscope.cache.lookups")

    def test_error_type_always_exported(self, rotel: RotelCollector) -> None:
        """The exception's type reaches spans, metrics and logs even with content off."""
        run_workload(rotel)
        error_types = {
            (s["name"], s["attributes"].get(names.ERROR_TYPE))
            for s in rotel.spans()
            if names.ERROR_TYPE in s["attributes"]
        }
        assert error_types == {
            (names.SPAN_SEND_TO_QUEUE, "SecretError"),
            (names.SPAN_SEND_TO_QUEUE, "TimeoutError"),
            (names.SPAN_WAIT_FOR_ALL_MOTS, "SecretError"),
        }
        assert rotel.points("thunkscope.stream.duration", {names.ERROR_TYPE: "SecretError"})
        assert rotel.points("thunkscope.gather.duration", {names.ERROR_TYPE: "SecretError"})
        logged = {(r["body"], r["attributes"].get("error_type")) for r in rotel.logs()}
        assert ("stream.error_forwarded", "SecretError") in logged
        assert ("gather.failed", "SecretError") in logged


@pytest.mark.slow
class TestCaptureIsOptIn:
    def test_configure_flag_captures_exception_messages_cut_short(
        self, rotel: RotelCollector
    ) -> None:
        """capture_content=True exports exception messages, cut to content_limit; nothing else."""
        output = run_workload(rotel, capture_content=True, content_limit=40)
        leaked = {line.strip() for line in output.splitlines() if SECRET in line}
        assert leaked  # the messages are there...
        assert all("exception" in line or "error_message" in line for line in leaked), leaked
        for absent in ("item", "single-response", "plain-value", "thunk-value", "cache-"):
            assert f"{SECRET}-{absent}" not in output
        assert f"{SECRET}-tail" not in output  # ...cut at 40 characters
        forwarded = [
            e["attributes"][_telemetry.EXCEPTION_MESSAGE]
            for s in rotel.spans_named(names.SPAN_SEND_TO_QUEUE)
            for e in s["events"]
            if e["name"] == names.EVENT_ERROR_FORWARDED
        ]
        assert forwarded == [
            f"{SECRET}-exception-message ".ljust(40, "x") + _telemetry.TRUNCATED_MARK
        ]
        (failed,) = [r for r in rotel.logs() if r["body"] == "gather.failed"]
        assert failed["attributes"][_telemetry.LOG_ERROR_MESSAGE] == f"{SECRET}-thunk-exception"


async def fail_after(item: Any, error: Exception) -> AsyncIterator[Any]:
    yield item
    raise error


class TestCaptureSettings:
    def test_off_by_default(self) -> None:
        """Without the variable or configure(), nothing is captured."""
        assert _telemetry.Settings().capture_content is False
        assert _telemetry.captured(ValueError("prompt text")) is None

    def test_environment_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """THUNKSCOPE_CAPTURE_CONTENT and THUNKSCOPE_CONTENT_LIMIT switch capture on and size it."""
        monkeypatch.setenv("THUNKSCOPE_CAPTURE_CONTENT", "true")
        monkeypatch.setenv("THUNKSCOPE_CONTENT_LIMIT", "5")
        settings = _telemetry.Settings.from_env()
        assert (settings.capture_content, settings.content_limit) == (True, 5)

    def test_bad_content_limit_variable_is_ignored(
        self, monkeypatch: pytest.MonkeyPatch, stdlib_records: pytest.LogCaptureFixture
    ) -> None:
        """A content limit that is not a positive integer keeps the default, with a warning."""
        monkeypatch.setenv("THUNKSCOPE_CONTENT_LIMIT", "-3")
        assert _telemetry.Settings.from_env().content_limit == _telemetry.DEFAULT_CONTENT_LIMIT
        assert any("THUNKSCOPE_CONTENT_LIMIT" in r.getMessage() for r in stdlib_records.records)

    def test_truncation(self) -> None:
        """Captured text longer than the limit is cut there and marked."""
        _telemetry.telemetry.settings.capture_content = True
        _telemetry.telemetry.settings.content_limit = 4
        assert _telemetry.captured("abcdefgh") == "abcd" + _telemetry.TRUNCATED_MARK
        assert _telemetry.captured("abcd") == "abcd"

    async def test_stream_and_gather_messages_when_on(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """With capture on, a forwarded error's and a gather's message reach span and log."""
        _telemetry.telemetry.settings.capture_content = True
        await send_to_queue(fail_after("item", KeyError("why")), asyncio.Queue(), name="c")
        with pytest.raises(ValueError, match="thunk text"):
            await wait_for_all_mots([Thunk(ValueError("thunk text"))])
        (stream,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        (event,) = [e for e in stream.events if e.name == names.EVENT_ERROR_FORWARDED]
        assert dict(event.attributes or {}) == {
            names.ERROR_TYPE: "KeyError",
            _telemetry.EXCEPTION_MESSAGE: "'why'",
        }
        (gather,) = telemetry.spans(names.SPAN_WAIT_FOR_ALL_MOTS)
        (exception,) = gather.events
        assert dict(exception.attributes or {}) == {
            "exception.type": "ValueError",
            _telemetry.EXCEPTION_MESSAGE: "thunk text",
        }
        messages = {e["event"]: e.get("error_message") for e in log_events}
        assert messages["stream.error_forwarded"] == "'why'"
        assert messages["gather.failed"] == "thunk text"

    async def test_nothing_when_off(
        self, telemetry: Telemetry, log_events: list[dict[str, Any]]
    ) -> None:
        """With capture off, spans and events carry the error type and no message."""
        await send_to_queue(fail_after("item", KeyError("why")), asyncio.Queue(), name="c")
        with pytest.raises(ValueError, match="thunk text"):
            await wait_for_all_mots([Thunk(ValueError("thunk text"))])
        (stream,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        (event,) = [e for e in stream.events if e.name == names.EVENT_ERROR_FORWARDED]
        assert dict(event.attributes or {}) == {names.ERROR_TYPE: "KeyError"}
        (gather,) = telemetry.spans(names.SPAN_WAIT_FOR_ALL_MOTS)
        assert gather.events == ()
        assert all("error_message" not in e for e in log_events)
        assert "why" not in repr(log_events)
        assert "thunk text" not in repr(log_events)
