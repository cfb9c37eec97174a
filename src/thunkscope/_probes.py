"""What thunkscope reads of other libraries' private state, each read with why, in one place.

"Is anyone listening?" is asked on every cache hit and every stream, and the public
answers (``structlog.is_configured()``, ``Logger.isEnabledFor``, the OTel API's proxy
providers) each cost more than the whole hit. So thunkscope reads the state behind them
directly. Each read is declared here, and `PROBES` lists them with a check that the
installed version still has it in the shape thunkscope relies on; tests/test_probes.py
runs the checks, so an upgrade of structlog, logging or the OTel API/SDK that removes or
changes one fails loudly instead of quietly taking a slow or wrong path. Every read has a
fallback to the public answer when the private state is not there.

The cache hit path reads three of these objects' attributes inline (``TRACE_STATE``,
``METRICS_STATE``, ``LEVEL_CACHE``, ``STRUCTLOG_STATE``): a function call would cost more
than the read.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

import structlog
from opentelemetry import _logs as _logs_api
from opentelemetry import trace as _trace_api
from opentelemetry.metrics import _internal as _metrics_internal

from thunkscope import names

# --- structlog ---------------------------------------------------------------------------------


def _structlog_config() -> Any:
    try:
        config = structlog._config._CONFIG
        config.is_configured  # noqa: B018
        config.default_wrapper_class  # noqa: B018
        config.logger_factory  # noqa: B018
    except AttributeError:  # pragma: no cover - structlog moved its internals
        return None
    return config


STRUCTLOG_CONFIG: Final[Any] = _structlog_config()
"""structlog's configuration object (``structlog._config._CONFIG``), or None: read for
``is_configured`` (one attribute read instead of ``structlog.is_configured()``) and for
the wrapper class and logger factory behind the level check, never written."""


def _attributes_of(config: object) -> dict[str, Any]:
    try:
        return vars(config) if config is not None else {"is_configured": True}
    except TypeError:  # pragma: no cover - no instance dict
        return {"is_configured": True}


STRUCTLOG_STATE: Final[dict[str, Any]] = _attributes_of(STRUCTLOG_CONFIG)
"""The instance attributes of structlog's configuration object. structlog sets them only
in ``configure()`` and ``reset_defaults()``: until one is called the dict is empty, so the
cache hit learns "never configured" from its truth value. Unknown internals read as
configured: the hit then always takes the full path."""


# --- logging -----------------------------------------------------------------------------------

LEVEL_CACHE: Final[dict[int, bool] | None] = getattr(
    logging.getLogger(names.LOGGER_NAME), "_cache", None
)
"""The ``thunkscope`` logger's ``Logger._cache``: the standard library caches its
``isEnabledFor`` answers per level there and empties the dict in place whenever a level
changes, so "is debug on?" is one dict lookup. None if logging stops keeping it."""


# --- the OTel structlog instrumentation --------------------------------------------------------


def structlog_configured_only_by_otel() -> bool:
    """Whether structlog counts as configured only because the OTel structlog
    instrumentation (``opentelemetry-instrument``) reconfigured its defaults.

    Read off ``StructlogInstrumentor._processor`` (set while it instruments) and
    ``_is_configured_by_app``: its defaults print every level to stdout, and an
    application that never set structlog up must not see thunkscope's debug events there.
    """
    module = sys.modules.get("opentelemetry.instrumentation.structlog")
    instrumentor = getattr(module, "StructlogInstrumentor", None)
    return (
        instrumentor is not None
        and getattr(instrumentor, "_processor", None) is not None
        and getattr(instrumentor, "_is_configured_by_app", True) is False
    )


# --- the OTel API's global providers -----------------------------------------------------------

TRACE_STATE: Final[ModuleType] = _trace_api
"""``opentelemetry.trace``, whose ``_TRACER_PROVIDER`` is None until a provider is set: a
module attribute read says whether anyone traces (the API's proxy would say yes)."""

METRICS_STATE: Final[ModuleType] = _metrics_internal
"""``opentelemetry.metrics._internal``, whose ``_METER_PROVIDER`` is None until set."""

LOGS_STATE: Final[ModuleType] = _logs_api._internal
"""``opentelemetry._logs._internal``, whose ``_LOGGER_PROVIDER`` is None until set."""


def tracer_provider_set() -> bool:
    """Whether a global tracer provider is set (unknown internals: assume one is)."""
    return getattr(TRACE_STATE, "_TRACER_PROVIDER", True) is not None


def global_provider_set(signal: str) -> bool:
    """Whether the application set the global provider of `signal` (traces, metrics, logs)."""
    module, attribute = _GLOBALS[signal]
    return getattr(module, attribute, None) is not None


_GLOBALS: Final = {
    "traces": (TRACE_STATE, "_TRACER_PROVIDER"),
    "metrics": (METRICS_STATE, "_METER_PROVIDER"),
    "logs": (LOGS_STATE, "_LOGGER_PROVIDER"),
}


# --- asyncio -----------------------------------------------------------------------------------

running_loop: Final[Callable[[], asyncio.AbstractEventLoop | None]] = asyncio._get_running_loop
"""The running loop or None, without ``get_running_loop``'s exception when there is none
(a put outside a loop is common and must not pay for a raise)."""


# --- the OTLP exporters ------------------------------------------------------------------------


def exporter_endpoint(exporter: object) -> str | None:
    """The URL or address an OTLP exporter resolved (``_endpoint``), for the warnings that
    name the collector; None if it keeps none."""
    endpoint = getattr(exporter, "_endpoint", None)
    return endpoint if isinstance(endpoint, str) and endpoint else None


def retry_events(exporter: object) -> list[threading.Event]:
    """The events an OTLP exporter waits on between retries: the HTTP client's
    ``_client._shutdown_event`` or the gRPC exporter's ``_shutdown_in_progress``. Setting
    them ends a backoff sleep; none found, and the shutdown timeout still bounds it."""
    candidates = (
        getattr(getattr(exporter, "_client", None), "_shutdown_event", None),
        getattr(exporter, "_shutdown_in_progress", None),
    )
    return [event for event in candidates if isinstance(event, threading.Event)]


def metric_preferences(exporter: Any) -> tuple[Any, Any]:
    """A metric exporter's ``_preferred_temporality`` and ``_preferred_aggregation``, which
    a wrapper must pass on to the SDK's MetricExporter for the reader to honour them."""
    return exporter._preferred_temporality, exporter._preferred_aggregation


# --- the declaration the test checks -----------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One read of another library's private state: what, why, and whether it still holds."""

    reads: str
    why: str
    holds: Callable[[], bool]


def _holds_structlog_config() -> bool:
    return STRUCTLOG_CONFIG is not None and isinstance(STRUCTLOG_CONFIG.is_configured, bool)


def _holds_level_cache() -> bool:
    return isinstance(LEVEL_CACHE, dict)


def _holds_instrumentor() -> bool:
    from opentelemetry.instrumentation.structlog import StructlogInstrumentor

    return hasattr(StructlogInstrumentor, "_processor") and hasattr(
        StructlogInstrumentor, "_is_configured_by_app"
    )


def _holds_globals() -> bool:
    return all(hasattr(module, attribute) for module, attribute in _GLOBALS.values())


def _holds_exporters() -> bool:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    http = OTLPSpanExporter(endpoint="http://probe.invalid:4318/v1/traces")
    metric = OTLPMetricExporter(endpoint="http://probe.invalid:4318/v1/metrics")
    return (
        exporter_endpoint(http) == "http://probe.invalid:4318/v1/traces"
        and len(retry_events(http)) == 1
        and all(value is not None for value in metric_preferences(metric))
    )


PROBES: Final[tuple[Probe, ...]] = (
    Probe(
        "structlog._config._CONFIG (is_configured, default_wrapper_class, logger_factory)",
        "whether the application configured structlog, and its level check, per event",
        _holds_structlog_config,
    ),
    Probe(
        "vars(structlog._config._CONFIG)",
        "the cache hit's 'structlog never configured' in one dict truth test",
        lambda: isinstance(STRUCTLOG_STATE, dict) and STRUCTLOG_CONFIG is not None,
    ),
    Probe(
        "logging.Logger._cache",
        "'is debug on?' as one dict lookup on hot paths",
        _holds_level_cache,
    ),
    Probe(
        "StructlogInstrumentor._processor, _is_configured_by_app",
        "structlog configured only by opentelemetry-instrument keeps thunkscope on stdlib",
        _holds_instrumentor,
    ),
    Probe(
        "opentelemetry.trace._TRACER_PROVIDER, metrics._internal._METER_PROVIDER, "
        "_logs._internal._LOGGER_PROVIDER",
        "whether anyone traces or measures, without the API's always-present proxies",
        _holds_globals,
    ),
    Probe(
        "OTLP exporters' _endpoint, _client._shutdown_event, _preferred_temporality/aggregation",
        "name the collector in warnings, end retry backoff at shutdown, keep metric preferences",
        _holds_exporters,
    ),
    Probe(
        "asyncio._get_running_loop",
        "the running loop without an exception when there is none",
        lambda: callable(running_loop),
    ),
)
