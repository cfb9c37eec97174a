"""Every telemetry name thunkscope emits, in one place: the contract of SPEC section 2.

Span names, attribute keys, event names, metric names with their units and
Prometheus names, and log event names. Code, tests and dashboards read them from
here; nothing else spells them out. Public (`thunkscope.names`): dashboards, alert rules and
users' tests may import it; a renamed or removed name is a breaking change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

SCOPE: Final = "thunkscope"
LOGGER_NAME: Final = "thunkscope"

# --- spans ---------------------------------------------------------------------------
SPAN_SEND_TO_QUEUE: Final = "send_to_queue"
SPAN_WAIT_FOR_ALL_MOTS: Final = "wait_for_all_mots"
SPAN_GET_CURRENT_EVENT_LOOP: Final = "get_current_event_loop"
SPAN_CACHE_GET: Final = "client_cache.get"
SPAN_CACHE_PUT: Final = "client_cache.put"
SPAN_CACHE_GET_OR_CREATE: Final = "client_cache.get_or_create"
SPAN_PROCESS_QUEUE: Final = "process_queue"

# --- attributes ------------------------------------------------------------------------
ERROR_TYPE: Final = "error.type"
# OTel semantic conventions for a recorded exception; the message only with content capture.
EVENT_EXCEPTION: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"

STREAM_ID: Final = "thunkscope.stream.id"
STREAM_NAME: Final = "thunkscope.stream.name"
STREAM_MODE: Final = "thunkscope.stream.mode"
STREAM_ITEMS: Final = "thunkscope.stream.items"
STREAM_OUTCOME: Final = "thunkscope.stream.outcome"
STREAM_TIME_TO_FIRST_ITEM: Final = "thunkscope.stream.time_to_first_item"
STREAM_MAX_ITEM_GAP: Final = "thunkscope.stream.max_item_gap"
STREAM_PUT_WAIT: Final = "thunkscope.stream.put_wait"
# SPEC §6: how many times the stream stalled, 0 included; tail-sampling policies key on it.
STREAM_STALL_COUNT: Final = "thunkscope.stream.stalls"  # span attribute; metric: STREAM_STALLS

GATHER_SIZE: Final = "thunkscope.gather.size"
GATHER_OUTCOME: Final = "thunkscope.gather.outcome"

EVENT_LOOP_FOUND: Final = "thunkscope.event_loop.found"

CACHE_NAME: Final = "thunkscope.cache.name"
CACHE_RESULT: Final = "thunkscope.cache.result"
CACHE_EVICTED: Final = "thunkscope.cache.evicted"
CACHE_SIZE: Final = "thunkscope.cache.size"

STREAM_GAP: Final = "thunkscope.stream.gap"
# On stream.stalled: the producing task's innermost frames ("file:line in function",
# innermost last, at most 5, no local values); the log event's field is producer_stack.
STREAM_PRODUCER_STACK: Final = "thunkscope.stream.producer_stack"
STREAM_CHUNK_TIMEOUT: Final = "thunkscope.stream.chunk_timeout"
QUEUE_WAIT: Final = "thunkscope.queue.wait"
QUEUE_ITEMS: Final = "thunkscope.queue.items"
QUEUE_OUTCOME: Final = "thunkscope.queue.outcome"

# --- attribute values ----------------------------------------------------------------------
MODE_ITERATOR: Final = "iterator"
MODE_SINGLE: Final = "single"

OUTCOME_COMPLETED: Final = "completed"
OUTCOME_ERROR: Final = "error"
OUTCOME_TIMEOUT: Final = "timeout"
OUTCOME_CANCELLED: Final = "cancelled"
OUTCOME_ABANDONED: Final = "abandoned"

RESULT_HIT: Final = "hit"
RESULT_MISS: Final = "miss"
RESULT_STALE: Final = "stale"

# --- span events -------------------------------------------------------------------------
EVENT_FIRST_ITEM: Final = "stream.first_item"
EVENT_STALLED: Final = "stream.stalled"
EVENT_RESUMED: Final = "stream.resumed"
EVENT_BACKPRESSURE: Final = "stream.backpressure"
EVENT_SENTINEL: Final = "stream.sentinel"
EVENT_ERROR_FORWARDED: Final = "stream.error_forwarded"
EVENT_TIMEOUT: Final = "stream.timeout"
EVENT_CACHE_EVICTED: Final = "cache.evicted"

# --- log events ----------------------------------------------------------------------------
LOG_STREAM_STARTED: Final = "stream.started"
LOG_STREAM_FIRST_ITEM: Final = "stream.first_item"
LOG_STREAM_STALLED: Final = "stream.stalled"
LOG_STREAM_RESUMED: Final = "stream.resumed"
LOG_STREAM_BACKPRESSURE: Final = "stream.backpressure"
LOG_STREAM_COMPLETED: Final = "stream.completed"
LOG_STREAM_ERROR_FORWARDED: Final = "stream.error_forwarded"
LOG_STREAM_TIMED_OUT: Final = "stream.timed_out"
LOG_STREAM_CANCELLED: Final = "stream.cancelled"
LOG_STREAM_BAD_ARGUMENT: Final = "stream.bad_argument"
LOG_STREAM_ON_TIMEOUT_FAILED: Final = "stream.on_timeout_failed"
LOG_STREAM_CLOSE_FAILED: Final = "stream.close_failed"
LOG_GATHER_COMPLETED: Final = "gather.completed"
LOG_GATHER_FAILED: Final = "gather.failed"
LOG_CACHE_HIT: Final = "cache.hit"
LOG_CACHE_MISS: Final = "cache.miss"
LOG_CACHE_PUT: Final = "cache.put"
LOG_CACHE_EVICTED: Final = "cache.evicted"
LOG_CACHE_ON_EVICT_FAILED: Final = "cache.on_evict_failed"
LOG_EVENT_LOOP_LOOKUP: Final = "event_loop.lookup"
LOG_QUEUE_CONSUMED: Final = "queue.consumed"
LOG_ERROR_MESSAGE: Final = "error_message"  # log field of a captured exception message


# --- metrics ---------------------------------------------------------------------------------
InstrumentKind = Literal["histogram", "counter", "up_down_counter", "gauge"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric of the contract: its OTel name, instrument, unit and attribute keys."""

    name: str
    kind: InstrumentKind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()

    @property
    def prometheus_name(self) -> str:
        """The name Prometheus gives this metric after OTLP or exporter translation."""
        base = self.name.replace(".", "_")
        suffix = {"s": "_seconds"}.get(self.unit, "")
        if self.kind == "counter":
            return f"{base}{suffix}_total"
        return f"{base}{suffix}"


