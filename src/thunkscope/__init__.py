"""thunkscope: observable drop-in async helpers for LLM backends.

The helpers of ``mellea.helpers.async_helpers``, with the same positional parameters,
each call observed through OpenTelemetry spans and metrics and structlog events::

    import asyncio, thunkscope

    queue: asyncio.Queue = asyncio.Queue()
    asyncio.create_task(thunkscope.send_to_queue(client.chat(...), queue, chunk_timeout=30))

Importing thunkscope configures nothing; call `configure()` once to export over OTLP.

Public submodules: `thunkscope.names` (every span, attribute, metric and log name thunkscope
emits, for dashboards, alerts and tests) and `thunkscope.instrumentation` (mellea).
"""

from thunkscope._cache import ClientCache
from thunkscope._config import TelemetryHandle, add_trace_context, configure, configure_logging
from thunkscope._consumer import QueueIterator, iter_queue
from thunkscope._debug_server import DebugServer, serve_debug
from thunkscope._gather import wait_for_all_mots
from thunkscope._inflight import active_by_name, inflight, oldest_idle_by_name
from thunkscope._loop import get_current_event_loop
from thunkscope._stream import DEFAULT_CHUNK_TIMEOUT, send_to_queue
from thunkscope._telemetry import telemetry as _state
from thunkscope._version import __version__

# The stream.active and stream.oldest_idle gauges read the in-flight registry.
_state.use_registry(active_by_name, oldest_idle_by_name)

__all__ = [
    "DEFAULT_CHUNK_TIMEOUT",
    "ClientCache",
    "DebugServer",
    "QueueIterator",
    "TelemetryHandle",
    "__version__",
    "add_trace_context",
    "configure",
    "configure_logging",
    "get_current_event_loop",
    "inflight",
    "iter_queue",
    "send_to_queue",
    "serve_debug",
    "wait_for_all_mots",
]
