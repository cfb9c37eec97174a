"""mellea's own ``send_to_queue``, observed: thunkscope's span, metrics, logs and stall watch.

mellea's function still does all the work: it awaits the response, enforces its own
``chunk_timeout`` (and calls ``on_timeout``), puts the items, the sentinel or the error,
and closes a stalled iterator. The wrapper only hands it an observed response in place
of the raw one: a coroutine is awaited inside a thin coroutine, and an async iterator is
handed over as `_ObservedIterator`, which stamps each item exactly as thunkscope's own
stream loop does (`thunkscope._watch.StreamWatch`: one clock read and a few stores per
item; the stall warning, the in-flight view and the end-of-stream record are the core's).

How the stream ended is read back from what the observer saw:

- the iterator ran out (or a single response arrived): ``completed``;
- the response or the iterator raised: ``error`` (mellea forwarded it to the queue);
- a wait for an item was cancelled and mellea then returned normally: mellea's
  ``chunk_timeout`` fired, ``timeout``;
- mellea's task was cancelled (``ModelOutputThunk.cancel_generation``): ``cancelled``.

The queue (``aqueue`` in mellea 0.6/0.7, ``mot._gen.queue`` in 0.8) is only looked at,
never touched: when it is full after an item, mellea's next ``put`` will block, and the
time until mellea asks for the next item (or returns) is counted as put wait, apart from
backend time, as thunkscope's own blocked puts are.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog

from thunkscope import names
from thunkscope._stream import is_bounded
from thunkscope._streamrec import (
    StreamRun,
    add_forwarded_error,
    add_sentinel,
    add_timeout,
    close_stream,
    open_stream,
)
from thunkscope._telemetry import report_failure, telemetry
from thunkscope._watch import AWAITING_ITEM, State, StreamWatch, backend_type_of
from thunkscope.instrumentation import _ids


def queue_of(target: object) -> Any:
    """The queue mellea's producer feeds: the argument itself (0.6/0.7) or ``mot._gen.queue``."""
    if callable(getattr(target, "put", None)):
        return target
    return getattr(getattr(target, "_gen", None), "queue", None)


def open_mellea_stream(
    name: str, queue: Any, target: object, *, timeout: float | None
) -> tuple[StreamRun, dict[str, str]]:
    """Open a mellea stream's record, with mellea's ids on its span and logs; the ids as
    log fields come back too. Both paths (wrapping and fast) open their streams here."""
    ids = _ids.context_ids()
    generation = _ids.generation_id(target)
    if generation is not None:
        ids[_ids.GENERATION_ID] = generation
    log_ids = _ids.log_fields(ids)
    run = open_stream(
        name,
        queue,
        timeout=timeout,
        stall_after=telemetry.settings.stall_after,
        attributes=ids,
        log_fields=log_ids,
    )
    return run, log_ids


def note_generation(watch: StreamWatch, target: object) -> None:
    """mellea 0.8 names its generation only once it runs: the id may be new since the start."""
    generation = _ids.generation_id(target)
    if generation is not None and watch.span.is_recording():
        try:
            watch.span.set_attribute(_ids.GENERATION_ID, generation)
        except Exception as exc:
            report_failure("mellea stream ids", exc)


def mellea_timeout_error(chunk_timeout: object) -> TimeoutError:
    """The TimeoutError mellea 0.7 and 0.8 put on the queue when chunk_timeout expires."""
    return TimeoutError(
        f"Stream timed out after {chunk_timeout}s without a chunk (covers time-to-first-token "
        "and inter-chunk gaps). Set ModelOption.STREAM_TIMEOUT to a larger value or None to "
        "disable."
    )


