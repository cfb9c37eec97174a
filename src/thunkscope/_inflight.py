"""Streams in flight: the registry, their snapshots, and who produces into which queue.

Every running stream is registered here, so `thunkscope.inflight()` can answer
"which stream is stuck right now, since when, and on what?" from any thread, and the
``thunkscope.stream.active`` and ``thunkscope.stream.oldest_idle`` gauges can read them
(`active_by_name`, `oldest_idle_by_name`, handed to the telemetry by `thunkscope/__init__`).
The registry holds no reference of its own to the iterator, the queue or the items: it
holds the producing task while that runs (to show its stack) and drops the stream the
moment it ends. Queues are remembered weakly, with their producer's span context, so that
a consumer's span can link to the producer's.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

from thunkscope._stacks import task_stack
from thunkscope._telemetry import telemetry
from thunkscope._watch import StreamWatch

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext


# --- the registry -----------------------------------------------------------------------------

_registry: dict[str, StreamWatch] = {}


def register(watch: StreamWatch) -> None:
    """Add a running stream to the in-flight view."""
    _registry[watch.stream_id] = watch


def unregister(watch: StreamWatch) -> None:
    """Remove an ended stream at once, so nothing of it stays behind."""
    _registry.pop(watch.stream_id, None)


def registered() -> int:
    """How many streams are in flight (all loops, all threads)."""
    return len(_registry)


def in_flight_watches() -> list[StreamWatch]:
    """The watches of the streams running now, on every loop and thread (one atomic copy:
    other threads register meanwhile). For gauges and views that read the registry."""
    return list(_registry.copy().values())


def active_by_name() -> dict[str, int]:
    """Running streams per metric label, for the `thunkscope.stream.active` instrument."""
    counts: Counter[str] = Counter()
    for watch in in_flight_watches():
        counts[telemetry.stream_names.fold(watch.name)] += 1
    return dict(counts)


def oldest_idle_by_name() -> dict[str, float]:
    """Per metric label, the longest time a running stream has gone without an item, for
    the `thunkscope.stream.oldest_idle` gauge. Read at collection: nothing per item."""
    now = telemetry.clock()
    oldest: dict[str, float] = {}
    for watch in in_flight_watches():
        label = telemetry.stream_names.fold(watch.name)
        oldest[label] = max(oldest.get(label, 0.0), now - watch.last)
    return oldest


def inflight() -> list[dict[str, Any]]:
    """One snapshot per running `send_to_queue`, most idle first.

    Covers every event loop and thread of the process. Each snapshot has
    ``stream_id``, ``name``, ``trace_id``, ``state``, ``items``, ``age_s``, ``idle_s``,
    ``backend_type`` and ``stack`` (where the producing task is suspended).
    """
    watches = in_flight_watches()
    now = telemetry.clock()
    snapshots = [snapshot(watch, now) for watch in watches]
    snapshots.sort(key=lambda snap: (snap["idle_s"], snap["age_s"]), reverse=True)
    return snapshots


# --- who produces into which queue ------------------------------------------------------------


class Producer(NamedTuple):
    """The producing stream of a queue, as a consumer's span links to it."""

    span_context: SpanContext
    stream_id: str
    name: str


# Weak keys: a queue that is gone takes its entry with it, and the entry holds only ids.
_producers: weakref.WeakKeyDictionary[Any, Producer] = weakref.WeakKeyDictionary()


def note_producer(aqueue: object, watch: StreamWatch) -> None:
    """Remember, once per stream, which producer span feeds `aqueue` (the latest wins)."""
    ctx = watch.span.get_span_context()
    if not ctx.is_valid:
        return
    with contextlib.suppress(TypeError):  # a queue that cannot be weakly referenced: no link
        _producers[aqueue] = Producer(ctx, watch.stream_id, watch.name)


def producer_of(aqueue: object) -> Producer | None:
    """The producer last noted for `aqueue`, if any."""
    try:
        return _producers.get(aqueue)
    except TypeError:
        return None


# --- snapshots ---------------------------------------------------------------------------------


def snapshot(watch: StreamWatch, now: float) -> dict[str, Any]:
    """Plain, JSON-serialisable data about one stream as it is now."""
    return {
        "stream_id": watch.stream_id,
        "name": watch.name,
        "trace_id": watch.trace_id,
        "state": watch.state,
        "items": watch.items,
        "age_s": round(now - watch.started, 6),
        "idle_s": round(now - watch.last, 6),
        "backend_type": watch.backend_type,
        "stack": task_stack(watch.task),
    }
