"""_cacherec: one record of a cache operation for ClientCache and the mellea wrappers."""

from __future__ import annotations

import ast
import pathlib

import pytest

from thunkscope import _cacherec as cacherec
from thunkscope import _events as events
from thunkscope import names
from thunkscope._telemetry import CacheStats

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "thunkscope"


class TestTable:
    def test_result_to_level_and_event(self) -> None:
        """Each result is logged at one level under one event name, for both front ends."""
        assert cacherec.LOG_BY_RESULT == {
            names.RESULT_HIT: (events.DEBUG, names.LOG_CACHE_HIT),
            names.RESULT_MISS: (events.INFO, names.LOG_CACHE_MISS),
            names.RESULT_STALE: (events.INFO, names.LOG_CACHE_MISS),
            None: (events.DEBUG, names.LOG_CACHE_PUT),
        }


class TestCount:
    @pytest.mark.parametrize(
        ("result", "evictions", "expected"),
        [
            (names.RESULT_HIT, 0, (1, 0, 0, 0)),
            (names.RESULT_MISS, 2, (0, 1, 0, 2)),
            (names.RESULT_STALE, 1, (0, 0, 1, 1)),
            (None, 1, (0, 0, 0, 1)),
            (None, 0, (0, 0, 0, 0)),
        ],
    )
    def test_counts(self, result: str | None, evictions: int, expected: tuple[int, ...]) -> None:
        """One operation bumps its result's counter and the evictions, nothing else."""
        stats = CacheStats()
        cacherec.count(stats, result, evictions)
        assert (stats.hits, stats.misses, stats.stale, stats.evictions) == expected

    def test_only_place_that_counts(self) -> None:
        """No other module adds to a cache counter: hits, misses, stale and evictions are
        counted in _cacherec.count alone."""
        counters = {"hits", "misses", "stale", "evictions"}
        found = []
        for path in sorted(PACKAGE.rglob("*.py")):
            if path.name == "_cacherec.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.AugAssign)
                    and isinstance(node.target, ast.Attribute)
                    and node.target.attr in counters
                ):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
        assert found == []
