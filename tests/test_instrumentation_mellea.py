"""Tests of `thunkscope.instrumentation.MelleaInstrumentor` against the real mellea package.

Run them in a mellea environment (``.venv-mellea08`` for mellea 0.8.0, ``.venv-mellea07``
for 0.7.0, ``.venv-mellea06`` for 0.6.0, where tests marked ``mellea07plus`` do not
apply); in the main environment, which has no mellea, only the import and
"mellea is missing" tests run and the rest are skipped. A real mellea session on its
OpenAI backend streams from the loopback server of `support.fake_openai`.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from conftest import BrokenMeterProvider, events_of, in_memory_providers
from support.fake_openai import FakeOpenAI
from support.fakes import HANG
from thunkscope import _telemetry, names
from thunkscope.instrumentation import MelleaInstrumentor
from thunkscope.instrumentation import _ids as ids
from thunkscope.instrumentation._mellea import INSTALL_HINT

HAVE_MELLEA = importlib.util.find_spec("mellea") is not None
needs_mellea = pytest.mark.mellea  # CI runs these in the mellea environments
# not in .venv-mellea06: 0.6 has no chunk_timeout, and no current session span
needs_07plus = pytest.mark.mellea07plus

HELPER_NAMES = ("send_to_queue", "wait_for_all_mots", "get_current_event_loop")
CACHE_METHODS = ("get", "put", "get_or_create", "_put_locked")
STREAM_TIMEOUT = 0.05  # mellea's ModelOption.STREAM_TIMEOUT where a stall must time out
MELLEA_TIMEOUT_MESSAGE = (
    f"Stream timed out after {STREAM_TIMEOUT}s without a chunk (covers time-to-first-token and "
    "inter-chunk gaps). Set ModelOption.STREAM_TIMEOUT to a larger value or None to disable."
)


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def mellea() -> Any:
    """The mellea package (the test is skipped where it is not installed)."""
    return pytest.importorskip("mellea")


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A loopback OpenAI-compatible server with the default four chunks."""
    with FakeOpenAI() as server:
        yield server


def _check_mode(instrumentor: MelleaInstrumentor) -> None:
    """The instrumentor serves in the mode THUNKSCOPE_MELLEA_FAST_PATH asks for, if it is set.

    scripts/test.sh runs this file a second time with the fast path on (=1): every test
    here must then see the same results with thunkscope's loop serving mellea's streams."""
    asked = os.environ.get("THUNKSCOPE_MELLEA_FAST_PATH")
    if asked in ("0", "1"):
        assert instrumentor.fast_path_active is (asked == "1")


@pytest.fixture
def instrumented(mellea: Any, telemetry: Any) -> Iterator[MelleaInstrumentor]:
    """mellea instrumented for one test, its telemetry in the in-memory providers."""
    instrumentor = MelleaInstrumentor()
    instrumentor.instrument()
    _check_mode(instrumentor)
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def session(instrumented: MelleaInstrumentor, fake_openai: FakeOpenAI) -> Iterator[Any]:
    """An instrumented mellea session on the OpenAI backend, closed cleanly afterwards."""
    from support.mellea_session import openai_session

    with openai_session(fake_openai.base_url) as mellea_session:
        yield mellea_session


@pytest.fixture
def merged_logs() -> Iterator[list[dict[str, Any]]]:
    """thunkscope's structlog events, through a configuration that merges contextvars."""
    captured = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, captured])
    try:
        yield captured.entries
    finally:
        structlog.reset_defaults()


def _is_08() -> bool:
    from mellea.helpers import async_helpers

    original = inspect.unwrap(async_helpers.send_to_queue)
    return "mot" in inspect.signature(original).parameters


def _options(**extra: Any) -> dict[Any, Any]:
    from mellea.backends import ModelOption

    # Looked up only when asked for: mellea 0.6 has no STREAM_TIMEOUT.
    options = {"stream": "STREAM", "timeout": "STREAM_TIMEOUT"}
    return {
        ModelOption.STREAM: True,
        **{getattr(ModelOption, options[k]): v for k, v in extra.items()},
    }


def _has_chunk_timeout() -> bool:
    from mellea.helpers import async_helpers

    original = inspect.unwrap(async_helpers.send_to_queue)
    return "chunk_timeout" in inspect.signature(original).parameters


def _timeout(chunk_timeout: float | None) -> dict[str, Any]:
    """`chunk_timeout=` where the release has it (0.7 on); mellea 0.6's call takes none.

    Tests whose outcome depends on the timeout are marked ``mellea07plus`` instead."""
    return {"chunk_timeout": chunk_timeout} if _has_chunk_timeout() else {}


def _wait_spans(telemetry: Any, name: str, count: int = 1) -> list[ReadableSpan]:
    """The finished spans called `name`, once there are `count` (spans end on mellea's loop)."""
    deadline = time.monotonic() + 5.0
    while True:
        spans: list[ReadableSpan] = telemetry.spans(name)
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def _stream_attributes(span: ReadableSpan, **expected: Any) -> dict[str, Any]:
    """The attributes a mellea stream span must have: fixed ones given, measured ones taken."""
    attributes = dict(span.attributes or {})
    whole = {
        names.STREAM_NAME: "mellea.openai",
        names.STREAM_ID: attributes.get(names.STREAM_ID),
        ids.REQUEST_ID: attributes.get(ids.REQUEST_ID),
        ids.MODEL: "fake-model",
        names.STREAM_MAX_ITEM_GAP: attributes.get(names.STREAM_MAX_ITEM_GAP),
        names.STREAM_PUT_WAIT: 0.0,
        names.STREAM_STALL_COUNT: 0,
        **expected,
    }
    if _is_08():
        whole[ids.GENERATION_ID] = attributes.get(ids.GENERATION_ID)
    if names.STREAM_TIME_TO_FIRST_ITEM in attributes:
        whole[names.STREAM_TIME_TO_FIRST_ITEM] = attributes[names.STREAM_TIME_TO_FIRST_ITEM]
    return whole


