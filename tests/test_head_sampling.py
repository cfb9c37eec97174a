"""thunkscope's metrics do not depend on the SDK's head sampler (OTEL_TRACES_SAMPLER).

A head sampler that drops a trace makes its spans non-recording; the stream is still
measured, so the stream counts, stalls, items and put waits after a known workload are
exact whatever the sampler (docs/scale.md, "Head sampling").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import Telemetry
from support import scale_workload as work
from thunkscope import _telemetry, names

WORKLOAD = work.Workload({kind: 3 for kind in work.KINDS})

#: OTEL_TRACES_SAMPLER settings: (sampler, its argument or None), and the sampler class
#: the SDK builds from them.
SAMPLERS = {
    "always_off": ("always_off", None, "StaticSampler"),
    "parentbased_traceidratio_0": ("parentbased_traceidratio", "0", "ParentBasedTraceIdRatio"),
    "always_on": ("always_on", None, "StaticSampler"),
}


@pytest.fixture(params=sorted(SAMPLERS))
def sampled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Telemetry]:
    """thunkscope on a TracerProvider whose sampler comes from OTEL_TRACES_SAMPLER."""
    sampler, argument, class_name = SAMPLERS[request.param]
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if argument is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument)
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()  # the sampler from the environment, as users get it
    assert type(tracer_provider.sampler).__name__ == class_name
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    _telemetry.use_providers(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Telemetry(exporter, reader, tracer_provider)
    finally:
        _telemetry.use_providers()
        meter_provider.shutdown()
        tracer_provider.shutdown()


def by_name(telemetry: Telemetry, metric: names.Metric, value: Any) -> dict[Any, Any]:
    """One metric's points keyed by their attribute values, mapped through `value`."""
    return {tuple(sorted(p.attributes.items())): value(p) for p in telemetry.points(metric.name)}


def label(kind: str, **more: str) -> tuple[tuple[str, str], ...]:
    """The sorted attribute items of a point for the stream name `kind`."""
    return tuple(sorted({names.STREAM_NAME: kind, **more}.items()))


class TestHeadSampler:
    async def test_stream_metrics_are_exact_whatever_the_head_sampler(
        self, sampled: Telemetry, request: pytest.FixtureRequest
    ) -> None:
        """After a known workload the stream metrics are exact, whether spans are sampled or not."""
        tracer = sampled.tracer_provider.get_tracer("scale-workload")
        await work.run(WORKLOAD, tracer)
        n = 3
        durations = {
            label(kind, **{names.STREAM_OUTCOME: work.OUTCOME[kind]}, **failure): n
            for kind in work.KINDS
            for failure in [
                {names.ERROR_TYPE: work.ERROR_TYPE[kind]} if kind in work.ERROR_TYPE else {}
            ]
        }
        assert by_name(sampled, names.STREAM_DURATION, lambda p: p.count) == durations
        assert by_name(sampled, names.STREAM_ITEM_COUNT, lambda p: (p.count, p.sum)) == {
            label(kind): (n, n * work.ITEMS[kind]) for kind in work.KINDS
        }
        # Only the stalled kind has a gap past stall_after (a timeout ends its hang first).
        assert by_name(sampled, names.STREAM_STALLS, lambda p: p.value) == {label(work.STALLED): n}
        assert by_name(sampled, names.QUEUE_PUT_WAIT, lambda p: p.count) == {
            label(work.BACKPRESSURE): n
        }
        # Observed from every stream name the process has seen: ours are all back to 0.
        active = by_name(sampled, names.STREAM_ACTIVE, lambda p: p.value)
        assert {kind: active[label(kind)] for kind in work.KINDS} == dict.fromkeys(work.KINDS, 0)
        streams = sampled.spans(names.SPAN_SEND_TO_QUEUE)
        if request.node.callspec.params["sampled"] == "always_on":
            assert len(streams) == WORKLOAD.total
            stalls = {
                (s.attributes[names.STREAM_NAME], s.attributes[names.STREAM_STALL_COUNT])
                for s in streams
            }
            assert stalls == {(kind, int(kind == work.STALLED)) for kind in work.KINDS}
        else:
            assert streams == []
