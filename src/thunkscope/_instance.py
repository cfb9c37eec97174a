"""This process's identity: `service.name` and `service.instance.id` (SPEC section 6).

Worker processes of one service share its name; the instance id keeps their series and
traces apart. The OTel SDK (1.45+) gives every resource a random ``service.instance.id``
and, in a child forked after the providers exist (gunicorn ``--preload``, multiprocessing
with fork), merges a fresh one into each provider's resource. thunkscope uses that same
id, so a discovery file names the instance its telemetry carries.
"""

from __future__ import annotations

import os
import sys

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, ServiceInstanceIdResourceDetector

from thunkscope._settings import from_environment

__all__ = ["instance_id", "service_name"]


def _resource_attribute(name: str) -> str | None:
    resource = getattr(trace_api.get_tracer_provider(), "resource", None)
    value = (getattr(resource, "attributes", None) or {}).get(name)
    return value if isinstance(value, str) and value else None


def instance_id() -> str:
    """The ``service.instance.id`` of this process: its tracer provider's, else the SDK's
    per-process id (new in each forked child)."""
    return _resource_attribute(SERVICE_INSTANCE_ID) or str(
        ServiceInstanceIdResourceDetector().detect().attributes[SERVICE_INSTANCE_ID]
    )


def service_name() -> str:
    """The `service.name` this process reports: its tracer provider's resource, else
    ``OTEL_SERVICE_NAME``, else OTel's ``unknown_service:<program>``."""
    name = _resource_attribute("service.name")
    if name:
        return name
    configured = from_environment("service_name")
    if isinstance(configured, str):
        return configured
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"unknown_service:{program}"