def _attr(span: ReadableSpan, key: str) -> Any:
    return dict(span.attributes or {})[key]


def _point_value(telemetry: Any, name: str, **attributes: Any) -> Any:
    for point in telemetry.points(name):
        if dict(point.attributes) == attributes:
            return point
    return None


def _sum(telemetry: Any, name: str, **attributes: Any) -> int:
    point = _point_value(telemetry, name, **attributes)
    return 0 if point is None else int(point.value)


def _mellea_modules() -> dict[tuple[str, str], Any]:
    """Every binding of the helpers held by a loaded mellea module, as it is now."""
    found: dict[tuple[str, str], Any] = {}
    for module_name, module in sys.modules.copy().items():
        if module is None or not (module_name == "mellea" or module_name.startswith("mellea.")):
            continue
        for attribute in HELPER_NAMES:
            value = getattr(module, "__dict__", {}).get(attribute)
            if value is not None:
                found[(module_name, attribute)] = value
    return found


def _cache_class_dict() -> dict[str, Any]:
    from mellea.helpers.async_helpers import ClientCache

    return {name: vars(ClientCache).get(name) for name in CACHE_METHODS}


# --- without mellea ---------------------------------------------------------------------------


class TestImport:
    """Importing thunkscope, or its instrumentation package, never imports mellea."""

    @pytest.mark.mellea  # only meaningful where mellea could be imported
    def test_no_mellea_on_import(self) -> None:
        """A fresh interpreter importing both, with mellea installed, loads no mellea module."""
        code = (
            "import sys, thunkscope, thunkscope.instrumentation; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mellea'))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert result.stdout.strip() == "[]"

    def test_dependencies_name_the_supported_releases(self) -> None:
        """The instrumentor declares the mellea releases it supports."""
        assert MelleaInstrumentor().instrumentation_dependencies() == ("mellea >= 0.6.0, < 0.9",)


class TestWithoutMellea:
    """instrument() without mellea says what to install."""

    def test_missing_mellea_names_the_install_command(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With mellea not importable, instrument() raises ModuleNotFoundError with the fix."""
        real_find_spec = importlib.util.find_spec

        def find_spec(name: str, package: str | None = None) -> Any:
            return None if name == "mellea" else real_find_spec(name, package)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        with pytest.raises(ModuleNotFoundError) as info:
            MelleaInstrumentor().instrument()
        assert str(info.value) == INSTALL_HINT
        assert "pip install 'thunkscope[instruments]'" in str(info.value)
        assert str(info.value).endswith(" (mellea >= 0.6.0, < 0.9)")  # package._instruments
        assert info.value.name == "mellea"
        assert not MelleaInstrumentor().is_instrumented_by_opentelemetry

    @pytest.mark.without_mellea
    def test_missing_mellea_for_real(self) -> None:
        """In an environment without mellea the same error comes from the real lookup."""
        with pytest.raises(ModuleNotFoundError, match=r"thunkscope\[instruments\]"):
            MelleaInstrumentor().instrument()


# --- bindings -------------------------------------------------------------------------------


@needs_mellea
class TestBindings:
    """Every module that holds a helper gets a wrapper; uninstrument() puts the originals back."""

    def test_every_holder_is_wrapped(self, mellea: Any, telemetry: Any) -> None:
        """Each loaded mellea module's helper binding becomes a wrapper of the same original."""
        import mellea.backends.openai  # noqa: F401 - a backend module that binds the helpers

        before = _mellea_modules()
        cache_before = _cache_class_dict()
        instrumentor = MelleaInstrumentor()
        instrumentor.instrument()
        try:
            after = _mellea_modules()
            assert after.keys() == before.keys()
            for key, original in before.items():
                assert after[key] is not original, key
                assert after[key].__wrapped__ is original, key
            holders = {module for module, _ in before}
            assert {
                "mellea.helpers.async_helpers",
                "mellea.helpers",
                "mellea.helpers.event_loop_helper",
                "mellea.backends.openai",
            } <= holders
            from mellea.helpers.async_helpers import ClientCache

            present = {name: original for name, original in cache_before.items() if original}
            assert {"get", "put"} <= present.keys()
            for name, original in present.items():
                assert vars(ClientCache)[name] is not original, name
                assert vars(ClientCache)[name].__wrapped__ is original, name
        finally:
            instrumentor.uninstrument()

    def test_uninstrument_restores_every_object(self, mellea: Any, telemetry: Any) -> None:
        """After uninstrument() every binding and ClientCache method is the original object."""
        import mellea.backends.openai  # noqa: F401

        before = _mellea_modules()
        cache_before = _cache_class_dict()
        instrumentor = MelleaInstrumentor()
        instrumentor.instrument()
        instrumentor.uninstrument()
        after = _mellea_modules()
        assert after.keys() == before.keys()
        assert all(after[key] is value for key, value in before.items())
        assert all(_cache_class_dict()[k] is v for k, v in cache_before.items())

    def test_backend_imported_later_is_wrapped(self, mellea: Any) -> None:
        """A backend module imported after instrument() holds its own wrapper, named after it,
        and uninstrument() gives it mellea's original functions back."""
        code = textwrap.dedent(
            f"""
            import json, sys
            from thunkscope.instrumentation import MelleaInstrumentor
            instrumentor = MelleaInstrumentor()
            instrumentor.instrument()
            import mellea.helpers
            from mellea.helpers import async_helpers
            later = [m for m in ("mellea.backends.openai", "mellea.backends.ollama")]
            loaded_before = [m for m in later if m in sys.modules]
            import mellea.backends.openai, mellea.backends.ollama
            out = {{"loaded_before": loaded_before}}
            for name in later:
                bound = sys.modules[name].send_to_queue
                out[name] = {{
                    "wraps_original": bound.__wrapped__ is async_helpers.send_to_queue.__wrapped__,
                    "own_wrapper": bound is not mellea.helpers.send_to_queue,
                }}
            originals = {{
                attribute: getattr(async_helpers, attribute).__wrapped__
                for attribute in {HELPER_NAMES!r}
            }}
            instrumentor.uninstrument()
            out["after_uninstrument"] = {{
                name + "." + attribute: vars(sys.modules[name])[attribute] is original
                for name in later
                for attribute, original in originals.items()
                if attribute in vars(sys.modules[name])
            }}
            print(json.dumps(out))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
        )
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert "mellea.backends.openai" not in out["loaded_before"]
        for name in ("mellea.backends.openai", "mellea.backends.ollama"):
            assert out[name] == {"wraps_original": True, "own_wrapper": True}, name
        restored = out["after_uninstrument"]
        assert restored.keys() >= {
            "mellea.backends.openai.send_to_queue",
            "mellea.backends.ollama.send_to_queue",
        }
        assert all(restored.values()), restored
        assert result.stderr == ""

    def test_backend_imported_before_is_patched_once(self, mellea: Any) -> None:
        """A backend imported before instrument() gets one wrapper (the post-import hook runs
        at once for it too), and uninstrument() restores it silently, cycle after cycle."""
        code = textwrap.dedent(
            f"""
            import json, sys
            import mellea.backends.openai  # an app that imported its backend first
            from thunkscope.instrumentation import MelleaInstrumentor

            def bindings():
                found = {{}}
                for name, module in sys.modules.copy().items():
                    if module is None or name.split(".")[0] != "mellea":
                        continue
                    for attribute in {HELPER_NAMES!r}:
                        value = vars(module).get(attribute)
                        if value is not None:
                            found[name + "." + attribute] = value
                return found

            before = bindings()
            out = {{"restored": [], "single_wrappers": []}}
            for _ in range(2):
                instrumentor = MelleaInstrumentor()
                instrumentor.instrument()
                during = bindings()
                out["single_wrappers"].append(sorted(
                    key for key, value in during.items()
                    if value is not before[key] and value.__wrapped__ is before[key]
                ))
                instrumentor.uninstrument()
                after = bindings()
                out["restored"].append(
                    after.keys() == before.keys()
                    and all(after[key] is before[key] for key in before)
                )
            out["holders"] = sorted(before)
            print(json.dumps(out))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
        )
        assert "replaced after instrumentation" not in result.stderr
        assert result.stderr == ""
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert "mellea.backends.openai.send_to_queue" in out["holders"]
        assert out["restored"] == [True, True]
        assert out["single_wrappers"] == [out["holders"], out["holders"]]


# --- streams through a real session -----------------------------------------------------------


@needs_mellea
class TestStreams:
    """Streams of a real mellea session on its OpenAI backend."""

    def test_normal_stream(self, session: Any, telemetry: Any, merged_logs: list[Any]) -> None:
        """A streamed reply is one PRODUCER span with mellea's ids, metrics and a completed log."""
        reply = session.chat("say hello", model_options=_options())
        assert reply.content == "Hello, world!"
        (span,) = _wait_spans(telemetry, names.SPAN_SEND_TO_QUEUE)
        assert span.kind == SpanKind.PRODUCER
        assert span.status.status_code == StatusCode.UNSET
        # four content chunks, the stop chunk and the usage chunk
        assert dict(span.attributes or {}) == _stream_attributes(
            span,
            **{
                names.STREAM_ITEMS: 6,
                names.STREAM_OUTCOME: "completed",
                names.STREAM_MODE: "iterator",
            },
        )
        attributes = dict(span.attributes or {})
        assert len(attributes[ids.REQUEST_ID]) == 32
        assert attributes[names.STREAM_TIME_TO_FIRST_ITEM] > 0
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_SENTINEL,
        ]
        assert events_of(span)[-1] == (names.EVENT_SENTINEL, {names.STREAM_ITEMS: 6})

        label = {names.STREAM_NAME: "mellea.openai"}
        duration = _point_value(
            telemetry, names.STREAM_DURATION.name, **label, **{names.STREAM_OUTCOME: "completed"}
        )
        assert duration is not None
        assert duration.count == 1
        items = _point_value(telemetry, names.STREAM_ITEM_COUNT.name, **label)
        assert (items.count, items.sum) == (1, 6)

        (done,) = [e for e in merged_logs if e["event"] == names.LOG_STREAM_COMPLETED]
        context = span.get_span_context()
        assert done["log_level"] == "info"
        assert done["stream_id"] == attributes[names.STREAM_ID]
        assert done["stream"] == "mellea.openai"
        assert done["items"] == 6
        assert done["trace_id"] == f"{context.trace_id:032x}"
        assert done["span_id"] == f"{context.span_id:016x}"
        assert done["mellea_request_id"] == attributes[ids.REQUEST_ID]
        assert done["model"] == "fake-model"
        (started,) = [e for e in merged_logs if e["event"] == names.LOG_STREAM_STARTED]
        assert started["mellea_request_id"] == attributes[ids.REQUEST_ID]
        if _is_08():
            assert started["mellea_generation_id"] == attributes[ids.GENERATION_ID]

    def test_stall_warning(self, session: Any, telemetry: Any, merged_logs: list[Any]) -> None:
        """A mid-stream pause longer than stall_after warns and resumes; the stream completes."""
        _telemetry.telemetry.settings.stall_after = 0.1
        reply = session.chat("hello [stall:0.35]", model_options=_options())
        assert reply.content == "Hello, world!"
        (span,) = _wait_spans(telemetry, names.SPAN_SEND_TO_QUEUE)
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_STALLED,
            names.EVENT_RESUMED,
            names.EVENT_SENTINEL,
        ]
        stalled = dict(events_of(span)[1][1])
        assert stalled[names.STREAM_ITEMS] == 1
        assert stalled["thunkscope.stream.gap"] >= 0.1
        resumed = dict(events_of(span)[2][1])
        assert resumed["thunkscope.stream.gap"] >= 0.3
        assert dict(span.attributes or {})[names.STREAM_OUTCOME] == "completed"
        assert dict(span.attributes or {})[names.STREAM_MAX_ITEM_GAP] >= 0.3
        assert dict(span.attributes or {})[names.STREAM_STALL_COUNT] == 1
        assert (
            _sum(telemetry, names.STREAM_STALLS.name, **{names.STREAM_NAME: "mellea.openai"}) == 1
        )
        (warning,) = [e for e in merged_logs if e["event"] == names.LOG_STREAM_STALLED]
        assert warning["log_level"] == "warning"
        assert warning["stream"] == "mellea.openai"
        assert warning["items"] == 1
        assert warning["mellea_request_id"] == dict(span.attributes or {})[ids.REQUEST_ID]

    @needs_07plus
    def test_mellea_stream_timeout(
        self, session: Any, telemetry: Any, merged_logs: list[Any]
    ) -> None:
        """mellea's own STREAM_TIMEOUT fires as without thunkscope, and is recorded as timeout."""
        with pytest.raises(TimeoutError) as info:
            session.chat(f"hello [stall:{HANG}]", model_options=_options(timeout=STREAM_TIMEOUT))
        assert str(info.value) == MELLEA_TIMEOUT_MESSAGE
        (span,) = _wait_spans(telemetry, names.SPAN_SEND_TO_QUEUE)
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == (
            f"no item from the backend within chunk_timeout={STREAM_TIMEOUT}s"
        )
        assert dict(span.attributes or {}) == _stream_attributes(
            span,
            **{
                names.STREAM_ITEMS: 1,
                names.STREAM_OUTCOME: "timeout",
                names.STREAM_MODE: "iterator",
                names.ERROR_TYPE: "TimeoutError",
            },
        )
        assert events_of(span) == [
            (names.EVENT_FIRST_ITEM, {}),
            (names.EVENT_TIMEOUT, {"thunkscope.stream.chunk_timeout": STREAM_TIMEOUT}),
        ]
        labels = {
            names.STREAM_NAME: "mellea.openai",
            names.STREAM_OUTCOME: "timeout",
            names.ERROR_TYPE: "TimeoutError",
        }
        assert _point_value(telemetry, names.STREAM_DURATION.name, **labels).count == 1
        (timed_out,) = [e for e in merged_logs if e["event"] == names.LOG_STREAM_TIMED_OUT]
        assert timed_out["log_level"] == "error"
        assert timed_out["error_type"] == "TimeoutError"

    def test_server_error_is_forwarded(self, session: Any, telemetry: Any) -> None:
        """An HTTP 500 is mellea's forwarded error: outcome error, with the exception's type."""
        import openai

        with pytest.raises(openai.InternalServerError):
            session.chat("hello [fail:500]", model_options=_options())
        (span,) = _wait_spans(telemetry, names.SPAN_SEND_TO_QUEUE)
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "backend raised InternalServerError"
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_OUTCOME] == "error"
        assert attributes[names.ERROR_TYPE] == "InternalServerError"
        assert attributes[names.STREAM_ITEMS] == 0
        assert names.STREAM_MODE not in attributes
        assert events_of(span) == [
            (names.EVENT_ERROR_FORWARDED, {names.ERROR_TYPE: "InternalServerError"})
        ]

    def test_broken_stream_is_forwarded(self, session: Any, telemetry: Any) -> None:
        """A stream cut mid-body is an error after the items that got through."""
        import openai

        with pytest.raises(openai.APIConnectionError):
            session.chat("hello [fail-midstream@2]", model_options=_options())
        (span,) = _wait_spans(telemetry, names.SPAN_SEND_TO_QUEUE)
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_OUTCOME] == "error"
        assert attributes[names.STREAM_ITEMS] == 2
        assert attributes[names.STREAM_MODE] == "iterator"
        assert [name for name, _ in events_of(span)] == [
            names.EVENT_FIRST_ITEM,
            names.EVENT_ERROR_FORWARDED,
        ]

    def test_parent_is_the_callers_span(self, session: Any, telemetry: Any) -> None:
        """The producer span is a child of the span active where the application called mellea."""
        tracer = telemetry.tracer_provider.get_tracer("app")
        with tracer.start_as_current_span("app.request") as parent:
            session.chat("hello", model_options=_options())
        (span,) = _wait_spans(telemetry, names.SPAN_SEND_TO_QUEUE)
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id

    def test_explicit_providers(self, mellea: Any, fake_openai: FakeOpenAI) -> None:
        """tracer_provider and meter_provider arguments receive the telemetry."""
        from support.mellea_session import openai_session

        with in_memory_providers() as (exporter, tracer_provider, reader, meter_provider):
            instrumentor = MelleaInstrumentor()
            instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
            _check_mode(instrumentor)
            try:
                with openai_session(fake_openai.base_url) as mellea_session:
                    mellea_session.chat("hello", model_options=_options())
            finally:
                instrumentor.uninstrument()
        finished = {span.name for span in exporter.get_finished_spans()}
        assert names.SPAN_SEND_TO_QUEUE in finished
        # mellea 0.8 looks its client up with get_or_create, 0.7 with get.
        assert (names.SPAN_CACHE_GET_OR_CREATE if _is_08() else names.SPAN_CACHE_GET) in finished
        metrics = reader.get_metrics_data()
        assert metrics is not None
        collected = {
            metric.name
            for resource in metrics.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        assert names.STREAM_DURATION.name in collected
        assert _telemetry.telemetry.own_providers is False  # uninstrument() let them go

    def test_inflight_shows_a_stalled_mellea_stream(self, session: Any, telemetry: Any) -> None:
        """While mellea's stream stalls, thunkscope.inflight() shows it, named after the backend."""
        import threading

        import thunkscope

        _telemetry.telemetry.settings.stall_after = 0.05
        replies: list[Any] = []
        worker = threading.Thread(
            target=lambda: replies.append(
                session.chat("hello [stall:0.4]", model_options=_options())
            )
        )
        worker.start()
        deadline = time.monotonic() + 3.0
        snapshot: dict[str, Any] | None = None
        while snapshot is None and time.monotonic() < deadline:
            stalled = [s for s in thunkscope.inflight() if s["state"] == "stalled"]
            snapshot = stalled[0] if stalled else None
            time.sleep(0.01)
        worker.join(5.0)
        assert snapshot is not None
        assert snapshot["name"] == "mellea.openai"
        assert snapshot["items"] == 1
        assert snapshot["backend_type"] == "AsyncStream"
        assert replies[0].content == "Hello, world!"
        (span,) = _wait_spans(telemetry, names.SPAN_SEND_TO_QUEUE)
        assert span.context is not None
        assert snapshot["trace_id"] == f"{span.context.trace_id:032x}"
        assert thunkscope.inflight() == []

    def test_logger_provider_receives_warnings(
        self, mellea: Any, telemetry: Any, fake_openai: FakeOpenAI
    ) -> None:
        """With logger_provider=, thunkscope's warnings become OTel log records on its span."""
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            InMemoryLogRecordExporter,
            SimpleLogRecordProcessor,
        )

        from support.mellea_session import openai_session

        exporter = InMemoryLogRecordExporter()
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        instrumentor = MelleaInstrumentor()
        instrumentor.instrument(logger_provider=logger_provider)
        _check_mode(instrumentor)
        try:
            with openai_session(fake_openai.base_url) as mellea_session:
                import openai

                with pytest.raises(openai.InternalServerError):
                    mellea_session.chat("x [fail:500]", model_options=_options())
        finally:
            instrumentor.uninstrument()
            logger_provider.shutdown()
        (span,) = _wait_spans(telemetry, names.SPAN_SEND_TO_QUEUE)
        records = [r.log_record for r in exporter.get_finished_logs()]
        (record,) = [r for r in records if r.body == names.LOG_STREAM_ERROR_FORWARDED]
        assert record.severity_text == "WARNING"
        assert record.trace_id == span.context.trace_id
        assert record.span_id == span.context.span_id
        assert dict(record.attributes or {})["error_type"] == "InternalServerError"
        assert dict(record.attributes or {})["stream"] == "mellea.openai"

    @needs_07plus
    def test_after_uninstrument_nothing_is_recorded(
        self, mellea: Any, telemetry: Any, fake_openai: FakeOpenAI
    ) -> None:
        """After uninstrument() a stream gives the same reply and no thunkscope telemetry."""
        from support.mellea_session import openai_session

        instrumentor = MelleaInstrumentor()
        instrumentor.instrument()
        instrumentor.uninstrument()
        with openai_session(fake_openai.base_url) as mellea_session:
            reply = mellea_session.chat("hello", model_options=_options())
            with pytest.raises(TimeoutError) as info:
                mellea_session.chat(
                    f"x [stall:{HANG}]", model_options=_options(timeout=STREAM_TIMEOUT)
                )
        assert reply.content == "Hello, world!"
        assert str(info.value) == MELLEA_TIMEOUT_MESSAGE
        assert telemetry.spans() == []


