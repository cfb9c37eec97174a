"""This process's identity: `service.instance.id`, fresh in every process (SPEC section 6).

Worker processes of one service share its name; the instance id keeps their series and
traces apart. A child forked after `configure()` (gunicorn ``--preload``, multiprocessing
with fork) would otherwise inherit the parent's id: an at-fork hook draws a new one.
"""

from __future__ import annotations

import os
import sys
import uuid

from opentelemetry import trace as trace_api

from thunkscope._settings import from_environment

__all__ = ["instance_id", "service_name"]

_id = str(uuid.uuid4())


def instance_id() -> str:
    """The `service.instance.id` of this process (a UUID, new in each forked child)."""
    return _id


def _renew() -> None:
    global _id
    _id = str(uuid.uuid4())


os.register_at_fork(after_in_child=_renew)


def service_name() -> str:
    """The `service.name` this process reports: its tracer provider's resource, else
    ``OTEL_SERVICE_NAME``, else OTel's ``unknown_service:<program>``."""
    resource = getattr(trace_api.get_tracer_provider(), "resource", None)
    attributes = getattr(resource, "attributes", None) or {}
    name = attributes.get("service.name")
    if isinstance(name, str) and name:
        return name
    configured = from_environment("service_name")
    if isinstance(configured, str):
        return configured
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"unknown_service:{program}"