class _Observation:
    """What one wrapped call saw of its stream; mellea's queue is read, never written."""

    __slots__ = (
        "bounded",
        "cancelled",
        "cancelling",
        "error",
        "guard",
        "mode",
        "put_previous",
        "queue",
        "watch",
    )

    def __init__(self, watch: StreamWatch, queue: Any) -> None:
        self.watch = watch
        self.queue = queue
        # Whether mellea's put may block, by the core's rule (no queue: never).
        self.bounded = queue is not None and is_bounded(queue)
        self.mode: str | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.put_previous: State = AWAITING_ITEM
        # The task's cancel requests before the stream: one more may be mellea's deadline's.
        self.cancelling = 0 if watch.task is None else watch.task.cancelling()
        self.guard: float | None = None  # the chunk_timeout mellea enforces, if any

    def deadline_fired(self) -> bool:
        """Whether mellea's deadline for the current chunk has fired: its time has come
        since the wait began (the last item, or the end of a blocked put: the watch's
        stamp; less a millisecond, as mellea read its clock a little earlier) and the task
        has been asked to cancel. Nothing is read per chunk for it."""
        task = self.watch.task
        return (
            self.guard is not None
            and task is not None
            and telemetry.clock() >= self.watch.last + self.guard - 1e-3
            and task.cancelling() > self.cancelling
        )

    def response(self, response: Any) -> Any:
        """The backend answered: an async iterator comes back observed, anything else as is."""
        watch = self.watch
        now = telemetry.clock()
        watch.backend_type = backend_type_of(response)
        if isinstance(response, AsyncIterator):
            self.mode = names.MODE_ITERATOR
            watch.start_iterating(now)
            return _ObservedIterator(response, self)
        self.mode = names.MODE_SINGLE
        watch.note_item(now)
        watch.items = 1
        # mellea puts the response and then the sentinel, unseen from here: if the two
        # do not both fit, a put blocks from now until mellea returns.
        self.before_put(now, following=1)
        return response

    def failed(self, exc: BaseException) -> None:
        """The response or the iterator raised: mellea forwards it to the queue."""
        self.error = exc
        self.before_put(telemetry.clock())

    def before_put(self, now: float, following: int = 0) -> None:
        """mellea is about to put something (and `following` more, unseen from here): if
        they do not all fit, a put will block."""
        if not self.bounded:
            return
        queue = self.queue
        full = queue.full()
        if not full and following:
            maxsize, qsize = getattr(queue, "maxsize", None), getattr(queue, "qsize", None)
            if isinstance(maxsize, int) and callable(qsize):
                full = maxsize - qsize() <= following
        if full:
            self.put_previous = self.watch.begin_put(now)

    def after_put(self, now: float) -> None:
        """mellea is past a put that was going to block: account the wait, as the core does."""
        if self.watch.put_started is not None:
            self.watch.end_put(now, self.put_previous)


class _ObservedIterator:
    """The backend's async iterator as mellea sees it, each item stamped on the way through.

    Every other attribute (``aclose``, ``close``, ...) is the underlying iterator's, so
    mellea closes a stalled stream exactly as it would without thunkscope.
    """

    __slots__ = ("_anext", "_iterator", "_observation")

    def __init__(self, response: AsyncIterator[Any], observation: _Observation) -> None:
        iterator = aiter(response)
        self._iterator = iterator
        self._anext = iterator.__anext__
        self._observation = observation

    def __aiter__(self) -> _ObservedIterator:
        return self

    async def __anext__(self) -> Any:
        observation = self._observation
        watch = observation.watch
        if watch.put_started is not None:
            observation.after_put(telemetry.clock())
        try:
            item = await self._anext()
        except StopAsyncIteration:
            observation.before_put(telemetry.clock())  # the sentinel's put
            raise
        except asyncio.CancelledError:
            observation.cancelled = True  # mellea's chunk_timeout, or the task cancelled
            observation.before_put(telemetry.clock())
            raise
        except TimeoutError as exc:
            if observation.deadline_fired():
                # The backend turned mellea's expired deadline into its own TimeoutError:
                # mellea counts it as its timeout (its block expired), and so does the record.
                observation.cancelled = True
                observation.before_put(telemetry.clock())
            else:
                observation.failed(exc)
            raise
        except BaseException as exc:
            observation.failed(exc)
            raise
        now = telemetry.clock()
        if now - watch.last > watch.watermark:
            watch.note_item(now)  # first item, a new longest gap, or the end of a stall
        watch.last = now
        watch.items += 1
        observation.before_put(now)
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


async def _observed_response(co: Coroutine[Any, Any, Any], observation: _Observation) -> Any:
    try:
        response = await co
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        observation.failed(exc)
        raise
    return observation.response(response)


