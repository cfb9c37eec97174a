"""mellea's ``wait_for_all_mots`` and ``get_current_event_loop``, observed.

mellea's functions run unchanged; around them, the span, metrics and log event of
thunkscope's own helpers of the same names (`thunkscope._gather`, `thunkscope._loop`).
"""

from __future__ import annotations

from collections.abc import Coroutine, Sized
from typing import Any

from thunkscope import _gather as core_gather
from thunkscope import _loop as core_loop


def wait_for_all_mots_wrapper(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Coroutine[Any, Any, None]:
    """``wait_for_all_mots``: one gather span around mellea's gather."""
    return _observed_gather(wrapped, args, kwargs)


async def _observed_gather(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    mots = args[0] if args else kwargs.get("mots")
    if mots is not None and not isinstance(mots, Sized):
        try:
            mots = list(mots)  # mellea iterates it once too: same thunks, now countable
        except TypeError:
            pass  # not iterable: mellea raises its own error below
        else:
            if args:
                args = (mots, *args[1:])
            else:
                kwargs = {**kwargs, "mots": mots}
    size = len(mots) if isinstance(mots, Sized) else 0
    await core_gather.observed(size, lambda: wrapped(*args, **kwargs))


def get_current_event_loop_wrapper(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``get_current_event_loop``: mellea's answer, counted, with the core's span and log."""
    loop = wrapped(*args, **kwargs)
    core_loop.observe_lookup(loop is not None)
    return loop
