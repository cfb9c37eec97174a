"""get_current_event_loop (_loop.py): its span, inside and outside a running loop."""

from __future__ import annotations

import asyncio

from opentelemetry.trace import SpanKind

from conftest import Telemetry
from thunkscope import get_current_event_loop, names


class TestLoopLookupSpan:
    async def test_event_loop_lookup(self, telemetry: Telemetry) -> None:
        """get_current_event_loop records whether it found a loop."""
        assert get_current_event_loop() is asyncio.get_running_loop()
        (span,) = telemetry.spans()
        assert (span.name, span.kind) == (names.SPAN_GET_CURRENT_EVENT_LOOP, SpanKind.INTERNAL)
        assert dict(span.attributes or {}) == {names.EVENT_LOOP_FOUND: True}

    def test_event_loop_lookup_outside_loop(self, telemetry: Telemetry) -> None:
        """Outside any loop the lookup returns None, never raises, and says found=False."""
        assert get_current_event_loop() is None
        (span,) = telemetry.spans()
        assert dict(span.attributes or {}) == {names.EVENT_LOOP_FOUND: False}
