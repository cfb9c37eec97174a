"""The instrumentation's version: thunkscope's own."""

from __future__ import annotations

from thunkscope._version import __version__

__all__ = ["__version__"]