def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any] | None:
    """``(co, target)`` from mellea's arguments, or None if they are not there."""
    if args:
        co = args[0]
    elif "co" in kwargs:
        co = kwargs["co"]
    else:
        return None
    if len(args) > 1:
        return co, args[1]
    for key in ("aqueue", "mot"):
        if key in kwargs:
            return co, kwargs[key]
    return None


def _replace_co(
    args: tuple[Any, ...], kwargs: dict[str, Any], co: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (co, *args[1:]), kwargs
    return args, {**kwargs, "co": co}


def make_send_to_queue_wrapper(
    name: str, default_timeout: float | None
) -> Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]:
    """A wrapt wrapper for mellea's ``send_to_queue`` whose streams are called `name`."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return observe_send_to_queue(wrapped, args, kwargs, name, default_timeout)

    return wrapper


async def observe_send_to_queue(
    wrapped: Callable[..., Coroutine[Any, Any, None]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: str,
    default_timeout: float | None,
) -> None:
    """Run mellea's ``send_to_queue`` on an observed response, recording the stream."""
    split = _split(args, kwargs)
    if split is None:  # not a call mellea itself would accept: let it say so
        await wrapped(*args, **kwargs)
        return
    co, target = split
    chunk_timeout = kwargs.get("chunk_timeout", default_timeout)
    queue = queue_of(target)

    # mellea enforces its own chunk_timeout: the watch only warns.
    run, log_ids = open_mellea_stream(name, queue, target, timeout=None)
    watch = run.watch

    observation = _Observation(watch, queue)
    if isinstance(chunk_timeout, int | float) and not isinstance(chunk_timeout, bool):
        observation.guard = float(chunk_timeout)  # mellea's own deadline per chunk
    observed: Any
    if isinstance(co, Coroutine):
        watch.backend_type = backend_type_of(co)
        observed = _observed_response(co, observation)
    else:
        observed = observation.response(co)
    args, kwargs = _replace_co(args, kwargs, observed)

    outcome = names.OUTCOME_COMPLETED
    error: BaseException | None = None
    # The stall, resume and final events of the core carry mellea's ids too wherever the
    # application's structlog merges context variables (structlog's default does).
    with structlog.contextvars.bound_contextvars(**log_ids):
        watch.arm()
        try:
            await wrapped(*args, **kwargs)
        except asyncio.CancelledError as exc:
            outcome, error = names.OUTCOME_CANCELLED, exc
            raise
        except BaseException as exc:  # mellea itself raised, e.g. 0.8 given a bare queue
            outcome, error = names.OUTCOME_ERROR, exc
            raise
        else:
            if observation.error is not None:
                outcome, error = names.OUTCOME_ERROR, observation.error
            elif observation.cancelled:
                outcome = names.OUTCOME_TIMEOUT
                error = mellea_timeout_error(chunk_timeout)
        finally:
            _close_unstarted(observed)
            observation.after_put(telemetry.clock())
            _end(run, observation, outcome, error, target, chunk_timeout)


def _end(
    run: StreamRun,
    observation: _Observation,
    outcome: str,
    error: BaseException | None,
    target: object,
    chunk_timeout: object,
) -> None:
    """The end events thunkscope's own send_to_queue adds as they happen, read back from
    what mellea did, then the shared close."""
    watch = run.watch
    note_generation(watch, target)
    seconds = float(chunk_timeout) if isinstance(chunk_timeout, int | float) else None
    if outcome == names.OUTCOME_COMPLETED:
        add_sentinel(watch)
    elif outcome == names.OUTCOME_ERROR and observation.error is not None:
        add_forwarded_error(watch, observation.error)
    elif outcome == names.OUTCOME_TIMEOUT:
        add_timeout(watch, seconds or 0.0)
    close_stream(run, observation.mode, outcome, error, timeout=seconds)


def _close_unstarted(observed: Any) -> None:
    """Close our wrapper coroutine if mellea never awaited it (mellea raised first)."""
    if inspect.iscoroutine(observed) and inspect.getcoroutinestate(observed) == "CORO_CREATED":
        observed.close()
