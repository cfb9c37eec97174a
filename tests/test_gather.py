"""wait_for_all_mots (_gather.py): its span, and its log when cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from conftest import Telemetry
from support.fakes import HANG, Thunk
from thunkscope import names, wait_for_all_mots

pytestmark = pytest.mark.virtual_time  # the hang takes no real time


class TestGatherSpan:
    async def test_gather(self, telemetry: Telemetry) -> None:
        """wait_for_all_mots records its size and outcome on an INTERNAL span."""
        await wait_for_all_mots([Thunk(1), Thunk(2), Thunk(3)])
        (span,) = telemetry.spans()
        assert (span.name, span.kind) == (names.SPAN_WAIT_FOR_ALL_MOTS, SpanKind.INTERNAL)
        assert dict(span.attributes or {}) == {
            names.GATHER_SIZE: 3,
            names.GATHER_OUTCOME: names.OUTCOME_COMPLETED,
        }

    async def test_gather_failure(self, telemetry: Telemetry) -> None:
        """A failing thunk propagates and marks the span as an error with error.type."""
        with pytest.raises(KeyError):
            await wait_for_all_mots([Thunk(1), Thunk(KeyError("k"))])
        (span,) = telemetry.spans()
        assert dict(span.attributes or {}) == {
            names.GATHER_SIZE: 2,
            names.GATHER_OUTCOME: names.OUTCOME_ERROR,
            names.ERROR_TYPE: "KeyError",
        }
        assert span.status.status_code == StatusCode.ERROR


class TestGatherLog:
    async def test_cancelled_gather_warns(self, log_events: list[dict[str, Any]]) -> None:
        """A cancelled gather logs gather.failed at warning, outcome cancelled, no error_type."""

        class Hanging:
            async def avalue(self) -> None:
                await asyncio.sleep(HANG)

        task = asyncio.create_task(wait_for_all_mots([Hanging(), Hanging()]))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (event,) = log_events
        assert (event["event"], event["log_level"], event["outcome"]) == (
            names.LOG_GATHER_FAILED,
            "warning",
            names.OUTCOME_CANCELLED,
        )
        assert "error_type" not in event
