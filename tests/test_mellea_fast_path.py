"""The mellea fast path: turning it on, what it serves, and what falls back to wrapping.

Runs in the mellea environments (``.venv-mellea08``, ``-07``, ``-06``) against the
installed release; `test_mellea_fast_path_properties` compares its behaviour with
mellea's own function over generated scripts.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import json
import linecache
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import wrapt

from thunkscope import names
from thunkscope.instrumentation import MelleaInstrumentor, _fast

pytestmark = pytest.mark.mellea

FAST_PATH_ENV = "THUNKSCOPE_MELLEA_FAST_PATH"


@pytest.fixture
def helpers() -> Any:
    """mellea.helpers.async_helpers, with a backend module that binds the helpers loaded."""
    pytest.importorskip("mellea")
    import mellea.backends.openai  # noqa: F401 - a backend module that binds send_to_queue
    from mellea.helpers import async_helpers

    return async_helpers


@pytest.fixture
def instrumentor(helpers: Any, telemetry: Any) -> Iterator[MelleaInstrumentor]:
    """The instrumentor, uninstrumented after the test whatever it did."""
    instrumentor = MelleaInstrumentor()
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


def _bindings() -> dict[str, Any]:
    """Every mellea module's binding of send_to_queue, as it is now."""
    return {
        name: vars(module)["send_to_queue"]
        for name, module in sys.modules.copy().items()
        if module is not None and name.split(".")[0] == "mellea" and "send_to_queue" in vars(module)
    }


def _define(source: str, tag: str) -> Any:
    """The function `source` defines, compiled so that inspect can read its source."""
    filename = f"<fast path test {tag}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[next(k for k in namespace if k != "__builtins__")]


def _bare_signature(function: Any) -> str:
    """`function`'s parameters as source, without annotations: ``(co, mot, *, ...)``."""
    signature = inspect.signature(function)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))


def _installed() -> str:
    return importlib.metadata.version("mellea")


def _fast_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == names.LOGGER_NAME and "fast path" in r.getMessage()
    ]


async def _three() -> AsyncIterator[str]:
    for item in ("a", "b", "c"):
        yield item


def _target(helpers: Any, queue: asyncio.Queue[Any]) -> Any:
    """What the installed release's send_to_queue takes: the queue, or a thunk holding it."""
    if "mot" not in inspect.signature(inspect.unwrap(helpers.send_to_queue)).parameters:
        return queue
    from mellea.core import ModelOutputThunk

    mot = ModelOutputThunk(None)
    mot._gen.queue = queue
    return mot