STREAM_DURATION = Metric(
    "thunkscope.stream.duration", "histogram", "s",
    "Wall time of one send_to_queue call, by how it ended.",
    (STREAM_NAME, STREAM_OUTCOME, ERROR_TYPE),
)  # fmt: skip
STREAM_TTFI = Metric(
    "thunkscope.stream.time_to_first_item", "histogram", "s",
    "Wait from the start of a stream to its first item.",
    (STREAM_NAME,),
)  # fmt: skip
STREAM_MAX_GAP = Metric(
    "thunkscope.stream.max_item_gap", "histogram", "s",
    "Longest wait between two items of one stream.",
    (STREAM_NAME,),
)  # fmt: skip
STREAM_ITEM_COUNT = Metric(
    "thunkscope.stream.items", "histogram", "{item}",
    "Items put on the queue by one stream.",
    (STREAM_NAME,),
)  # fmt: skip
STREAM_ACTIVE = Metric(
    "thunkscope.stream.active", "up_down_counter", "{stream}",
    "Streams running now.",
    (STREAM_NAME,),
)  # fmt: skip
STREAM_STALLS = Metric(
    "thunkscope.stream.stalls", "counter", "{stall}",
    "Gaps in which the backend gave nothing for stall_after seconds.",
    (STREAM_NAME,),
)  # fmt: skip
STREAM_OLDEST_IDLE = Metric(
    "thunkscope.stream.oldest_idle", "gauge", "s",
    "Longest time any running stream of this name has gone without an item (0: none running).",
    (STREAM_NAME,),
)  # fmt: skip
QUEUE_PUT_WAIT = Metric(
    "thunkscope.queue.put_wait", "histogram", "s",
    "Time a stream spent blocked on a full queue (consumer backpressure); "
    "recorded only for streams that blocked, so the count is how many did.",
    (STREAM_NAME,),
)  # fmt: skip
GATHER_DURATION = Metric(
    "thunkscope.gather.duration", "histogram", "s",
    "Wall time of one wait_for_all_mots call.",
    (GATHER_OUTCOME, ERROR_TYPE),
)  # fmt: skip
GATHER_SIZE_METRIC = Metric(
    "thunkscope.gather.size", "histogram", "{thunk}",
    "Thunks awaited by one wait_for_all_mots call.",
)  # fmt: skip
CACHE_LOOKUPS = Metric(
    "thunkscope.cache.lookups", "counter", "{lookup}",
    "ClientCache lookups, by result.",
    (CACHE_NAME, CACHE_RESULT),
)  # fmt: skip
CACHE_EVICTIONS = Metric(
    "thunkscope.cache.evictions", "counter", "{eviction}",
    "Entries evicted from a ClientCache.",
    (CACHE_NAME,),
)  # fmt: skip
CACHE_ENTRY_COUNT = Metric(
    "thunkscope.cache.entry.count", "gauge", "{entry}",
    "Entries held by ClientCaches of this name.",
    (CACHE_NAME,),
)  # fmt: skip
CACHE_ENTRY_LIMIT = Metric(
    "thunkscope.cache.entry.limit", "gauge", "{entry}",
    "Capacity of ClientCaches of this name.",
    (CACHE_NAME,),
)  # fmt: skip
EVENT_LOOP_LOOKUPS = Metric(
    "thunkscope.event_loop.lookups", "counter", "{lookup}",
    "get_current_event_loop calls, by whether a loop was running.",
    (EVENT_LOOP_FOUND,),
)  # fmt: skip

METRICS: Final[tuple[Metric, ...]] = (
    STREAM_DURATION,
    STREAM_TTFI,
    STREAM_MAX_GAP,
    STREAM_ITEM_COUNT,
    STREAM_ACTIVE,
    STREAM_STALLS,
    STREAM_OLDEST_IDLE,
    QUEUE_PUT_WAIT,
    GATHER_DURATION,
    GATHER_SIZE_METRIC,
    CACHE_LOOKUPS,
    CACHE_EVICTIONS,
    CACHE_ENTRY_COUNT,
    CACHE_ENTRY_LIMIT,
    EVENT_LOOP_LOOKUPS,
)

# Bucket boundaries suited to LLM streams: milliseconds to the two-minute chunk timeout.
SECONDS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
COUNT_BUCKETS: Final = (
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000,
)  # fmt: skip
