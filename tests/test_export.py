"""_export: the OTLP exporters configure() builds (export itself is proven in test_e2e)."""

from __future__ import annotations

import logging
import sys

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetrics,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

from thunkscope._export import Exporters, Protocol

GRPC = "opentelemetry.exporter.otlp.proto.grpc"


class TestExporters:
    @pytest.mark.parametrize(
        ("signal", "module"),
        [("spans", "trace_exporter"), ("metrics", "metric_exporter"), ("logs", "_log_exporter")],
    )
    def test_grpc_without_its_extra_names_the_install_command(
        self, monkeypatch: pytest.MonkeyPatch, signal: str, module: str
    ) -> None:
        """Asking for gRPC without the grpc extra is an ImportError with the pip command."""
        monkeypatch.setitem(sys.modules, f"{GRPC}.{module}", None)  # import now fails
        exporters = Exporters("grpc", "http://127.0.0.1:4317", {})
        with pytest.raises(ImportError, match=r"pip install 'thunkscope\[grpc\]'"):
            getattr(exporters, signal)()

    @pytest.mark.parametrize(
        ("signal", "otlp_class"),
        [("spans", HttpSpans), ("metrics", HttpMetrics), ("logs", HttpLogs)],
    )
    def test_http_exporters_need_no_grpc(
        self, monkeypatch: pytest.MonkeyPatch, signal: str, otlp_class: type
    ) -> None:
        """The default protocol wraps the OTLP/HTTP exporter, with grpc unimportable."""
        for module in ("trace_exporter", "metric_exporter", "_log_exporter"):
            monkeypatch.setitem(sys.modules, f"{GRPC}.{module}", None)
        exporter = getattr(Exporters("http/protobuf", None, {}), signal)()
        try:
            assert type(exporter._inner) is otlp_class
        finally:
            exporter.shutdown()


class TestExportWindow:
    @pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
    def test_each_otlp_exporter_retries_within_its_signals_window(
        self, monkeypatch: pytest.MonkeyPatch, protocol: Protocol
    ) -> None:
        """The real OTLP exporters get 10 s by default (the SDK's own), and the per-signal
        variable over OTEL_EXPORTER_OTLP_TIMEOUT: the window a collector restart fits in."""
        for variable in ("TRACES", "METRICS", "LOGS"):
            monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{variable}_TIMEOUT", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TIMEOUT", raising=False)

        def windows() -> list[float]:
            exporters = Exporters(protocol, "http://127.0.0.1:1", {})
            made = [exporters.spans(), exporters.metrics(), exporters.logs()]
            try:
                # gRPC keeps the window on the exporter, HTTP on its client.
                inner = [
                    getattr(e._inner, "_client", None) if protocol != "grpc" else e._inner
                    for e in made
                ]
                return [float(i._timeout) for i in inner]
            finally:
                for exporter in made:
                    exporter.shutdown()

        assert windows() == [10.0, 10.0, 10.0]
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "25")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "2")
        assert windows() == [25.0, 2.0, 25.0]


SIGNAL_VARIABLES = {
    "spans": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "metrics": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "logs": "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
}
SIGNAL_NAMES = {"spans": "traces", "metrics": "metrics", "logs": "logs"}
URL_PATHS = {"spans": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}


def resolved_endpoint(protocol: Protocol, endpoint: str | None, signal: str) -> str:
    """The endpoint the real OTLP exporter of `signal` resolved, as configure() builds it."""
    exporter = getattr(Exporters(protocol, endpoint, {}), signal)()
    try:
        return str(exporter._inner._endpoint)
    finally:
        exporter.shutdown()


@pytest.fixture
def otlp_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_EXPORTER_OTLP_* variable set but those a test sets."""
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", *SIGNAL_VARIABLES.values()):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.mark.parametrize("signal", ["spans", "metrics", "logs"])
class TestEndpointPrecedence:
    def test_http_signal_variable_wins_over_the_base_variable(
        self, otlp_environment: pytest.MonkeyPatch, signal: str
    ) -> None:
        """OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT is used as is, over OTEL_EXPORTER_OTLP_ENDPOINT."""
        otlp_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base.invalid:4318")
        otlp_environment.setenv(SIGNAL_VARIABLES[signal], "http://signal.invalid:9999/custom")
        assert resolved_endpoint("http/protobuf", None, signal) == (
            "http://signal.invalid:9999/custom"
        )

    def test_http_base_variable_gets_the_signal_path(
        self, otlp_environment: pytest.MonkeyPatch, signal: str
    ) -> None:
        """With only OTEL_EXPORTER_OTLP_ENDPOINT, each signal goes to its /v1/<signal> path."""
        otlp_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base.invalid:4318")
        assert resolved_endpoint("http/protobuf", None, signal) == (
            "http://base.invalid:4318" + URL_PATHS[signal]
        )

    def test_http_endpoint_argument_wins_over_the_variables(
        self, otlp_environment: pytest.MonkeyPatch, signal: str
    ) -> None:
        """An explicit endpoint is the base of every signal's URL, whatever the environment."""
        otlp_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base.invalid:4318")
        otlp_environment.setenv(SIGNAL_VARIABLES[signal], "http://signal.invalid:9999/custom")
        assert resolved_endpoint("http/protobuf", "http://arg.invalid:4318/", signal) == (
            "http://arg.invalid:4318" + URL_PATHS[signal]
        )

    def test_grpc_signal_variable_wins_over_the_base_variable(
        self, otlp_environment: pytest.MonkeyPatch, signal: str
    ) -> None:
        """Over gRPC too, the signal's variable wins; an explicit endpoint wins over both."""
        otlp_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base.invalid:4317")
        otlp_environment.setenv(SIGNAL_VARIABLES[signal], "http://signal.invalid:9999")
        assert resolved_endpoint("grpc", None, signal) == "signal.invalid:9999"
        assert resolved_endpoint("grpc", "http://arg.invalid:4317", signal) == "arg.invalid:4317"

    def test_failure_warning_names_the_endpoint_in_use(
        self,
        otlp_environment: pytest.MonkeyPatch,
        signal: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The export-failure warning names where that signal was really sent."""
        otlp_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base.invalid:4318")
        otlp_environment.setenv(SIGNAL_VARIABLES[signal], "http://signal.invalid:9999/custom")
        exporters = Exporters("http/protobuf", None, {})
        getattr(exporters, signal)().shutdown()
        caplog.set_level(logging.WARNING, logger="thunkscope")
        assert not exporters.health.run(SIGNAL_NAMES[signal], lambda: "refused", ok="ok")
        (warning,) = caplog.records
        assert "to http://signal.invalid:9999/custom failed" in warning.getMessage()
