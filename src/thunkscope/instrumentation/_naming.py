"""The names mellea's streams and caches are labelled with: one per mellea backend module."""

from __future__ import annotations


def label_for_module(module_name: str) -> str:
    """The low-cardinality stream or cache name for code in `module_name`.

    ``mellea.backends.openai`` gives ``mellea.openai``; anything else gives ``mellea``.
    """
    prefix = "mellea.backends."
    if module_name.startswith(prefix):
        backend = module_name[len(prefix) :].split(".", 1)[0]
        if backend:
            return f"mellea.{backend}"
    return "mellea"
