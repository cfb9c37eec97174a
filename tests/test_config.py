"""configure() and the ways an application may (not) set up OTel, each in a fresh interpreter.

OTel's global providers can be set once per process, so every test that sets them runs a
script with ``support.faulty.run_python`` and reads back the JSON it prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support.collectors import RotelCollector
from support.faulty import FaultyCollector, run_python
from thunkscope import names

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Calls every helper once per round and checks each result; `rounds` is a parameter.
HELPERS = r"""
import asyncio, json
import thunkscope
from thunkscope import ClientCache, get_current_event_loop, send_to_queue, wait_for_all_mots

class Thunk:
    async def avalue(self):
        return 1

async def items():
    for i in range(3):
        yield i

async def helpers(rounds):
    cache = ClientCache(2, name="config")
    for _ in range(rounds):
        queue = asyncio.Queue()
        await send_to_queue(items(), queue, name="config")
        assert [queue.get_nowait() for _ in range(4)] == [0, 1, 2, None]
        assert await wait_for_all_mots([Thunk(), Thunk()]) is None
        assert get_current_event_loop() is asyncio.get_running_loop()
        cache.get("k")
        cache.put("k", "v")
        assert cache.get("k") == "v"

def run(rounds=1):
    asyncio.run(helpers(rounds))
"""

IN_MEMORY = r"""
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

def set_in_memory_providers():
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return exporter, reader

def span_names(exporter):
    return sorted(s.name for s in exporter.get_finished_spans())

def metric_values(reader):
    found = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    key = metric.name + str(sorted(point.attributes.items()))
                    found[key] = getattr(point, "value", None) or getattr(point, "count", None)
    return found
