"""A pytest plugin that runs mellea's own test suites with thunkscope's instrumentor on.

Loaded with ``-p support.mellea_instrumented`` (``tests`` on ``PYTHONPATH``) by
``scripts/test-mellea-suites.sh``. It instruments mellea before any conftest or test module
imports it: mellea's tests bind ``send_to_queue`` and friends by name at import, so they
must find thunkscope's objects already in place, or they would test mellea alone.

The mode is ``THUNKSCOPE_MELLEA_FAST_PATH`` ("0": wrapping mellea's own functions, "1":
thunkscope's fast path), which must be set explicitly. The run fails loudly, before any
test, if the instrumentor is not active in that mode, and at the end if no stream went
through it (a suite that never reached the instrumentor proves nothing). The telemetry
goes to in-memory SDK providers, so every span and metric is really recorded.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any, Final

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from thunkscope import names
from thunkscope.instrumentation import MelleaInstrumentor

MODE_VARIABLE: Final = "THUNKSCOPE_MELLEA_FAST_PATH"
MODES: Final = {"0": "wrapping", "1": "fast path"}
# The line scripts/test-mellea-suites.sh collects into its table.
SUMMARY_PREFIX: Final = "thunkscope-mellea-suite:"


class _Run:
    """The instrumentation of this pytest process and what it recorded."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        self.instrumentor = MelleaInstrumentor()
        self.mode = ""
        self.wrapped: Any = None

    def start(self) -> None:
        """Instrument mellea in the requested mode, or stop the run saying what is wrong."""
        value = os.environ.get(MODE_VARIABLE)
        if value not in MODES:
            raise pytest.UsageError(
                f"{MODE_VARIABLE} must be set to 0 (wrapping) or 1 (fast path) for a run of "
                f"mellea's tests with thunkscope's instrumentor; got {value!r}"
            )
        self.mode = MODES[value]
        from mellea.helpers import async_helpers

        original = async_helpers.send_to_queue
        self.instrumentor.instrument(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )
        self.wrapped = async_helpers.send_to_queue
        if not self.instrumentor.is_instrumented_by_opentelemetry or self.wrapped is original:
            raise pytest.UsageError(
                "thunkscope's MelleaInstrumentor did not replace "
                "mellea.helpers.async_helpers.send_to_queue: mellea's tests would run bare"
            )
        # `fast_path_active` tells whether thunkscope's loop serves send_to_queue; an
        # instrumentor without it only wraps.
        fast = getattr(self.instrumentor, "fast_path_active", None)
        if (fast is True) != (value == "1"):
            raise pytest.UsageError(
                f"{MODE_VARIABLE}={value} asks for the {self.mode} mode, but the instrumentor "
                f"reports fast_path_active={fast!r} for mellea "
                f"{importlib.metadata.version('mellea')}"
            )

    def streams(self) -> int:
        """How many send_to_queue spans thunkscope recorded."""
        return len(
            [s for s in self.exporter.get_finished_spans() if s.name == names.SPAN_SEND_TO_QUEUE]
        )


_run = _Run()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Instrument before mellea's conftest (which imports mellea) is loaded."""
    _run.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a run whose tests never sent a stream through thunkscope's instrumentor."""
    from mellea.helpers import async_helpers

    if async_helpers.send_to_queue is not _run.wrapped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        _run.mode += " (LOST: send_to_queue was rebound during the run)"
    elif session.testscollected and _run.streams() == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        _run.mode += " (NO STREAM went through the instrumentor)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line of counts per run, and every skip with mellea's reason."""
    stats = terminalreporter.stats
    counts = {key: len(stats.get(key, [])) for key in ("passed", "failed", "skipped", "deselected")}
    counts["failed"] += len(stats.get("error", []))  # errors in setup or teardown fail too
    version = importlib.metadata.version("mellea")
    terminalreporter.write_line(
        f"{SUMMARY_PREFIX} mellea {version} | {_run.mode} | "
        + " ".join(f"{key}={value}" for key, value in counts.items())
        + f" | streams through thunkscope={_run.streams()}"
    )
    for report in stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        terminalreporter.write_line(f"{SUMMARY_PREFIX}   skipped {report.nodeid}: {reason}")
