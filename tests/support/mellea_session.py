"""Real mellea sessions on the OpenAI backend, pointed at a loopback server, closed cleanly.

mellea's ``MelleaSession.cleanup()`` leaves the backend's cached async clients open (and
mellea 0.7 has no ``backend.close()`` at all), so a test that only cleans up the session
leaks a keep-alive socket, which the suite's ``filterwarnings = error`` turns into a
failure. `openai_session` closes every cached client on the loop that owns it.

Only the mellea test environments import this module (it imports mellea).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import mellea
from mellea.helpers import _run_async_in_thread


def start_openai_session(base_url: str, *, model_id: str = "fake-model", **kwargs: Any) -> Any:
    """A mellea session on the OpenAI backend at `base_url`, with retries off."""
    return mellea.start_session(
        "openai",
        model_id=model_id,
        base_url=base_url,
        api_key="test-key",
        max_retries=0,
        **kwargs,
    )


def close_openai_session(session: Any) -> None:
    """Clean the session up and close every client its backend built, on its own loop."""
    backend = session.backend
    with contextlib.suppress(Exception):
        session.cleanup()
    close = getattr(backend, "close", None)
    if callable(close):  # mellea 0.8: closes the sync client and every cached async client
        close()
        return
    # mellea 0.7: the cache is keyed by id(loop); the clients that ever connected were
    # built on mellea's background loop, the others never opened a socket.
    cache = getattr(backend, "_client_cache", None)
    clients = list(getattr(cache, "cache", {}).values())
    for client in clients:
        with contextlib.suppress(Exception):
            _run_async_in_thread(_close(client))
    with contextlib.suppress(Exception):
        backend._client.close()


async def _close(client: Any) -> None:
    result = client.close()
    if asyncio.iscoroutine(result):
        await result


@contextlib.contextmanager
def openai_session(base_url: str, **kwargs: Any) -> Iterator[Any]:
    """`start_openai_session` for the duration of a ``with`` block, closed at its end."""
    session = start_openai_session(base_url, **kwargs)
    try:
        yield session
    finally:
        close_openai_session(session)
