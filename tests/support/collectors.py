"""Real OTLP collectors for tests: the ``rotel`` and ``oteltap`` fixtures.

Loaded as a pytest plugin (``pytest_plugins = ["support.collectors"]`` in ``tests/conftest.py``).
The classes are plain context managers too, usable outside pytest (benchmarks, scripts).

``RotelCollector`` runs the real ``rotel-agent`` binary shipped in the ``rotel`` wheel, with its
debug exporter printing everything it receives, and parses that text back into dicts.
``OtelTapCollector`` wraps oteltap's in-process OTLP/HTTP (protobuf) receiver and records every
span, metric and log record from the moment it starts, so nothing has to be registered before
sending.

Both return the same record shapes (``SpanRecord``, ``MetricPoint``, ``LogRecordData``), so an
assertion written against one works against the other (oteltap knows no resource: its records
have ``resource == {}`` and ``service_name is None``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from support.loopback import free_port
from support.oteltap import OtelTapCollector
from support.records import (
    LogRecordData,
    MetricPoint,
    SpanEventRecord,
    SpanLinkRecord,
    SpanRecord,
)
from support.rotel import RotelCollector, find_rotel_agent, parse_rotel_output

__all__ = [
    "LogRecordData",
    "MetricPoint",
    "OtelTapCollector",
    "RotelCollector",
    "SpanEventRecord",
    "SpanLinkRecord",
    "SpanRecord",
    "find_rotel_agent",
    "free_port",
    "oteltap",
    "parse_rotel_output",
    "rotel",
]


# --------------------------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def rotel(tmp_path: Path) -> Iterator[RotelCollector]:
    """A running rotel-agent (``RotelCollector``), output in ``tmp_path``; stopped after."""
    with RotelCollector(tmp_path / "rotel") as collector:
        yield collector


@pytest_asyncio.fixture
async def oteltap() -> AsyncIterator[OtelTapCollector]:
    """A running oteltap receiver (``OtelTapCollector``) on the test's event loop."""
    async with OtelTapCollector() as collector:
        yield collector