# --- the ClientCache across event loops -------------------------------------------------------


async def _close_this_loops_client(backend: Any) -> None:
    """Close the client cached for the running loop, so nothing leaks when the loop ends."""
    loop = asyncio.get_running_loop()
    cache = backend._client_cache.cache
    client = cache.get(loop, cache.get(id(loop)))
    if client is not None:
        await client.close()


def _close_dropped(backend: Any, seen: list[Any]) -> None:
    """Close clients mellea 0.7 dropped on eviction without closing them (0.8 closes them)."""
    from mellea.helpers import _run_async_in_thread

    cached = [id(client) for client in backend._client_cache.cache.values()]
    for client in seen:
        if id(client) not in cached and not client.is_closed():
            _run_async_in_thread(_close(client))


async def _close(client: Any) -> None:
    await client.close()


@needs_mellea
class TestClientCache:
    """Backend client caches: hits, misses and evictions across event loops."""

    def test_three_event_loops(self, merged_logs: list[Any], session: Any, telemetry: Any) -> None:
        """Construction, mellea's loop and two asyncio.run loops: two evictions, size stays 2."""
        backend = session.backend

        async def achat() -> None:
            await session.achat("hello", model_options=_options())
            await _close_this_loops_client(backend)

        session.chat("hello", model_options=_options())  # mellea's background loop
        session.chat("hello", model_options=_options())  # the same loop again: a hit
        seen = list(backend._client_cache.cache.values())
        asyncio.run(achat())  # a third loop: evicts the least recently used entry
        asyncio.run(achat())  # a fourth: evicts again
        assert backend._client_cache.current_size() == 2
        _close_dropped(backend, seen)

        if _is_08():
            spans = telemetry.spans(names.SPAN_CACHE_GET_OR_CREATE)
            results = [
                (
                    dict(s.attributes or {})[names.CACHE_RESULT],
                    dict(s.attributes or {})[names.CACHE_EVICTED],
                )
                for s in spans
            ]
            # the session's construction, then the four chats
            assert results == [
                ("miss", False),
                ("miss", False),
                ("hit", False),
                ("miss", True),
                ("miss", True),
            ]
        else:
            gets = [_attr(s, names.CACHE_RESULT) for s in telemetry.spans(names.SPAN_CACHE_GET)]
            puts = [_attr(s, names.CACHE_EVICTED) for s in telemetry.spans(names.SPAN_CACHE_PUT)]
            assert gets == ["miss", "miss", "hit", "miss", "miss"]
            assert puts == [False, False, True, True]
            spans = telemetry.spans(names.SPAN_CACHE_PUT)
        evicting = [s for s in spans if dict(s.attributes or {})[names.CACHE_EVICTED]]
        assert all(
            events_of(s) == [(names.EVENT_CACHE_EVICTED, {names.CACHE_NAME: "mellea.openai"})]
            for s in evicting
        )
        assert all(dict(s.attributes or {})[names.CACHE_NAME] == "mellea.openai" for s in spans)
        assert [dict(s.attributes or {})[names.CACHE_SIZE] for s in spans][-2:] == [2, 2]

        logged = [e["event"] for e in merged_logs if e["event"].startswith("cache.")]
        assert logged.count(names.LOG_CACHE_EVICTED) == 2
        assert logged.count(names.LOG_CACHE_MISS) == 4
        assert logged.count(names.LOG_CACHE_HIT) == 1
        evicted = [e for e in merged_logs if e["event"] == names.LOG_CACHE_EVICTED]
        assert all(e["log_level"] == "info" and e["cache"] == "mellea.openai" for e in evicted)

    def test_cache_metrics(self, session: Any, telemetry: Any) -> None:
        """Lookups by result, evictions and the entry gauges count the backend's cache."""
        name = {names.CACHE_NAME: "mellea.openai"}
        gc.collect()  # caches of earlier tests' sessions leave the gauges

        def counts() -> tuple[int, int, int]:
            return (
                _sum(telemetry, names.CACHE_LOOKUPS.name, **name, **{names.CACHE_RESULT: "hit"}),
                _sum(telemetry, names.CACHE_LOOKUPS.name, **name, **{names.CACHE_RESULT: "miss"}),
                _sum(telemetry, names.CACHE_EVICTIONS.name, **name),
            )

        before = counts()

        async def achat() -> None:
            await session.achat("hello", model_options=_options())
            await _close_this_loops_client(session.backend)

        session.chat("hello", model_options=_options())
        session.chat("hello", model_options=_options())
        seen = list(session.backend._client_cache.cache.values())
        asyncio.run(achat())
        _close_dropped(session.backend, seen)
        hits, misses, evictions = (a - b for a, b in zip(counts(), before, strict=True))
        assert (hits, misses, evictions) == (1, 2, 1)
        mine = session.backend._client_cache
        assert (mine.capacity, mine.current_size()) == (2, 2)
        gc.collect()  # only this session's cache is left to count
        limit = _point_value(telemetry, names.CACHE_ENTRY_LIMIT.name, **name).value
        count = _point_value(telemetry, names.CACHE_ENTRY_COUNT.name, **name).value
        assert (limit, count) == (2, 2)


