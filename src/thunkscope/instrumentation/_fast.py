"""The fast path: mellea's ``send_to_queue`` served by thunkscope's own stream loop.

mellea's loop opens an ``asyncio.timeout`` block per chunk (about 10x the cost of the
chunk itself); thunkscope's loop (`thunkscope._stream.run_stream`) keeps one lazily
re-armed deadline per stream. With the fast path, each binding of ``send_to_queue`` the
instrumentor replaces is a function of the original's exact signature that runs the
stream through thunkscope's loop with the rules of the installed mellea release at
the edges (`MelleaEdges`), and records it exactly as the wrapping path does
(`thunkscope.instrumentation._stream.open_mellea_stream`).

What each supported release does, and the fast path does too:

- 0.6.0: ``send_to_queue(co, aqueue)``: await a coroutine; ``async for`` over an async
  iterator, each item put; anything else put as one item; then ``None``; an
  ``Exception`` is put instead of what is left. No timeout.
- 0.7.0: ``send_to_queue(co, aqueue, *, chunk_timeout=120.0)``: ``ait = aiter(response)``,
  each ``anext(ait)`` bounded by ``asyncio.timeout(chunk_timeout)``; on expiry a
  ``TimeoutError`` with mellea's message is put, ``ait`` is closed (``aclose`` or
  ``close``, awaited if it returns a coroutine, failures logged at debug by mellea's
  logger) and nothing else. A backend that swallows the block's cancel and goes on is
  let through (``asyncio.timeout`` withdraws its cancel on leaving the block): a late
  item is put, a late end is a normal end, a late error is forwarded, and a late
  ``TimeoutError`` counts as the timeout.
- 0.8.0: ``send_to_queue(co, mot, *, chunk_timeout=120.0, on_timeout=None)``: the queue is
  ``mot._gen.queue``; as 0.7, plus ``on_timeout()`` before the error is put (not awaited;
  an ``Exception`` from it logged at debug), and per chunk, before its put,
  ``mot._record_ttfb()`` and the interval since the previous chunk in milliseconds
  (``None`` for the first) appended to ``mot._gen.chunk_intervals``, read from
  ``time.perf_counter()``.

What the fast path cannot prove it handles goes to the wrapping path (mellea's own
function, observed): at `instrument()`, a mellea version other than these or a
``send_to_queue`` whose signature or code (`fingerprint`) is not the release's, with
one log line saying why; per call, a ``chunk_timeout`` that is not None or a positive
finite number (mellea's ``0``, negative and ``inf`` have their own meanings), a queue
that is not a stock ``asyncio.Queue`` (a subclass overriding ``put``, ``put_nowait`` or
``full``), or on 0.8 a thunk without ``_gen.queue`` (mellea raises its own error).

``asyncio.timeout`` tells its own cancel from others by the task's cancel requests as each
chunk's wait began: the fast path reads that count per chunk too (`per_chunk`), so a
backend that swallows an outside ``Task.cancel()`` and streams on ends as under mellea.
One case is left: a backend that turns the deadline's cancel into a ``TimeoutError`` of its
own while an outside cancel is also pending gets mellea's timeout from mellea and a
cancellation from the fast path (it would need two cancels delivered in one step).
"""

from __future__ import annotations

import ast
import asyncio
import functools
import hashlib
import importlib
import inspect
import io
import math
import textwrap
import time
import tokenize
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import structlog

from thunkscope._stream import THUNKSCOPE_EDGES, Edges, StreamEnd, run_stream
from thunkscope._streamrec import close_stream
from thunkscope._watch import StreamWatch
from thunkscope.instrumentation._stream import (
    mellea_timeout_error,
    note_generation,
    observe_send_to_queue,
    open_mellea_stream,
)

_POSITIONAL: Final = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD: Final = inspect.Parameter.KEYWORD_ONLY


@dataclass(frozen=True)
class Release:
    """One mellea release's ``send_to_queue``, as the fast path knows it."""

    version: str
    parameters: tuple[tuple[str, Any], ...]  # (name, kind), in order
    fingerprint: str  # of the function's code: see `fingerprint`
    thunk: bool  # 0.8: the second argument is the thunk, the queue is mot._gen.queue
    timeout: bool  # chunk_timeout, enforced per chunk
    on_timeout: bool
    bookkeeping: bool  # 0.8: ttfb and chunk intervals on the thunk


RELEASES: Final = {
    release.version: release
    for release in (
        Release(
            "0.6.0",
            (("co", _POSITIONAL), ("aqueue", _POSITIONAL)),
            "96a38591640710d7",
            thunk=False,
            timeout=False,
            on_timeout=False,
            bookkeeping=False,
        ),
        Release(
            "0.7.0",
            (("co", _POSITIONAL), ("aqueue", _POSITIONAL), ("chunk_timeout", _KEYWORD)),
            "9d57a68cfdf0004b",
            thunk=False,
            timeout=True,
            on_timeout=False,
            bookkeeping=False,
        ),
        Release(
            "0.8.0",
            (
                ("co", _POSITIONAL),
                ("mot", _POSITIONAL),
                ("chunk_timeout", _KEYWORD),
                ("on_timeout", _KEYWORD),
            ),
            "d679c3c591e9d881",
            thunk=True,
            timeout=True,
            on_timeout=True,
            bookkeeping=True,
        ),
    )
}
"""The releases the fast path serves, by the version mellea's distribution reports."""


