"""_probes: every read of another library's private state still holds in the installed versions.

These fail loudly when an upgrade of structlog, logging, the OTel API/SDK or the OTLP
exporters removes or changes something thunkscope reads behind their public APIs (the
code would otherwise fall back to a slower or less exact path without a word).
"""

from __future__ import annotations

import ast
import logging
import pathlib
import subprocess
import sys

import pytest
import structlog

from thunkscope import _probes as probes

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "thunkscope"

# The reads of private state outside _probes, by (module, what is read): the cache hit
# path and the per-stream tracing check read the probes' objects inline, for speed;
# `sys._getframe` is CPython's documented frame access; `_gen`, `_call` and
# `_record_ttfb` are mellea's, checked by the mellea tests of each supported version (the
# fast path keeps mellea 0.8's per-chunk bookkeeping on the thunk exactly).
INLINE = {
    ("_cache.py", "_trace_state._TRACER_PROVIDER"),
    ("_cache.py", "_metrics_state._METER_PROVIDER"),
    ("_telemetry.py", "_trace_state._TRACER_PROVIDER"),
    ("instrumentation/_cache.py", "sys._getframe"),
    ("instrumentation/_fast.py", "mot._gen"),
    ("instrumentation/_fast.py", "mot._record_ttfb"),
    ("instrumentation/_ids.py", "target._call"),
    ("instrumentation/_stream.py", "target._gen"),
}


def private_reads_outside_probes() -> set[tuple[str, str]]:
    """(module, name.attribute) of every underscored attribute another object's code reads,
    as attribute access or getattr/hasattr with a constant name; own objects excluded."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_probes.py":
            continue
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                owner, attribute = node.value.id, node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name)
                and isinstance(node.args[1], ast.Constant)
            ):
                owner, attribute = node.args[0].id, str(node.args[1].value)
            else:
                continue
            private = attribute.startswith("_") and not attribute.startswith("__")
            if private and owner not in ("self", "cls"):
                found.add((where, f"{owner}.{attribute}"))
    return found


class TestProbes:
    @pytest.mark.parametrize("probe", probes.PROBES, ids=[p.reads for p in probes.PROBES])
    def test_holds(self, probe: probes.Probe) -> None:
        """The private state is there, in the shape thunkscope reads."""
        assert probe.holds(), f"{probe.reads} changed: {probe.why}"

    def test_structlog_state_follows_configure(self) -> None:
        """configure() and reset_defaults() show in the config object and its attributes."""
        structlog.configure(processors=[])
        try:
            assert probes.STRUCTLOG_CONFIG.is_configured is True
            assert probes.STRUCTLOG_STATE["is_configured"] is True
        finally:
            structlog.reset_defaults()
        assert probes.STRUCTLOG_CONFIG.is_configured is False
        assert probes.STRUCTLOG_STATE["is_configured"] is False

    def test_level_cache_follows_levels(self) -> None:
        """The logger's level cache holds isEnabledFor's answer and empties on a level change."""
        logger = logging.getLogger("thunkscope")
        saved = logger.level
        try:
            logger.setLevel(logging.DEBUG)
            assert logger.isEnabledFor(logging.DEBUG)
            assert probes.LEVEL_CACHE == {logging.DEBUG: True}
            logger.setLevel(logging.INFO)
            assert probes.LEVEL_CACHE == {}
            assert not logger.isEnabledFor(logging.DEBUG)
            assert probes.LEVEL_CACHE == {logging.DEBUG: False}
        finally:
            logger.setLevel(saved)

    def test_global_providers_follow_the_api(self) -> None:
        """The API's global provider attributes are None until set, then set (own process)."""
        code = (
            "from opentelemetry import trace, metrics, _logs\n"
            "from opentelemetry.sdk.trace import TracerProvider\n"
            "from opentelemetry.sdk.metrics import MeterProvider\n"
            "from opentelemetry.sdk._logs import LoggerProvider\n"
            "from thunkscope import _probes as p\n"
            "kinds = ('traces', 'metrics', 'logs')\n"
            "before = [p.global_provider_set(k) for k in kinds] + [p.tracer_provider_set()]\n"
            "trace.set_tracer_provider(TracerProvider())\n"
            "metrics.set_meter_provider(MeterProvider())\n"
            "_logs.set_logger_provider(LoggerProvider())\n"
            "after = [p.global_provider_set(k) for k in kinds] + [p.tracer_provider_set()]\n"
            "print(before, after)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str([False] * 4) + " " + str([True] * 4)


# thunkscope's own objects, read by their own module: not another library's state.
OWN = {
    ("_cache.py", "owner._dead"),
    ("_config.py", "handle._at_exit"),
    ("_demo.py", "summary._ttfi_count"),
    ("_demo.py", "summary._ttfi_sum"),
}


class TestOnePlace:
    def test_no_other_private_reads(self) -> None:
        """Outside _probes, only the listed inline reads of other objects' private state
        (and thunkscope's own objects): a new one must be classified here to pass."""
        assert private_reads_outside_probes() == INLINE | OWN
