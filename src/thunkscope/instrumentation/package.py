"""The mellea releases the instrumentation supports, mirrored by the ``instruments`` extra."""

from __future__ import annotations

_instruments = ("mellea >= 0.6.0, < 0.9",)

_supports_metrics = True
