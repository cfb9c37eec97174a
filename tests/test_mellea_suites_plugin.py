"""Tests of the pytest plugin that runs mellea's own tests with the instrumentor on.

`support.mellea_instrumented` must instrument mellea before a test module binds mellea's
helpers, refuse to run in a mode it cannot prove, and count what ran; each test runs a
small suite in a pytest subprocess of this mellea environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.mellea

TESTS = Path(__file__).resolve().parent

# A suite that binds send_to_queue by name at import, as mellea's tests do, and streams once
# through whichever calling convention the installed mellea has.
STREAMING_SUITE = """
import asyncio
import inspect

import pytest
from mellea.helpers.async_helpers import send_to_queue


def test_streams() -> None:
    async def items():
        yield "a"

    async def main() -> list:
        queue = asyncio.Queue()
        target = queue
        if "mot" in inspect.signature(inspect.unwrap(send_to_queue)).parameters:
            from mellea.core import ModelOutputThunk

            target = ModelOutputThunk(None)
            target._gen.queue = queue
        await send_to_queue(items(), target)
        return [queue.get_nowait(), queue.get_nowait()]

    assert asyncio.run(main()) == ["a", None]


def test_skipped() -> None:
    pytest.skip("needs a model server")
"""

QUIET_SUITE = """
def test_nothing_streams() -> None:
    assert 1 + 1 == 2
"""


# Loaded with -p before the plugin: mellea's send_to_queue replaced by a function the fast
# path does not recognise, so the instrumentor can only wrap it.
UNKNOWN_SEND_TO_QUEUE = """
from mellea.helpers import async_helpers

original = async_helpers.send_to_queue


async def send_to_queue(*args, **kwargs):
    return await original(*args, **kwargs)


async_helpers.send_to_queue = send_to_queue
"""


def run_suite(
    tmp_path: Path, suite: str, mode: str | None, *first: str
) -> subprocess.CompletedProcess[str]:
    """Run `suite` under the plugin, with THUNKSCOPE_MELLEA_FAST_PATH=`mode` (None: unset),
    after the plugin modules `first` (in `tmp_path`)."""
    (tmp_path / "test_suite.py").write_text(textwrap.dedent(suite))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(tmp_path)])}
    env.pop("THUNKSCOPE_MELLEA_FAST_PATH", None)
    if mode is not None:
        env["THUNKSCOPE_MELLEA_FAST_PATH"] = mode
    plugins = [arg for name in (*first, "support.mellea_instrumented") for arg in ("-p", name)]
    options = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, *options, "test_suite.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def summary(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("thunkscope-mellea")]


class TestMelleaInstrumentedPlugin:
    """The plugin instruments first, refuses unproven modes and counts what ran."""

    def test_counts_a_wrapped_run(self, tmp_path: Path) -> None:
        """In wrapping mode a suite that binds send_to_queue at import streams through it."""
        from importlib.metadata import version

        result = run_suite(tmp_path, STREAMING_SUITE, "0")
        assert result.returncode == 0, result.stdout + result.stderr
        assert summary(result) == [
            f"thunkscope-mellea-suite: mellea {version('mellea')} | wrapping | passed=1 "
            "failed=0 skipped=1 deselected=0 | streams through thunkscope=1",
            "thunkscope-mellea-suite:   skipped test_suite.py::test_skipped: "
            "Skipped: needs a model server",
        ]

    def test_counts_a_fast_path_run(self, tmp_path: Path) -> None:
        """With THUNKSCOPE_MELLEA_FAST_PATH=1 the fast path serves the suite's stream."""
        from importlib.metadata import version

        result = run_suite(tmp_path, STREAMING_SUITE, "1")
        assert result.returncode == 0, result.stdout + result.stderr
        assert summary(result)[0] == (
            f"thunkscope-mellea-suite: mellea {version('mellea')} | fast path | passed=1 "
            "failed=0 skipped=1 deselected=0 | streams through thunkscope=1"
        )

    def test_fast_path_not_serving_stops_the_run(self, tmp_path: Path) -> None:
        """Asked for the fast path where the instrumentor falls back to wrapping, the run stops
        before any test, saying so."""
        from importlib.metadata import version

        (tmp_path / "unknown_send_to_queue.py").write_text(UNKNOWN_SEND_TO_QUEUE)
        result = run_suite(tmp_path, STREAMING_SUITE, "1", "unknown_send_to_queue")
        assert result.returncode == pytest.ExitCode.USAGE_ERROR
        assert (
            "THUNKSCOPE_MELLEA_FAST_PATH=1 asks for the fast path mode, but the instrumentor "
            f"reports fast_path_active=False for mellea {version('mellea')}"
        ) in result.stderr
        assert summary(result) == []

    def test_mode_must_be_given(self, tmp_path: Path) -> None:
        """Without THUNKSCOPE_MELLEA_FAST_PATH the run stops before any test, naming it."""
        result = run_suite(tmp_path, STREAMING_SUITE, None)
        assert result.returncode == pytest.ExitCode.USAGE_ERROR
        assert "THUNKSCOPE_MELLEA_FAST_PATH must be set to 0 (wrapping) or 1" in result.stderr
        assert summary(result) == []

    def test_a_suite_that_never_streams_fails(self, tmp_path: Path) -> None:
        """Passing tests that never reach the instrumentor do not make a passing run."""
        result = run_suite(tmp_path, QUIET_SUITE, "0")
        assert result.returncode == pytest.ExitCode.TESTS_FAILED
        assert summary(result)[0].endswith(
            "| wrapping (NO STREAM went through the instrumentor) | passed=1 failed=0 "
            "skipped=0 deselected=0 | streams through thunkscope=0"
        )