def fingerprint(function: Callable[..., Any]) -> str | None:
    """A digest of `function`'s code, blind to its docstring, comments and layout.

    The tokens of its source without the docstring, comments and whitespace, joined:
    the same on every Python thunkscope supports (3.12's f-string tokens join to the
    string 3.11 gives as one token). None when the source cannot be read.
    """
    try:
        source = textwrap.dedent(inspect.getsource(function))
        node = ast.parse(source).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    lines = source.splitlines(keepends=True)
    first = (getattr(node, "body", None) or [None])[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
        del lines[first.lineno - 1 : first.end_lineno]
    layout = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
    }
    try:
        tokens = tokenize.generate_tokens(io.StringIO("".join(lines)).readline)
        text = "".join(token.string for token in tokens if token.type not in layout)
    except (tokenize.TokenError, SyntaxError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recognise(original: Any, version: str | None) -> Release | str:
    """The release whose ``send_to_queue`` `original` is, or why the fast path cannot
    serve it."""
    release = RELEASES.get(version or "")
    if release is None:
        known = ", ".join(RELEASES)
        return f"mellea {version or '(version unknown)'} is not a release it knows ({known})"
    if not inspect.iscoroutinefunction(original):
        return f"mellea {version}'s send_to_queue is not a coroutine function ({original!r})"
    try:
        parameters = tuple(
            (p.name, p.kind) for p in inspect.signature(original).parameters.values()
        )
    except (TypeError, ValueError):
        parameters = ()
    if parameters != release.parameters:
        return f"mellea {version}'s send_to_queue has an unknown signature {parameters}"
    found = fingerprint(original)
    if found != release.fingerprint:
        what = "its source cannot be read" if found is None else f"fingerprint {found}"
        return (
            f"mellea {version}'s send_to_queue is not the released code ({what}, "
            f"expected {release.fingerprint})"
        )
    return release


# --- the edges of each release ------------------------------------------------------------------


class MelleaEdges(Edges):
    """mellea 0.7/0.8's rules at a stream's edges (0.6 has no timeout: thunkscope's serve)."""

    forgive_late = True
    __slots__ = ("baseline", "chunk_timeout", "task")

    def __init__(self, chunk_timeout: float, task: asyncio.Task[Any] | None) -> None:
        self.chunk_timeout = chunk_timeout  # as given: mellea's message prints it so
        self.task = task
        # The task's cancel requests as the wait for the next chunk began: asyncio.timeout
        # reads them as it enters each chunk's block (`stamp` below keeps this current).
        self.baseline = 0

    def cancel_baseline(self, at_start: int) -> int:
        """The count as the current chunk's wait began, as ``asyncio.timeout`` takes it."""
        return self.baseline

    def iterator(self, response: AsyncIterator[Any]) -> tuple[AsyncIterator[Any], Any]:
        """mellea steps ``aiter(response)`` with ``anext`` and closes that object."""
        if self.task is not None:
            self.baseline = self.task.cancelling()
        steps = aiter(response)
        if getattr(type(steps), "__aiter__", None) is not None:
            try:
                if aiter(steps) is steps:  # the usual case: ``async for`` steps it alike
                    return steps, steps
            except TypeError:
                pass
        return _Steps(steps), steps

    def timeout_error(self, timeout: float | None) -> BaseException:
        """mellea's own TimeoutError, with its message."""
        return mellea_timeout_error(self.chunk_timeout)

    async def notify(self, on_timeout: Callable[[], object], watch: StreamWatch) -> None:
        """Called, not awaited; an Exception from it is mellea's debug log line."""
        try:
            on_timeout()
        except Exception as exc:
            _mellea_debug(f"Failed to notify backend of stream timeout: {exc}")

    async def close(self, iterator: Any, watch: StreamWatch) -> None:
        """``aclose()`` or ``close()``, a coroutine result awaited, failures at debug."""
        close = getattr(iterator, "aclose", None) or getattr(iterator, "close", None)
        if close is None:
            return
        try:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:
            _mellea_debug(f"Failed to close stalled stream iterator: {exc}")


class _Steps:
    """``anext()`` of an iterator whose ``__aiter__`` is not itself, for ``async for``."""

    __slots__ = ("_iterator",)

    def __init__(self, iterator: Any) -> None:
        self._iterator = iterator

    def __aiter__(self) -> _Steps:
        return self

    def __anext__(self) -> Any:
        return anext(self._iterator)


def _mellea_debug(message: str) -> None:
    """A debug line on mellea's own logger, where mellea writes its own."""
    core = importlib.import_module("mellea.core")
    core.MelleaLogger.get_logger().debug(message)


def per_chunk(edges: MelleaEdges | None, mot: Any) -> Callable[[], None] | None:
    """What mellea's loop does per chunk besides the put, as it does it: 0.8's stamps on
    the thunk (`mot`, else None), and the cancel count each chunk's timeout block reads
    (`edges`, where a chunk_timeout is enforced, else None)."""
    previous: float | None = None

    def stamp() -> None:
        nonlocal previous
        mot._record_ttfb()
        now = time.perf_counter()
        mot._gen.chunk_intervals.append((now - previous) * 1000 if previous is not None else None)
        previous = now

    if edges is None or edges.task is None:
        return None if mot is None else stamp
    guard, cancelling = edges, edges.task.cancelling

    def count() -> None:
        guard.baseline = cancelling()

    def stamp_and_count() -> None:  # stamp() and count() in one call: this runs per chunk
        nonlocal previous
        mot._record_ttfb()
        now = time.perf_counter()
        mot._gen.chunk_intervals.append((now - previous) * 1000 if previous is not None else None)
        previous = now
        guard.baseline = cancelling()

    return count if mot is None else stamp_and_count


# --- the replacement -----------------------------------------------------------------------------


def _served_timeout(value: object) -> bool:
    """Whether the fast path enforces this chunk_timeout as mellea does (else: wrapping)."""
    if value is None:
        return True
    if type(value) is not float and type(value) is not int:
        return False
    return 0 < value < math.inf


def _stock_queue(queue: object) -> bool:
    """A queue whose put, put_nowait and full are asyncio.Queue's own."""
    cls: Any = type(queue)
    return (
        isinstance(queue, asyncio.Queue)
        and cls.put is asyncio.Queue.put
        and cls.put_nowait is asyncio.Queue.put_nowait
        and cls.full is asyncio.Queue.full
    )


async def serve(
    release: Release,
    name: str,
    co: Any,
    target: Any,
    queue: asyncio.Queue[Any],
    chunk_timeout: float | None,
    on_timeout: Callable[[], object] | None,
) -> None:
    """One stream of mellea's, through thunkscope's loop with the release's edges."""
    seconds = None if chunk_timeout is None else float(chunk_timeout)
    run, log_ids = open_mellea_stream(name, queue, target, timeout=seconds)
    guard = None if chunk_timeout is None else MelleaEdges(chunk_timeout, asyncio.current_task())
    edges = THUNKSCOPE_EDGES if guard is None else guard
    on_item = per_chunk(guard, target if release.bookkeeping else None)
    end = StreamEnd()
    with structlog.contextvars.bound_contextvars(**log_ids):
        try:
            await run_stream(
                co, queue, run.watch, end, on_timeout=on_timeout, edges=edges, on_item=on_item
            )
        finally:
            note_generation(run.watch, target)
            close_stream(run, end.mode, end.outcome, end.error, timeout=seconds)


def make_fast_send_to_queue(
    release: Release, original: Any, name: str, default_timeout: float | None
) -> Callable[..., Coroutine[Any, Any, None]]:
    """A stand-in for `original` (of `release`) whose streams are called `name`.

    It has the original's signature (its keyword defaults are the original's own
    dictionary) and name; ``__wrapped__`` is the original.
    """

    def fallback(co: Any, target: Any, kwargs: dict[str, Any]) -> Coroutine[Any, Any, None]:
        return observe_send_to_queue(original, (co, target), kwargs, name, default_timeout)

    replacement: Callable[..., Coroutine[Any, Any, None]]
    if release.version == "0.6.0":

        async def send_to_queue(co: Any, aqueue: Any) -> None:
            if not _stock_queue(aqueue):
                return await fallback(co, aqueue, {})
            await serve(release, name, co, aqueue, aqueue, None, None)

        replacement = send_to_queue
    elif release.version == "0.7.0":

        async def send_to_queue_07(co: Any, aqueue: Any, *, chunk_timeout: Any = None) -> None:
            if not (_stock_queue(aqueue) and _served_timeout(chunk_timeout)):
                return await fallback(co, aqueue, {"chunk_timeout": chunk_timeout})
            await serve(release, name, co, aqueue, aqueue, chunk_timeout, None)

        replacement = send_to_queue_07
    else:

        async def send_to_queue_08(
            co: Any, mot: Any, *, chunk_timeout: Any = None, on_timeout: Any = None
        ) -> None:
            try:
                queue = mot._gen.queue
            except AttributeError:
                queue = None
            if not (_stock_queue(queue) and _served_timeout(chunk_timeout)):
                kwargs = {"chunk_timeout": chunk_timeout, "on_timeout": on_timeout}
                return await fallback(co, mot, kwargs)
            await serve(release, name, co, mot, queue, chunk_timeout, on_timeout)

        replacement = send_to_queue_08

    # The original's name in Python's own argument errors, and its keyword defaults.
    replacement.__code__ = replacement.__code__.replace(
        co_name="send_to_queue", co_qualname="send_to_queue"
    )
    functools.update_wrapper(replacement, original)
    replacement.__kwdefaults__ = original.__kwdefaults__
    return replacement