class TestTurningItOn:
    """The keyword, the environment variable, and what fast_path_active says."""

    def test_keyword_serves_every_binding(
        self, helpers: Any, instrumentor: MelleaInstrumentor
    ) -> None:
        """instrument(fast_path=True) puts a plain function of the original's signature in
        every module that bound send_to_queue; uninstrument() puts the originals back."""
        before = _bindings()
        assert {"mellea.helpers.async_helpers", "mellea.helpers", "mellea.backends.openai"} <= (
            before.keys()
        )
        instrumentor.instrument(fast_path=True)
        assert instrumentor.fast_path_active is True
        assert MelleaInstrumentor().fast_path_active is True  # the one instrumentor
        during = _bindings()
        assert during.keys() == before.keys()
        for module, served in during.items():
            assert not isinstance(served, wrapt.FunctionWrapper), module
            assert served.__wrapped__ is before[module], module
            assert served.__name__ == "send_to_queue"
            assert inspect.iscoroutinefunction(served)
            assert inspect.signature(served) == inspect.signature(before[module])
            assert served.__kwdefaults__ is before[module].__kwdefaults__
        instrumentor.uninstrument()
        assert instrumentor.fast_path_active is False
        after = _bindings()
        assert all(after[module] is original for module, original in before.items())

    def test_off_by_default(
        self, helpers: Any, instrumentor: MelleaInstrumentor, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With neither keyword nor variable, mellea's own function is wrapped."""
        monkeypatch.delenv(FAST_PATH_ENV, raising=False)
        instrumentor.instrument()
        assert instrumentor.fast_path_active is False
        assert isinstance(helpers.send_to_queue, wrapt.FunctionWrapper)

    def test_environment_turns_it_on(
        self, helpers: Any, instrumentor: MelleaInstrumentor, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """THUNKSCOPE_MELLEA_FAST_PATH=1 turns it on for instrument() without the keyword."""
        monkeypatch.setenv(FAST_PATH_ENV, "1")
        instrumentor.instrument()
        assert instrumentor.fast_path_active is True
        assert not isinstance(helpers.send_to_queue, wrapt.FunctionWrapper)

    def test_keyword_wins_over_environment(
        self, helpers: Any, instrumentor: MelleaInstrumentor, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """fast_path=False keeps the wrapping path even with the variable set."""
        monkeypatch.setenv(FAST_PATH_ENV, "true")
        instrumentor.instrument(fast_path=False)
        assert instrumentor.fast_path_active is False
        assert isinstance(helpers.send_to_queue, wrapt.FunctionWrapper)

    def test_bad_keyword_names_the_argument(self, helpers: Any) -> None:
        """A fast_path that is not a bool is a TypeError naming it, and nothing is patched."""
        before = _bindings()
        with pytest.raises(
            TypeError, match=r"^fast_path must be True, False or None, got str 'yes'$"
        ):
            MelleaInstrumentor().instrument(fast_path="yes")
        assert MelleaInstrumentor().fast_path_active is False
        assert _bindings() == before

    async def test_stream_through_the_fast_path(
        self, helpers: Any, instrumentor: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """A stream through the served binding reaches the queue in order and is one
        completed span named after its module."""
        instrumentor.instrument(fast_path=True)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        import mellea.backends.openai as openai_backend

        await openai_backend.send_to_queue(_three(), _target(helpers, queue))
        assert [queue.get_nowait() for _ in range(queue.qsize())] == ["a", "b", "c", None]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        attributes = dict(span.attributes or {})
        assert attributes[names.STREAM_NAME] == "mellea.openai"
        assert attributes[names.STREAM_OUTCOME] == "completed"
        assert attributes[names.STREAM_ITEMS] == 3

    def test_argument_errors_are_the_originals(
        self, helpers: Any, instrumentor: MelleaInstrumentor
    ) -> None:
        """A call mellea's function refuses is refused at the call with the same TypeError."""
        original = helpers.send_to_queue
        instrumentor.instrument(fast_path=True)
        for call in (lambda f: f(), lambda f: f(1, 2, 3), lambda f: f(1, 2, bogus=1)):
            with pytest.raises(TypeError) as expected:
                call(original)
            with pytest.raises(TypeError) as got:
                call(helpers.send_to_queue)
            assert str(got.value) == str(expected.value)


class TestFallback:
    """What the fast path cannot prove it serves is wrapped, with one log line saying why."""

    def test_installed_release_is_recognised(self, helpers: Any) -> None:
        """The installed mellea's send_to_queue is the release's, by signature and code."""
        release = _fast.recognise(helpers.send_to_queue, _installed())
        assert isinstance(release, _fast.Release)
        assert release.version == _installed()
        assert _fast.fingerprint(helpers.send_to_queue) == release.fingerprint

    def test_unknown_version(
        self,
        helpers: Any,
        instrumentor: MelleaInstrumentor,
        monkeypatch: pytest.MonkeyPatch,
        stdlib_records: pytest.LogCaptureFixture,
    ) -> None:
        """A mellea version the fast path does not know: wrapping, and one warning."""
        real = importlib.metadata.version
        monkeypatch.setattr(
            importlib.metadata,
            "version",
            lambda name: "0.9.0" if name == "mellea" else real(name),
        )
        instrumentor.instrument(fast_path=True)
        assert instrumentor.fast_path_active is False
        assert isinstance(helpers.send_to_queue, wrapt.FunctionWrapper)
        assert _fast_records(stdlib_records) == [
            "thunkscope: the mellea fast path is off: mellea 0.9.0 is not a release it knows "
            "(0.6.0, 0.7.0, 0.8.0); mellea's own send_to_queue is wrapped instead"
        ]
        (record,) = [r for r in stdlib_records.records if "fast path" in r.getMessage()]
        assert record.levelno == logging.WARNING

    def test_unrecognised_code(
        self,
        helpers: Any,
        instrumentor: MelleaInstrumentor,
        monkeypatch: pytest.MonkeyPatch,
        stdlib_records: pytest.LogCaptureFixture,
    ) -> None:
        """A send_to_queue of the right signature but other code (patched by someone):
        wrapping of that function, and one warning naming the fingerprint."""
        original = helpers.send_to_queue
        parameters = _bare_signature(original)
        patched = _define(f"async def send_to_queue{parameters}:\n    return None\n", "code")
        monkeypatch.setattr(helpers, "send_to_queue", patched)
        release = _fast.RELEASES[_installed()]
        instrumentor.instrument(fast_path=True)
        assert instrumentor.fast_path_active is False
        assert helpers.send_to_queue.__wrapped__ is patched
        (message,) = _fast_records(stdlib_records)
        assert message == (
            f"thunkscope: the mellea fast path is off: mellea {_installed()}'s send_to_queue "
            f"is not the released code (fingerprint {_fast.fingerprint(patched)}, expected "
            f"{release.fingerprint}); mellea's own send_to_queue is wrapped instead"
        )

    def test_unrecognised_signature(self, helpers: Any) -> None:
        """A function with another signature is refused before its code is looked at."""

        async def send_to_queue(co: Any, queue: Any, extra: Any) -> None:
            return None

        found = _fast.recognise(send_to_queue, _installed())
        assert isinstance(found, str)
        assert found.startswith(f"mellea {_installed()}'s send_to_queue has an unknown signature")

    def test_fingerprint_ignores_layout(self) -> None:
        """Docstrings, comments and layout do not change the fingerprint; code does."""
        a = _define('async def f(x):\n    """Doc."""\n    return x + 1\n', "a")
        b = _define("async def f(x):  # other\n\n    return  x+1\n", "b")
        c = _define("async def f(x):\n    return x + 2\n", "c")
        assert _fast.fingerprint(a) == _fast.fingerprint(b)
        assert _fast.fingerprint(a) != _fast.fingerprint(c)

    def test_unreadable_source(self, helpers: Any) -> None:
        """A function whose source cannot be read has no fingerprint, and is refused."""
        namespace: dict[str, Any] = {}
        parameters = _bare_signature(helpers.send_to_queue)
        exec(f"async def send_to_queue{parameters}:\n    return None\n", namespace)
        assert _fast.fingerprint(namespace["send_to_queue"]) is None
        found = _fast.recognise(namespace["send_to_queue"], _installed())
        assert isinstance(found, str)
        assert "its source cannot be read" in found


class PutCountingQueue(asyncio.Queue[Any]):
    """A queue whose put is its own: the fast path leaves it to mellea's function."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    async def put(self, item: Any) -> None:
        self.puts += 1
        await super().put(item)


async def _one_stall() -> AsyncIterator[str]:
    yield "a"
    await asyncio.sleep(0.05)
    yield "b"


class TestPerCallFallback:
    """A call the fast path does not serve runs mellea's own function, observed as wrapping."""

    async def test_queue_with_its_own_put(
        self, helpers: Any, instrumentor: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """A queue subclass overriding put gets mellea's loop: every put through its put."""
        instrumentor.instrument(fast_path=True)
        queue = PutCountingQueue()
        await helpers.send_to_queue(_three(), _target(helpers, queue))
        assert [queue.get_nowait() for _ in range(queue.qsize())] == ["a", "b", "c", None]
        assert queue.puts == 4  # mellea awaits put for each item and the sentinel
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)
        assert dict(span.attributes or {})[names.STREAM_OUTCOME] == "completed"

    @pytest.mark.mellea07plus
    @pytest.mark.parametrize("chunk_timeout", [0, -1.0, float("inf"), True])
    async def test_chunk_timeout_mellea_gives_its_own_meaning(
        self,
        helpers: Any,
        instrumentor: MelleaInstrumentor,
        telemetry: Any,
        chunk_timeout: Any,
    ) -> None:
        """0, a negative, infinity or a bool chunk_timeout: exactly mellea's own outcome."""
        original = helpers.send_to_queue
        instrumentor.instrument(fast_path=True)
        results = []
        for function in (original, helpers.send_to_queue):
            queue: asyncio.Queue[Any] = asyncio.Queue()
            await function(_one_stall(), _target(helpers, queue), chunk_timeout=chunk_timeout)
            results.append(
                [
                    (type(i).__name__, str(i)) if isinstance(i, BaseException) else i
                    for i in (queue.get_nowait() for _ in range(queue.qsize()))
                ]
            )
        assert results[1] == results[0]
        (span,) = telemetry.spans(names.SPAN_SEND_TO_QUEUE)  # the served call was recorded
        assert dict(span.attributes or {})[names.STREAM_NAME] == "mellea"

    @pytest.mark.mellea08
    async def test_thunk_without_a_queue(
        self, helpers: Any, instrumentor: MelleaInstrumentor, telemetry: Any
    ) -> None:
        """On 0.8 a bare queue instead of a thunk fails as mellea does, at the same place."""
        instrumentor.instrument(fast_path=True)
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def never_awaited() -> None:
            return None

        co = never_awaited()
        with pytest.raises(AttributeError, match="_gen"):
            await helpers.send_to_queue(co, queue)
        co.close()
        assert queue.empty()


class TestLaterImports:
    """A backend module imported after instrument(fast_path=True) is served too."""

    def test_backend_imported_later(self, helpers: Any) -> None:
        """It gets its own stand-in, named after it; uninstrument() gives it the original."""
        code = textwrap.dedent(
            """
            import json, sys, wrapt
            from thunkscope.instrumentation import MelleaInstrumentor
            instrumentor = MelleaInstrumentor()
            instrumentor.instrument(fast_path=True)
            from mellea.helpers import async_helpers
            loaded_before = "mellea.backends.openai" in sys.modules
            import mellea.backends.openai as backend
            bound = backend.send_to_queue
            original = bound.__wrapped__
            out = {
                "loaded_before": loaded_before,
                "active": instrumentor.fast_path_active,
                "plain": not isinstance(bound, wrapt.FunctionWrapper),
                "own": bound is not async_helpers.send_to_queue,
                "same_original": original is async_helpers.send_to_queue.__wrapped__,
            }
            instrumentor.uninstrument()
            out["restored"] = backend.send_to_queue is original
            print(json.dumps(out))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
        )
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert out == {
            "loaded_before": False,
            "active": True,
            "plain": True,
            "own": True,
            "same_original": True,
            "restored": True,
        }
        assert result.stderr == ""


class TestInflightView:
    """A stalled stream looks the same in thunkscope.inflight() through either path."""

    def test_stalled_stream_snapshot(self, helpers: Any, telemetry: Any) -> None:
        """Mid-stall, the fast path's snapshot is the wrapping path's (ids and stacks aside)."""
        import thunkscope
        from thunkscope import _telemetry, testing
        from thunkscope.instrumentation import _fast
        from thunkscope.instrumentation._stream import make_send_to_queue_wrapper

        original = inspect.unwrap(helpers.send_to_queue)
        release = _fast.RELEASES[_installed()]
        served = {
            "fast": _fast.make_fast_send_to_queue(release, original, "mellea.snap", None),
            "wrapping": wrapt.FunctionWrapper(
                original, make_send_to_queue_wrapper("mellea.snap", None)
            ),
        }

        async def backend() -> AsyncIterator[str]:
            yield "a"
            yield "b"
            await asyncio.sleep(40.0)  # past the 30 s stall warning, under chunk_timeout
            yield "c"

        async def snapshot(function: Any) -> dict[str, Any]:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            producer = asyncio.create_task(function(backend(), _target(helpers, queue)))
            await asyncio.sleep(35.0)
            (snap,) = thunkscope.inflight()
            await producer
            assert [queue.get_nowait() for _ in range(queue.qsize())] == ["a", "b", "c", None]
            return {k: v for k, v in snap.items() if k not in ("stream_id", "trace_id", "stack")}

        _telemetry.telemetry.settings.stall_after = 30.0
        seen = {}
        for name, function in served.items():
            with testing.virtual_time() as loop:
                seen[name] = loop.run_until_complete(snapshot(function))
        assert (
            seen["fast"]
            == seen["wrapping"]
            == {
                "name": "mellea.snap",
                "state": "stalled",
                "items": 2,
                "age_s": 35.0,
                "idle_s": 35.0,
                "backend_type": "TestInflightView.test_stalled_stream_snapshot.<locals>.backend",
            }
        )
