"""`MelleaInstrumentor`: thunkscope's telemetry around mellea's own async helpers, in place.

mellea's backends bind the helpers by name when they are imported
(``from ..helpers import send_to_queue, ...``), so each function object is held by
``mellea.helpers.async_helpers``, ``mellea.helpers``, ``mellea.helpers.event_loop_helper``
and every backend module separately. `instrument()` replaces the original object in
every loaded ``mellea`` module that holds it (compared by identity), and, through a
post-import hook, in each backend module imported later. `ClientCache` is one class
shared by all, so its methods are wrapped on the class, which covers existing instances
too. `uninstrument()` puts every original object back exactly.

The wrappers call mellea's functions: mellea's behaviour stays its own (its calling
convention, its ``chunk_timeout`` and ``on_timeout``, its queue protocol, its cache and
client closing), with thunkscope's spans, metrics, logs and stall watch around it.
With the fast path (``instrument(fast_path=True)`` or ``THUNKSCOPE_MELLEA_FAST_PATH=1``)
``send_to_queue`` is instead served by thunkscope's own stream loop with the installed
release's behaviour (`thunkscope.instrumentation._fast`), when the release and its
function are ones it knows; otherwise it is wrapped as above, and one log line says why.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
import sys
import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Final

import wrapt
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from thunkscope import names
from thunkscope._settings import from_environment
from thunkscope._telemetry import telemetry
from thunkscope.instrumentation import _cache, _fast, _helpers
from thunkscope.instrumentation._naming import label_for_module
from thunkscope.instrumentation._stream import make_send_to_queue_wrapper
from thunkscope.instrumentation.package import _instruments

_log = logging.getLogger(names.LOGGER_NAME)

INSTALL_HINT: Final = (
    "thunkscope's MelleaInstrumentor instruments mellea, which is not installed: "
    f"pip install 'thunkscope[instruments]' ({'; '.join(_instruments)})"
)

_HELPERS_MODULE: Final = "mellea.helpers.async_helpers"
_BACKENDS_PACKAGE: Final = "mellea.backends"
_FUNCTIONS: Final = ("send_to_queue", "wait_for_all_mots", "get_current_event_loop")


@dataclass
class _Patches:
    """Everything one `instrument()` replaced, so `uninstrument()` can put it back."""

    originals: dict[str, Any]
    default_timeout: float | None
    # The release whose send_to_queue the fast path serves; None: wrapping mellea's own.
    fast: _fast.Release | None = None
    # Modules are held weakly: a strong reference would keep mellea's modules alive into
    # interpreter teardown, where their globals are already None when mellea's own
    # finalizers (``_EventLoopHandler.__del__``) run.
    bindings: list[tuple[weakref.ref[ModuleType], str, Any, Any]] = field(default_factory=list)
    # id of each wrapper of ours -> the module it was made for (the bindings keep it alive)
    wrappers: dict[int, str] = field(default_factory=dict)
    cache_class: type | None = None
    cache_methods: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrapper_for(self, module_name: str, attribute: str, original: Any) -> Any:
        """A wrapt proxy of `original`, as bound in `module_name`."""
        if attribute == "send_to_queue" and self.fast is not None:
            return _fast.make_fast_send_to_queue(
                self.fast, original, label_for_module(module_name), self.default_timeout
            )
        if attribute == "send_to_queue":
            return wrapt.FunctionWrapper(
                original,
                make_send_to_queue_wrapper(label_for_module(module_name), self.default_timeout),
            )
        if attribute == "wait_for_all_mots":
            return wrapt.FunctionWrapper(original, _helpers.wait_for_all_mots_wrapper)
        return wrapt.FunctionWrapper(original, _helpers.get_current_event_loop_wrapper)

    def patch_module(self, module: ModuleType) -> None:
        """Replace every original helper `module` binds (by identity) with its wrapper."""
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            return
        with self.lock:
            for attribute, original in self.originals.items():
                current = namespace.get(attribute)
                # The original, or a wrapper of ours that a module imported after
                # instrument() bound from ``mellea.helpers``: each module gets its own,
                # named after it. A module's own wrapper stays: wrapt runs the post-import
                # hook at once for a module already imported, which was patched already.
                owner = self.wrappers.get(id(current))
                if owner == module.__name__ or (current is not original and owner is None):
                    continue
                wrapper = self.wrapper_for(module.__name__, attribute, original)
                setattr(module, attribute, wrapper)
                self.wrappers[id(wrapper)] = module.__name__
                self.bindings.append((weakref.ref(module), attribute, original, wrapper))

    def restore(self) -> None:
        """Put every original object back where a wrapper of ours still stands."""
        with self.lock:
            for module_ref, attribute, original, wrapper in reversed(self.bindings):
                module = module_ref()
                if module is None:
                    continue
                current = module.__dict__.get(attribute)
                if current is wrapper:
                    setattr(module, attribute, original)
                elif id(current) not in self.wrappers:
                    _log.warning(
                        "thunkscope: %s.%s was replaced after instrumentation; left as it is",
                        module.__name__,
                        attribute,
                    )
            self.bindings.clear()
            self.wrappers.clear()
            cls = self.cache_class
            if cls is not None:
                for name, original in self.cache_methods.items():
                    setattr(cls, name, original)
                self.cache_methods.clear()


# The patches of the running instrumentation, read by post-import hooks registered once
# per process (wrapt cannot unregister them): None when not instrumented. The one record
# of them: BaseInstrumentor makes MelleaInstrumentor a singleton, so it is process-wide too.
_active: _Patches | None = None
_hooked: set[str] = set()


def _on_import(module: ModuleType) -> None:
    patches = _active
    if patches is not None:
        patches.patch_module(module)


def _is_mellea_module(name: str) -> bool:
    return name == "mellea" or name.startswith("mellea.")


class MelleaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments mellea's async helpers with thunkscope's telemetry.

    ``MelleaInstrumentor().instrument(tracer_provider=..., meter_provider=...,
    logger_provider=...)``; every argument is optional, the global providers are used
    otherwise. ``opentelemetry-instrument`` finds it through the
    ``opentelemetry_instrumentor`` entry point ``mellea``.
    """

    _own_providers = False
    _log_handler: logging.Handler | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The mellea releases this instrumentation supports."""
        return _instruments

    def instrument(self, **kwargs: Any) -> Any:
        """Instrument mellea; a clear `ModuleNotFoundError` if mellea is not installed.

        ``fast_path=True`` serves mellea's ``send_to_queue`` with thunkscope's own loop
        where the installed release is one it knows (see `fast_path_active`);
        ``False`` keeps mellea's loop, wrapped; unset (None), ``THUNKSCOPE_MELLEA_FAST_PATH``
        decides (off by default).
        """
        fast_path = kwargs.get("fast_path")
        if fast_path is not None and not isinstance(fast_path, bool):
            raise TypeError(
                f"fast_path must be True, False or None, got {type(fast_path).__name__} "
                f"{fast_path!r}"
            )
        if importlib.util.find_spec("mellea") is None:
            raise ModuleNotFoundError(INSTALL_HINT, name="mellea")
        return super().instrument(**kwargs)

    @property
    def fast_path_active(self) -> bool:
        """Whether mellea's ``send_to_queue`` is being served by thunkscope's own loop."""
        patches = _active
        return patches is not None and patches.fast is not None

    def _instrument(self, **kwargs: Any) -> None:
        global _active
        tracer_provider = kwargs.get("tracer_provider")
        meter_provider = kwargs.get("meter_provider")
        if tracer_provider is not None or meter_provider is not None:
            telemetry.use(tracer_provider=tracer_provider, meter_provider=meter_provider)
            self._own_providers = True
        logger_provider = kwargs.get("logger_provider")
        if logger_provider is not None:
            self._log_handler = _log_bridge(logger_provider)
        telemetry.instruments  # noqa: B018 - the observable counters must exist

        helpers = importlib.import_module(_HELPERS_MODULE)
        originals = {name: getattr(helpers, name) for name in _FUNCTIONS if hasattr(helpers, name)}
        default = getattr(helpers, "DEFAULT_CHUNK_TIMEOUT", None)
        patches = _Patches(originals, float(default) if isinstance(default, int | float) else None)
        fast_path = kwargs.get("fast_path")
        if fast_path is None:
            fast_path = from_environment("mellea_fast_path")
        if fast_path:
            patches.fast = _fast_release(originals.get("send_to_queue"))
        self._patch_cache_class(patches, getattr(helpers, "ClientCache", None))
        _active = patches
        for name, module in sys.modules.copy().items():  # copy(): atomic, unlike list()
            if _is_mellea_module(name) and module is not None:
                patches.patch_module(module)
        for name in _backend_modules():
            if name not in _hooked:
                _hooked.add(name)
                wrapt.register_post_import_hook(_on_import, name)

    @staticmethod
    def _patch_cache_class(patches: _Patches, cls: Any) -> None:
        if not isinstance(cls, type):
            return
        patches.cache_class = cls
        locked = "_put_locked" in vars(cls)
        wrappers: dict[str, Callable[..., Any]] = {
            "get": _cache.get_wrapper,
            "put": _cache.make_put_wrapper(locked_evictions=locked),
            "get_or_create": _cache.get_or_create_wrapper,
            "_put_locked": _cache.put_locked_wrapper,
        }
        for name, wrapper in wrappers.items():
            original = vars(cls).get(name)
            if original is None:
                continue
            patches.cache_methods[name] = original
            setattr(cls, name, wrapt.FunctionWrapper(original, wrapper))

    def _uninstrument(self, **kwargs: Any) -> None:
        global _active
        patches, _active = _active, None
        if patches is not None:
            patches.restore()
        if self._own_providers:
            telemetry.use()
            self._own_providers = False
        handler = self._log_handler
        if handler is not None:
            logging.getLogger(names.LOGGER_NAME).removeHandler(handler)
            self._log_handler = None


def _fast_release(original: Any) -> _fast.Release | None:
    """The release the fast path can serve, or None after one log line saying why not."""
    try:
        version: str | None = importlib.metadata.version("mellea")
    except importlib.metadata.PackageNotFoundError:
        version = None
    found = (
        "mellea.helpers.async_helpers has no send_to_queue"
        if original is None
        else _fast.recognise(original, version)
    )
    if isinstance(found, _fast.Release):
        return found
    _log.warning(
        "thunkscope: the mellea fast path is off: %s; mellea's own send_to_queue is "
        "wrapped instead",
        found,
    )
    return None


def _backend_modules() -> list[str]:
    """The backend modules mellea ships, found without importing them."""
    package = sys.modules.get(_BACKENDS_PACKAGE)
    path = getattr(package, "__path__", None)
    if path is None:
        return []
    return [f"{_BACKENDS_PACKAGE}.{info.name}" for info in pkgutil.iter_modules(path)]


def _log_bridge(logger_provider: Any) -> logging.Handler:
    from thunkscope.instrumentation._logs import OTelLogHandler

    handler = OTelLogHandler(logger_provider)
    logging.getLogger(names.LOGGER_NAME).addHandler(handler)
    return handler