# --- mellea's helpers called directly: the queue protocol is mellea's -------------------------


async def _items(
    values: list[Any],
    *,
    gap: float = 0.0,
    fail: BaseException | None = None,
    stall: float = 0.0,
    hang: bool = False,
) -> AsyncIterator[Any]:
    """Yield `values` (`gap` apart), then pause `stall` s, hang for good, or raise `fail`."""
    for index, value in enumerate(values):
        if index and gap:
            await asyncio.sleep(gap)
        yield value
    if stall:
        await asyncio.sleep(stall)
    if hang:
        await asyncio.Event().wait()
    if fail is not None:
        raise fail


async def _coroutine(value: Any) -> Any:
    await asyncio.sleep(0)
    if isinstance(value, BaseException):
        raise value
    return value


STALL_SCRIPT = "stall past chunk_timeout"
SCRIPTS: dict[str, Callable[[], Any]] = {
    "items": lambda: _items(["a", "b", "c"]),
    "coroutine of items": lambda: _coroutine(_items(["a", "b"], gap=0.01)),
    "single value": lambda: _coroutine({"whole": "response"}),
    "coroutine fails": lambda: _coroutine(ValueError("no response")),
    "iterator fails": lambda: _items(["a"], fail=KeyError("midway")),
    "backend's own TimeoutError": lambda: _items(["a"], fail=TimeoutError("backend")),
    STALL_SCRIPT: lambda: _items(["a"], stall=0.3),
}


