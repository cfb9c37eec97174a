"""mellea's correlation ids, read inside the producer task, and the names they go under.

mellea keeps its request, model and session ids in contextvars
(`mellea.telemetry.context`, 0.6 and later), which the producer task copies when the
backend creates it; mellea 0.8 also hands the producer the thunk, whose
``_call.generation_id`` is set before the task first runs. Nothing here imports mellea:
`reader()` takes the context module once mellea is loaded, and every read tolerates its
absence.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final

# Span attributes (mellea puts none of these ids on its own spans, except the session id,
# which it calls ``mellea.session.id``; ``gen_ai.request.model`` is the GenAI convention).
REQUEST_ID: Final = "mellea.request.id"
GENERATION_ID: Final = "mellea.generation.id"
SESSION_ID: Final = "mellea.session.id"
MODEL: Final = "gen_ai.request.model"

# The same ids in log events (flat, snake_case, like the other fields thunkscope logs).
LOG_FIELDS: Final = {
    REQUEST_ID: "mellea_request_id",
    GENERATION_ID: "mellea_generation_id",
    SESSION_ID: "mellea_session_id",
    MODEL: "model",
}

_CONTEXT_MODULE: Final = "mellea.telemetry.context"
_GETTERS: Final = (
    (REQUEST_ID, "get_request_id"),
    (SESSION_ID, "get_session_id"),
    (MODEL, "get_model_id"),
)


def _getters() -> list[tuple[str, Callable[[], Any]]]:
    module = sys.modules.get(_CONTEXT_MODULE)
    if module is None:
        return []
    found = []
    for key, name in _GETTERS:
        getter = getattr(module, name, None)
        if callable(getter):
            found.append((key, getter))
    return found


def context_ids() -> dict[str, str]:
    """The ids mellea's contextvars hold in the current context (only those that are set)."""
    ids: dict[str, str] = {}
    for key, getter in _getters():
        try:
            value = getter()
        except Exception:  # a mellea whose context module changed: no id rather than an error
            continue
        if value is not None:
            ids[key] = str(value)
    return ids


def generation_id(target: object) -> str | None:
    """The generation id of a mellea 0.8 thunk, or None (a queue, or not yet assigned)."""
    call = getattr(target, "_call", None)
    value = getattr(call, "generation_id", None)
    return value if isinstance(value, str) and value else None


def log_fields(ids: dict[str, str]) -> dict[str, str]:
    """The ids as log-event fields."""
    return {LOG_FIELDS[key]: value for key, value in ids.items()}
