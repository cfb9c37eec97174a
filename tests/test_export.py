"""_export: the OTLP exporters configure() builds (export itself is proven in test_e2e)."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetrics,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

from thunkscope._export import Exporters

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