async def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    """Everything a consumer sees, up to the sentinel or an exception, as comparable values."""
    seen: list[Any] = []
    while True:
        item = await asyncio.wait_for(queue.get(), 2.0)
        if item is None:
            return [*seen, None]
        if isinstance(item, BaseException):
            return [*seen, (type(item).__name__, str(item))]
        seen.append(item)


def _target(queue: asyncio.Queue[Any]) -> Any:
    """What the installed mellea's send_to_queue takes: the queue (0.6, 0.7) or a thunk (0.8)."""
    if not _is_08():
        return queue
    from mellea.core import ModelOutputThunk

    mot = ModelOutputThunk(None)
    mot._gen.queue = queue
    return mot


async def _run(function: Any, source: Any, *, maxsize: int = 0, **kwargs: Any) -> list[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=maxsize)
    target = _target(queue)
    task = asyncio.create_task(function(source, target, **kwargs))
    seen = await _drain(queue)
    await task
    return seen


@needs_mellea
class TestDirectCalls:
    """mellea's helpers called directly, instrumented: mellea's behaviour, thunkscope's record."""

    @pytest.mark.parametrize(
        "script",
        [
            pytest.param(name, marks=needs_07plus) if name == STALL_SCRIPT else name
            for name in sorted(SCRIPTS)
        ],
    )
    async def test_same_queue_as_mellea(
        self, script: str, instrumented: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """The consumer sees exactly what mellea alone gives it; one span records the outcome."""
        from mellea.helpers import async_helpers

        wrapped = async_helpers.send_to_queue
        original = wrapped.__wrapped__
        expected = await _run(original, SCRIPTS[script](), **_timeout(0.15))
        observed = await _run(wrapped, SCRIPTS[script](), **_timeout(0.15))
        assert observed == expected
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        outcome = dict(span.attributes or {})[names.STREAM_OUTCOME]
        if expected[-1] is None:
            assert outcome == "completed"
        elif script == STALL_SCRIPT:
            assert outcome == "timeout"
        else:
            assert outcome == "error"
        assert dict(span.attributes or {})[names.STREAM_NAME] == "mellea"

    async def test_instruments_failing_at_stream_start(
        self, instrumented: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """A meter provider that throws at a stream's start changes nothing mellea delivers;
        the span still ends once, and nothing stays current or in flight."""
        from mellea.helpers import async_helpers
        from opentelemetry import trace as trace_api

        from thunkscope import inflight

        _telemetry.use_providers(
            tracer_provider=telemetry.tracer_provider, meter_provider=BrokenMeterProvider()
        )
        before = trace_api.get_current_span()
        seen = await _run(async_helpers.send_to_queue, SCRIPTS["items"](), **_timeout(1.0))
        assert seen == ["a", "b", "c", None]
        assert trace_api.get_current_span() is before
        assert [s for s in inflight() if s["name"] == "mellea"] == []
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert dict(span.attributes or {})[names.STREAM_OUTCOME] == "completed"

    @pytest.mark.mellea08
    async def test_old_convention_on_08_fails_as_mellea_does(
        self, instrumented: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """On 0.8 a bare queue raises mellea's AttributeError out of the call, recorded as error."""
        from mellea.helpers import async_helpers

        queue: asyncio.Queue[Any] = asyncio.Queue()
        co = _coroutine("never sent")
        with pytest.raises(AttributeError, match="_gen"):
            await async_helpers.send_to_queue(co, queue)
        co.close()  # mellea leaves it un-awaited; so does the wrapper
        assert queue.empty()
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_OUTCOME] == "error"
        assert attributes[names.ERROR_TYPE] == "AttributeError"
        assert events_of(span) == []

    async def test_put_wait_on_a_full_queue(
        self, instrumented: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """Time mellea's producer spends blocked on a full queue is put wait, not a gap."""
        from mellea.helpers import async_helpers

        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        target = _target(queue)
        task = asyncio.create_task(async_helpers.send_to_queue(_items(["a", "b", "c"]), target))
        slow = 0.05  # the consumer's pause before each get
        seen = []
        while True:
            await asyncio.sleep(slow)  # a slow consumer
            item = await queue.get()
            if item is None:
                break
            seen.append(item)
        await task
        assert seen == ["a", "b", "c"]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_PUT_WAIT] >= 2 * slow
        # Each blocked put lasted about `slow`; none of it may count as a gap between items.
        assert attributes[names.STREAM_MAX_ITEM_GAP] < slow / 2
        assert attributes[names.STREAM_OUTCOME] == "completed"

    async def test_cancelled_producer(
        self, instrumented: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """Cancelling mellea's producer task (as cancel_generation does) is outcome cancelled."""
        from mellea.helpers import async_helpers

        target = _target(asyncio.Queue())
        task = asyncio.create_task(
            async_helpers.send_to_queue(_items(["a"], hang=True), target, **_timeout(None))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_OUTCOME] == "cancelled"
        assert span.status.status_code == StatusCode.UNSET
        assert names.ERROR_TYPE not in attributes

    async def test_wait_for_all_mots(
        self, instrumented: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """mellea's gather runs unchanged inside one wait_for_all_mots span."""
        from mellea.helpers import async_helpers

        awaited: list[int] = []

        class Thunk:
            def __init__(self, index: int) -> None:
                self.index = index

            async def avalue(self) -> int:
                awaited.append(self.index)
                return self.index

        await async_helpers.wait_for_all_mots([Thunk(0), Thunk(1), Thunk(2)])
        assert sorted(awaited) == [0, 1, 2]
        (span,) = telemetry.spans(names.SPAN_WAIT_FOR_ALL_MOTS)
        assert dict(span.attributes or {}) == {
            names.GATHER_SIZE: 3,
            names.GATHER_OUTCOME: "completed",
        }

    def test_get_current_event_loop(self, instrumented: MelleaInstrumentor, telemetry: Any) -> None:
        """mellea's loop lookup answers as before and is counted, found or not."""
        from mellea.helpers import async_helpers

        assert async_helpers.get_current_event_loop() is None

        async def inside() -> Any:
            return async_helpers.get_current_event_loop() is asyncio.get_running_loop()

        assert asyncio.run(inside()) is True
        found = [
            dict(s.attributes or {})[names.EVENT_LOOP_FOUND]
            for s in telemetry.spans(names.SPAN_GET_CURRENT_EVENT_LOOP)
        ]
        assert found == [False, True]


# --- zero-code instrumentation and mellea's own spans, through a real collector ---------------

APP = """
import os
import mellea
from mellea.backends import ModelOption

base_url = os.environ["FAKE_OPENAI_BASE_URL"]
options = {ModelOption.STREAM: True}
with mellea.start_session(
    "openai", model_id="fake-model", base_url=base_url, api_key="k", max_retries=0
) as m:
    print(m.chat("hello", model_options=options).content)
    close = getattr(m.backend, "close", None)
    if close is not None:
        close()
"""


# mellea's own tracing on, its spans exported over OTLP like thunkscope's.
# mellea 0.6 names its switch and its session span differently (MELLEA_TRACE_APPLICATION,
# "session_context"), and exports to OTEL_EXPORTER_OTLP_ENDPOINT once it is on.
def _mellea_own_tracing() -> tuple[dict[str, str], str]:
    """The environment that turns mellea's own tracing on, and its session span's name."""
    from importlib.metadata import version

    if version("mellea").startswith("0.6."):
        return {"MELLEA_TRACE_APPLICATION": "true"}, "session_context"
    return {"MELLEA_TRACES_ENABLED": "true", "MELLEA_TRACES_OTLP": "true"}, "session"


def _instrument_command() -> list[str]:
    script = Path(sys.executable).with_name("opentelemetry-instrument")
    return [str(script), sys.executable]


@needs_mellea
class TestAutoInstrumentation:
    """``opentelemetry-instrument`` instruments a mellea program with no code change."""

    def test_entry_point_is_registered(self) -> None:
        """thunkscope's distribution names the instrumentor where auto-instrumentation looks."""
        from importlib.metadata import entry_points

        found = [e.value for e in entry_points(group="opentelemetry_instrumentor", name="mellea")]
        assert found == ["thunkscope.instrumentation:MelleaInstrumentor"], (
            "pyproject.toml must declare [project.entry-points.opentelemetry_instrumentor] "
            'mellea = "thunkscope.instrumentation:MelleaInstrumentor" (then reinstall)'
        )

    def _run(self, tmp_path: Path, rotel: Any, base_url: str, **env: str) -> str:
        app = tmp_path / "app.py"
        app.write_text(APP)
        environment = {
            **os.environ,
            "FAKE_OPENAI_BASE_URL": base_url,
            "OTEL_SERVICE_NAME": "mellea-app",
            "OTEL_TRACES_EXPORTER": "otlp_proto_grpc",
            "OTEL_METRICS_EXPORTER": "otlp_proto_grpc",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rotel.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "structlog",
            **env,
        }
        result = subprocess.run(
            [*_instrument_command(), str(app)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Hello, world!" in result.stdout
        assert "Exception ignored" not in result.stderr
        return result.stderr

    def test_spans_reach_the_collector(
        self, tmp_path: Path, rotel: Any, fake_openai: FakeOpenAI
    ) -> None:
        """The program's streams and cache lookups arrive at rotel as thunkscope spans."""
        self._run(tmp_path, rotel, fake_openai.base_url)
        (stream,) = rotel.wait_for_spans(1, name=names.SPAN_SEND_TO_QUEUE)
        assert stream["service_name"] == "mellea-app"
        assert stream["scope_name"] == "thunkscope"
        assert stream["kind"] == "PRODUCER"
        assert stream["attributes"][names.STREAM_NAME] == "mellea.openai"
        assert stream["attributes"][names.STREAM_OUTCOME] == "completed"
        assert stream["attributes"][ids.MODEL] == "fake-model"
        assert len(stream["attributes"][ids.SESSION_ID]) > 0
        cache_span = names.SPAN_CACHE_GET_OR_CREATE if _is_08() else names.SPAN_CACHE_GET
        lookups = rotel.wait_for_spans(2, name=cache_span)
        assert {s["attributes"][names.CACHE_NAME] for s in lookups} == {"mellea.openai"}
        rotel.wait_for_point(
            names.STREAM_DURATION.name,
            {names.STREAM_NAME: "mellea.openai", names.STREAM_OUTCOME: "completed"},
        )

    # mellea 0.6 does not keep its session span current inside the session: its own
    # per-call spans (aact) are roots there too, so nothing can be the session's child.
    @needs_07plus
    def test_children_of_mellea_session_span(
        self, tmp_path: Path, rotel: Any, fake_openai: FakeOpenAI
    ) -> None:
        """With mellea's own tracing on, the producer span is a child of mellea's session span."""
        own_tracing, session_span = _mellea_own_tracing()
        self._run(tmp_path, rotel, fake_openai.base_url, **own_tracing)
        (stream,) = rotel.wait_for_spans(1, name=names.SPAN_SEND_TO_QUEUE)
        (mellea_session,) = rotel.wait_for_spans(1, name=session_span)
        assert mellea_session["scope_name"] == "mellea.application"
        assert stream["trace_id"] == mellea_session["trace_id"]
        assert stream["parent_span_id"] == mellea_session["span_id"]

    def test_disabled_by_environment(
        self, tmp_path: Path, rotel: Any, fake_openai: FakeOpenAI
    ) -> None:
        """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=mellea leaves mellea uninstrumented."""
        own_tracing, session_span = _mellea_own_tracing()
        self._run(
            tmp_path,
            rotel,
            fake_openai.base_url,
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="mellea,structlog",
            **own_tracing,
        )
        rotel.wait_for_spans(1, name=session_span)  # the pipeline delivered mellea's spans
        assert [s for s in rotel.spans() if s["scope_name"] == "thunkscope"] == []