"""


def script(*parts: str) -> str:
    return "\n".join(textwrap.dedent(part) for part in parts)


class TestWithoutConfigure:
    def test_no_providers_at_all(self) -> None:
        """With no SDK anywhere the helpers work and print nothing, on stdout or stderr."""
        result = run_python(
            script(
                HELPERS,
                """
                import logging, warnings
                warnings.simplefilter("error")
                run(rounds=3)
                import structlog
                from opentelemetry import trace
                from opentelemetry._logs import _internal as logs_internal
                from opentelemetry.metrics import _internal as metrics_internal
                print(json.dumps({
                    "tracer": repr(trace._TRACER_PROVIDER),
                    "meter": repr(metrics_internal._METER_PROVIDER),
                    "logger": repr(logs_internal._LOGGER_PROVIDER),
                    "structlog_configured": structlog.is_configured(),
                    "root_handlers": [repr(h) for h in logging.getLogger().handlers],
                    "thunkscope_handlers": [
                        repr(h) for h in logging.getLogger("thunkscope").handlers
                    ],
                    "thunkscope_level": logging.getLogger("thunkscope").level,
                }))
                """,
            )
        )
        assert result["tracer"] == "None"
        assert result["meter"] == "None"
        assert result["logger"] == "None"
        assert result["structlog_configured"] is False
        assert result["root_handlers"] == []
        assert result["thunkscope_handlers"] == []
        assert result["thunkscope_level"] == 0  # NOTSET: the application's to choose
        assert result["_stderr"] == ""

    def test_providers_set_after_import(self) -> None:
        """Providers the application sets after thunkscope ran once are picked up."""
        result = run_python(
            script(
                HELPERS,
                IN_MEMORY,
                """
                run(rounds=2)  # tracer and instruments are first looked up here, with no SDK
                exporter, reader = set_in_memory_providers()
                run(rounds=1)
                values = metric_values(reader)
                print(json.dumps({"spans": span_names(exporter), "metrics": values}))
                """,
            )
        )
        assert result["spans"] == sorted(
            [
                names.SPAN_SEND_TO_QUEUE,
                names.SPAN_WAIT_FOR_ALL_MOTS,
                names.SPAN_GET_CURRENT_EVENT_LOOP,
            ]
            + [names.SPAN_CACHE_GET] * 2
            + [names.SPAN_CACHE_PUT]
        )
        metrics = result["metrics"]
        duration = [k for k in metrics if k.startswith("thunkscope.stream.duration")]
        assert [metrics[k] for k in duration] == [1]  # the one stream since the SDK was set
        assert any(k.startswith("thunkscope.cache.lookups") for k in metrics)
        assert any(k.startswith("thunkscope.event_loop.lookups") for k in metrics)

    def test_sdk_disabled_by_environment(self) -> None:
        """OTEL_SDK_DISABLED=true: configure() sets nothing up and the helpers still work."""
        result = run_python(
            script(
                HELPERS,
                """
                from opentelemetry import trace
                handle = thunkscope.configure(service_name="off")
                run(rounds=2)
                handle.shutdown()
                print(json.dumps({
                    "providers": [handle.tracer_provider, handle.meter_provider,
                                  handle.logger_provider],
                    "global": repr(trace._TRACER_PROVIDER),
                }, default=repr))
                """,
            ),
            env={"OTEL_SDK_DISABLED": "true"},
        )
        assert result["providers"] == [None, None, None]
        assert result["global"] == "None"

    def test_sdk_disabled_with_providers_set(self) -> None:
        """OTEL_SDK_DISABLED=true with SDK providers set by the application: helpers still work."""
        result = run_python(
            script(
                HELPERS,
                IN_MEMORY,
                """
                exporter, reader = set_in_memory_providers()
                run(rounds=2)
                print(json.dumps({"spans": span_names(exporter)}))
                """,
            ),
            env={"OTEL_SDK_DISABLED": "true"},
        )
        assert result["spans"] == []


@pytest.mark.slow
class TestConfigureExports:
    @pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
    def test_spans_metrics_logs_reach_the_collector(
        self, rotel: RotelCollector, protocol: str
    ) -> None:
        """configure() exports all three signals, with the service name, over either protocol."""
        endpoint = rotel.http_endpoint if protocol == "http/protobuf" else rotel.grpc_endpoint
        run_python(
            script(
                HELPERS,
                """
                import os
                handle = thunkscope.configure(
                    service_name="configured", endpoint=os.environ["ENDPOINT"],
                    protocol=os.environ["PROTOCOL"],
                )
                run(rounds=1)
                handle.shutdown()
                print(json.dumps({"ok": True}))
                """,
            ),
            env={"ENDPOINT": endpoint, "PROTOCOL": protocol},
        )
        spans = rotel.wait_for_spans(6)
        assert {s["service_name"] for s in spans} == {"configured"}
        rotel.wait_for_point("thunkscope.stream.duration")
        rotel.wait_for_logs(where=lambda r: r["body"] == names.LOG_STREAM_COMPLETED)

    def test_standard_environment_variables(self, rotel: RotelCollector) -> None:
        """OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME stand in for the arguments."""
        run_python(
            script(
                HELPERS,
                """
                handle = thunkscope.configure()
                run(rounds=1)
                handle.shutdown()
                print(json.dumps({"ok": True}))
                """,
            ),
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": rotel.http_endpoint, "OTEL_SERVICE_NAME": "env"},
        )
        assert {s["service_name"] for s in rotel.wait_for_spans(6)} == {"env"}

    def test_exit_flushes_without_shutdown(self, rotel: RotelCollector) -> None:
        """An application that never calls shutdown() still has its telemetry flushed at exit."""
        run_python(
            script(
                HELPERS,
                """
                import os
                thunkscope.configure(endpoint=os.environ["ENDPOINT"])
                run(rounds=1)
                print(json.dumps({"ok": True}))
                """,
            ),
            env={"ENDPOINT": rotel.http_endpoint},
        )
        assert len(rotel.wait_for_spans(6)) == 6

    def test_exit_is_bounded_with_a_hanging_collector(self) -> None:
        """Exiting without shutdown() while the collector hangs ends the process cleanly."""
        with FaultyCollector("hang") as collector:
            code = script(
                HELPERS,
                """
                import os, time
                thunkscope.configure(endpoint=os.environ["ENDPOINT"])
                run(rounds=1)
                print(time.time(), flush=True)
                """,
            )
            env = {"ENDPOINT": collector.endpoint, "PYTHONPATH": SRC}
            proc = subprocess.run(
                [sys.executable, "-c", code],
                env={**_clean_env(), **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            exited = time.time()
        # It exited (within run's generous deadline) after the script's last line ran; how
        # long the atexit shutdown took is load-dependent: the bound itself is asserted by
        # test_shutdown_gives_up_on_a_provider_that_never_finishes, without a clock.
        script_ended = float(proc.stdout.split()[-1])
        assert proc.returncode == 0
        assert script_ended <= exited


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "THUNKSCOPE_"))}


class TestConfigureSettings:
    def test_arguments_reach_the_settings(self) -> None:
        """spans, stall_after, capture_content, content_limit and name_limit take effect."""
        result = run_python(
            script(
                HELPERS,
                """
                from thunkscope._telemetry import telemetry
                handle = thunkscope.configure(
                    endpoint="http://127.0.0.1:9", spans="in_trace", stall_after=2.5,
                    capture_content=True, content_limit=12, name_limit=7, log_format=None,
                )
                s = telemetry.settings
                print(json.dumps({
                    "settings": [s.span_mode, s.stall_after, s.capture_content, s.content_limit,
                                 s.name_limit],
                    "caps": [telemetry.stream_names.limit, telemetry.cache_names.limit],
                }))
                handle.shutdown(timeout_s=0.5)
                """,
            )
        )
        assert result["settings"] == ["in_trace", 2.5, True, 12, 7]
        assert result["caps"] == [7, 7]

    def test_shutdown_gives_up_on_a_provider_that_never_finishes(self) -> None:
        """shutdown() returns, saying it gave up, while a span processor is still stuck in it."""
        result = run_python(
            script(
                HELPERS,
                """
                import logging, threading
                from opentelemetry.sdk.trace.export import SimpleSpanProcessor
                from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                    InMemorySpanExporter,
                )

                records = []
                logging.getLogger("thunkscope").addHandler(
                    type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r)})())
                entered, release = threading.Event(), threading.Event()

                class Stuck(SimpleSpanProcessor):
                    def shutdown(self):
                        entered.set()
                        release.wait()  # never set before handle.shutdown() has returned

                handle = thunkscope.configure(
                    endpoint="http://127.0.0.1:9",
                    log_format=None,
                    span_processors=[Stuck(InMemorySpanExporter())],
                )
                # Were shutdown() unbounded, this line would never run: the script would hit
                # run_python's deadline and the test would fail.
                handle.shutdown(timeout_s=0.2)
                was_shutting_down = entered.wait(30)
                release.set()
                messages = [r.getMessage() for r in records]
                print(json.dumps({
                    "was_shutting_down": was_shutting_down,
                    "gave_up": [m for m in messages if "did not finish" in m],
                }))
                """,
            )
        )
        assert result["was_shutting_down"] is True
        assert result["gave_up"] == [
            "thunkscope: telemetry shutdown did not finish within 0.2 s; giving up (unsent "
            "telemetry is dropped)"
        ]

    def test_existing_global_provider_is_kept(self) -> None:
        """A tracer provider the application set is kept, with one warning saying so."""
        result = run_python(
            script(
                HELPERS,
                IN_MEMORY,
                """
                import logging
                records = []
                logging.getLogger("thunkscope").addHandler(
                    type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r)})())
                exporter, reader = set_in_memory_providers()
                handle = thunkscope.configure(endpoint="http://127.0.0.1:9", log_format=None)
                run(rounds=1)
                handle.shutdown(timeout_s=0.5)
                print(json.dumps({
                    "mine": handle.tracer_provider is None and handle.meter_provider is None,
                    "spans": len(exporter.get_finished_spans()),
                    "warnings": [r.getMessage() for r in records if r.levelname == "WARNING"],
                }))
                """,
            )
        )
        assert result["mine"] is True
        assert result["spans"] == 6
        assert len(result["warnings"]) == 2  # the tracer and the meter provider
        assert all("already set; keeping it" in w for w in result["warnings"])

    def test_shutdown_twice_and_as_context_manager(self, rotel: RotelCollector) -> None:
        """Leaving the handle's block shuts the providers down once; later shutdowns do nothing."""
        result = run_python(
            script(
                HELPERS,
                """
                import os
                from opentelemetry.sdk.trace.export import SimpleSpanProcessor
                from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                    InMemorySpanExporter,
                )

                exporter = InMemorySpanExporter()
                shutdowns = []

                class Counting(SimpleSpanProcessor):
                    def shutdown(self):
                        shutdowns.append(len(exporter.get_finished_spans()))
                        super().shutdown()

                with thunkscope.configure(
                    endpoint=os.environ["ENDPOINT"],
                    log_format=None,
                    span_processors=[Counting(exporter)],
                ) as h:
                    run(rounds=1)
                    inside = len(exporter.get_finished_spans())
                after_exit = list(shutdowns)
                h.shutdown()
                h.shutdown(timeout_s=0.1)
                print(json.dumps({
                    "inside": inside,
                    "after_exit": after_exit,
                    "after_more_shutdowns": shutdowns,
                    "spans": len(exporter.get_finished_spans()),
                }))
                """,
            ),
            env={"ENDPOINT": rotel.http_endpoint},
        )
        assert result["inside"] == 6
        assert result["after_exit"] == [6]  # the block's end shut the processor down, once
        assert result["after_more_shutdowns"] == [6]  # shutdown() again is a no-op
        assert result["spans"] == 6
        assert result["_stderr"] == ""
        assert len(rotel.wait_for_spans(6)) == 6  # the OTLP exporter flushed on the way out
