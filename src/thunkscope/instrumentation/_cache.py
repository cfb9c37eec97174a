"""mellea's ``ClientCache``, observed on the class: every instance, existing ones included.

The wrappers call mellea's own methods and report what they did: ``get`` (hit or miss),
``put`` (evicted or not) and, on mellea 0.8, ``get_or_create`` (a hit, or a miss that ran
the factory; evicted or not). mellea 0.8 evicts inside ``_put_locked`` under its lock,
for ``put`` and ``get_or_create`` alike, and returns the evicted pair: that private
method is wrapped too, only to note that an eviction happened. On 0.6/0.7, which have no
lock, an eviction is read off the cache just before ``put`` (a new key at capacity), as
exact as mellea's own unlocked code.

Each cache is named after the mellea module that first uses it (``mellea.openai`` for
the OpenAI backend's), counted in thunkscope's shared cache counters under that name,
and its size and capacity feed the ``thunkscope.cache.entry.*`` gauges.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import Span

from thunkscope import _cacherec as cacherec
from thunkscope import names
from thunkscope._telemetry import CacheStats, end_span, telemetry
from thunkscope.instrumentation._naming import label_for_module

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]

_SKIPPED_MODULES = ("wrapt", "thunkscope.instrumentation")
_known: weakref.WeakKeyDictionary[Any, tuple[str, CacheStats]] = weakref.WeakKeyDictionary()
_known_lock = threading.Lock()


class _EvictionFlag(threading.local):
    evicted = False


_flag = _EvictionFlag()


def _identify(cache: Any) -> tuple[str, CacheStats]:
    """The name and shared counters of `cache`, named after its first caller's module."""
    known = _known.get(cache)
    if known is not None:
        return known
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_SKIPPED_MODULES):
        frame = frame.f_back  # type: ignore[assignment]
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    name = label_for_module(module)
    stats = telemetry.stats_for_cache(name)
    with _known_lock:
        known = _known.setdefault(cache, (name, stats))
    stats.caches.add(cache)
    return known


def _report(
    span: Span | None,
    cache: Any,
    name: str,
    *,
    result: str | None,
    evicted: bool | None,
    error: BaseException | None = None,
) -> None:
    """End the operation's span and log it, as thunkscope's own ClientCache does."""
    cacherec.report(
        span, name, len(cache.cache), cache.capacity, result=result, evicted=evicted, error=error
    )


def get_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``ClientCache.get``: mellea's lookup, then a hit or a miss (a cached None is a miss)."""
    name, stats = _identify(instance)
    span = cacherec.begin(names.SPAN_CACHE_GET, name)
    try:
        value = wrapped(*args, **kwargs)
    except BaseException as exc:
        _report(span, instance, name, result=None, evicted=None, error=exc)
        raise
    result = names.RESULT_MISS if value is None else names.RESULT_HIT
    cacherec.count(stats, result)
    _report(span, instance, name, result=result, evicted=None)
    return value


def make_put_wrapper(*, locked_evictions: bool) -> Wrapper:
    """``ClientCache.put``; evictions from ``_put_locked`` (0.8) or read off the cache (0.7)."""

    def put_wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        name, stats = _identify(instance)
        span = cacherec.begin(names.SPAN_CACHE_PUT, name)
        previous = _flag.evicted
        _flag.evicted = False
        if not locked_evictions:
            key = args[0] if args else kwargs.get("key")
            cache = instance.cache
            with contextlib.suppress(TypeError):  # an unhashable key: mellea raises below
                _flag.evicted = key not in cache and len(cache) >= instance.capacity
        try:
            wrapped(*args, **kwargs)
        except BaseException as exc:
            _flag.evicted = previous
            _report(span, instance, name, result=None, evicted=None, error=exc)
            raise
        evicted = _flag.evicted
        _flag.evicted = previous
        cacherec.count(stats, None, int(evicted))
        _report(span, instance, name, result=None, evicted=evicted)

    return put_wrapper


def get_or_create_wrapper(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``ClientCache.get_or_create`` (0.8): a hit, or a miss that built a value."""
    name, stats = _identify(instance)
    span = cacherec.begin(names.SPAN_CACHE_GET_OR_CREATE, name)
    built = False
    if len(args) >= 2:
        key, factory = args[0], args[1]
        rest_args: tuple[Any, ...] = args[2:]
        rest_kwargs = kwargs
    elif (args or "key" in kwargs) and "factory" in kwargs:
        key = args[0] if args else kwargs["key"]
        factory = kwargs["factory"]
        rest_args = args[1:]
        rest_kwargs = {k: v for k, v in kwargs.items() if k not in ("key", "factory")}
    else:  # not a call mellea accepts: let it say so
        if span is not None:
            end_span(span)
        return wrapped(*args, **kwargs)

    def observed_factory() -> Any:
        nonlocal built
        built = True
        return factory()

    previous = _flag.evicted
    _flag.evicted = False
    try:
        value = wrapped(key, observed_factory, *rest_args, **rest_kwargs)
    except BaseException as exc:
        _flag.evicted = previous
        result = names.RESULT_MISS if built else None
        cacherec.count(stats, result)
        _report(span, instance, name, result=result, evicted=None, error=exc)
        raise
    evicted = _flag.evicted
    _flag.evicted = previous
    result = names.RESULT_MISS if built else names.RESULT_HIT
    cacherec.count(stats, result, int(evicted))
    _report(span, instance, name, result=result, evicted=evicted)
    return value


def put_locked_wrapper(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``ClientCache._put_locked`` (0.8, under mellea's lock): note an eviction, nothing more."""
    evicted = wrapped(*args, **kwargs)
    if evicted is not None:
        _flag.evicted = True
    return evicted
