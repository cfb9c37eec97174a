"""What telemetry costs per mellea generation, thunkscope's against what users would pick instead.

Usage (in the peers' environment, ``bash scripts/install-bench-peers.sh``)::

    .venv-bench/bin/python benchmarks/generation.py           # full run, CPU + callgrind
    .venv-bench/bin/python benchmarks/generation.py --quick   # short; figures untrusted
    .venv-bench/bin/python benchmarks/generation.py --json out.json --no-callgrind

A real mellea 0.8 session on its OpenAI backend streams chat completions from the fake
OpenAI server of ``tests/support/fake_openai.py``, run in a process of its own. Every
configuration runs in a worker process of its own (each sets global OpenTelemetry
providers, which cannot be undone), all with the same SDK sink: a TracerProvider with a
BatchSpanProcessor exporting to a counting exporter, and a MeterProvider with a periodic
reader exporting to a counting exporter. The configurations:

- ``none``: no telemetry at all (no SDK, no instrumentation);
- ``mellea``: mellea's own telemetry (``MELLEA_TRACES_ENABLED``, ``MELLEA_METRICS_ENABLED``;
  mellea builds its own providers: the sink's span processor is added to mellea's tracer
  provider and mellea's meter is taken from the sink's meter provider);
- ``thunkscope``: ``MelleaInstrumentor().instrument()`` (wrapping mellea's helpers);
- ``thunkscope-fast``: ``MelleaInstrumentor().instrument(fast_path=True)``;
- ``openllmetry``: traceloop's ``opentelemetry-instrumentation-openai``;
- ``openlit``: ``openlit.init()`` with only its OpenAI instrumentor on.

Message content capture is off wherever a configuration has it (thunkscope never
captures payloads). A configuration whose packages are missing is shown as unavailable.

Figures:

- **CPU per generation, as a ratio to no telemetry**: the workers run blocks of
  generations in rounds, round robin (the order rotating each round), so a slow spell
  of the machine falls on every configuration alike; a ratio is the median over rounds
  of each round's ratio to the ``none`` block of the same round. CPU time is the
  worker's ``process_time`` (all its threads: mellea's event loop thread, the SDK's
  export threads); the server's CPU is in its own process and charged to nobody.
- **Instructions per generation** (``valgrind --tool=callgrind``, independent of the
  machine's load): each configuration runs once under callgrind with
  ``--dump-before=os_getsid``; the worker calls ``os.getsid(0)`` right before a measured
  block and again right after it (after a short pause for its other threads), so the
  second dump holds exactly that block's instructions, in every thread of the process
  (callgrind's ``--zero-before`` would not do: it resets only the calling thread). An
  empty block is measured the same way and subtracted; the rest divided by the block's
  generations is the figure.
- **Telemetry facts**: the spans each configuration started for one generation and for
  one that stalls into ``ModelOption.STREAM_TIMEOUT`` (the server stops sending
  mid-stream): name, whether it was ended, its status, whether the timeout was recorded.

A block is: for each generation, a fresh context (``session.reset()``) and one
``session.chat`` with streaming on; then a flush of the span processors. The growing
history case runs its block in one context (no reset between its generations).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ("none", "mellea", "thunkscope", "thunkscope-fast", "openllmetry", "openlit")
PEERS = ("mellea", "openllmetry", "openlit")
DUMP_FN = "os_getsid"  # callgrind dumps (and resets) its counters when the worker enters this
SETTLE_S = 0.2  # before the closing dump of a block: the other threads finish their part
NORMAL_TIMEOUT = 30.0  # STREAM_TIMEOUT of the measured generations: never reached
STALL_TIMEOUT = 0.5  # STREAM_TIMEOUT of the stalled generation
STALL_S = 60.0  # how long the server stalls (it is stopped long before)
END_DEADLINE = 3.0  # how long the facts wait for a generation's spans to end
VERSIONED = (
    "mellea",
    "openai",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-openai",
    "openlit",
    "thunkscope",
)


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each measurement does; `quick` keeps the run short."""

    chunks: tuple[int, ...] = (50, 200)
    warmup: int = 3
    rounds: int = 12
    per_block: int = 8
    history: int = 20
    history_rounds: int = 4
    callgrind_gens: int = 4
    metric_interval_ms: int = 10_000

    @classmethod
    def quick(cls) -> Sizes:
        """Enough to exercise every path once or twice; too little to trust."""
        return cls(warmup=1, rounds=2, per_block=2, history=3, history_rounds=1, callgrind_gens=1)


# --- the worker: one configuration, driven over a pipe ------------------------------------------


def _quiet_stdout() -> IO[str]:
    """The protocol's channel: the real stdout; everything printed elsewhere goes to stderr."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


class _Sink:
    """The SDK sink every configuration shares: counting exporters behind the SDK's own
    batch span processor and periodic metric reader, plus a recorder of started spans
    that the facts switch on."""

    def __init__(self, metric_interval_ms: int) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            MetricExporter,
            MetricExportResult,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from thunkscope._config import SPAN_BATCH_SIZE, SPAN_QUEUE_SIZE

        sink = self
        self.spans_exported = 0
        self.metric_names: set[str] = set()
        self.started: list[Any] = []
        self.recording = False

        class Spans(SpanExporter):  # type: ignore[misc]
            def export(self, spans: Sequence[Any]) -> Any:
                sink.spans_exported += len(spans)
                return SpanExportResult.SUCCESS

        class Metrics(MetricExporter):  # type: ignore[misc]
            def export(self, data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
                if sink.recording:
                    for resource in data.resource_metrics:
                        for scope in resource.scope_metrics:
                            sink.metric_names.update(m.name for m in scope.metrics)
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 10_000) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
                return None

        class Recorder(SpanProcessor):  # type: ignore[misc]
            def on_start(self, span: Any, parent_context: Any = None) -> None:
                if sink.recording:
                    sink.started.append(span)

        self._batch = lambda: BatchSpanProcessor(
            Spans(), max_queue_size=SPAN_QUEUE_SIZE, max_export_batch_size=SPAN_BATCH_SIZE
        )
        self._recorder = Recorder
        self.reader = PeriodicExportingMetricReader(
            Metrics(), export_interval_millis=metric_interval_ms
        )
        self.tracer_provider = TracerProvider()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.span_providers: list[Any] = []
        self.attach(self.tracer_provider)

    def attach(self, provider: Any) -> None:
        """Export `provider`'s spans to the sink (mellea's own provider, say)."""
        provider.add_span_processor(self._batch())
        provider.add_span_processor(self._recorder())
        self.span_providers.append(provider)

    def set_global(self) -> None:
        """Make the sink's providers the global ones, as a user's setup would."""
        from opentelemetry import metrics, trace

        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)

    def flush(self) -> None:
        """Export every ended span now."""
        for provider in self.span_providers:
            provider.force_flush()

    def shutdown(self) -> None:
        """Shut every provider down (a last export of each signal)."""
        for provider in self.span_providers:
            provider.shutdown()
        self.meter_provider.shutdown()


@dataclass(slots=True)
class Setup:
    """What a configuration's setup found: whether it runs, and why not or how."""

    available: bool
    note: str = ""


def _missing(*modules: str) -> str | None:
    """The first of `modules` that cannot be imported, or None."""
    import importlib.util

    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ModuleNotFoundError:
            return module
    return None


def _setup_none(sink: _Sink | None) -> Setup:
    return Setup(True, "no SDK, no instrumentation")


def _setup_mellea(sink: _Sink | None) -> Setup:
    assert sink is not None
    missing = _missing("cpex", "opentelemetry.exporter.otlp.proto.grpc")
    if missing is not None:
        return Setup(False, f"mellea[telemetry] is not installed ({missing} missing)")
    from mellea.plugins import registry
    from mellea.telemetry import metrics, tracing

    if not (registry._HAS_PLUGIN_FRAMEWORK and tracing.is_tracing_enabled()):
        return Setup(False, "mellea's tracing did not switch on")
    sink.attach(tracing._tracer_provider)
    metrics._meter_provider = sink.meter_provider
    metrics._meter = sink.meter_provider.get_meter("mellea.metrics", metadata.version("mellea"))
    return Setup(True, "MELLEA_TRACES_ENABLED=true MELLEA_METRICS_ENABLED=true")


def _setup_thunkscope(sink: _Sink | None, fast_path: bool = False) -> Setup:
    assert sink is not None
    from thunkscope.instrumentation import MelleaInstrumentor

    sink.set_global()
    instrumentor = MelleaInstrumentor()
    if not fast_path:
        instrumentor.instrument()
        if getattr(instrumentor, "fast_path_active", False):
            return Setup(True, "MelleaInstrumentor().instrument(), fast path on (environment)")
        return Setup(True, "MelleaInstrumentor().instrument(), wrapping")
    instrumentor.instrument(fast_path=True)
    active = getattr(instrumentor, "fast_path_active", None)
    if active is None:
        return Setup(False, "this thunkscope has no fast path (no fast_path_active)")
    if not active:
        return Setup(False, "fast path requested, fell back to wrapping (see thunkscope's log)")
    return Setup(True, "MelleaInstrumentor().instrument(fast_path=True), fast_path_active")


def _setup_openllmetry(sink: _Sink | None) -> Setup:
    assert sink is not None
    if _missing("opentelemetry.instrumentation.openai") is not None:
        return Setup(False, "opentelemetry-instrumentation-openai is not installed")
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    sink.set_global()
    OpenAIInstrumentor().instrument()
    return Setup(True, "OpenAIInstrumentor().instrument(), TRACELOOP_TRACE_CONTENT=false")


def _setup_openlit(sink: _Sink | None) -> Setup:
    assert sink is not None
    if _missing("openlit") is not None:
        return Setup(False, "openlit is not installed")
    import openlit
    from openlit._instrumentors import MODULE_NAME_MAP

    sink.set_global()
    # A local, empty price list (read once, by init): openlit fetches one over the network
    # otherwise.
    with tempfile.TemporaryDirectory(prefix="bench-openlit-") as directory:
        prices = Path(directory) / "pricing.json"
        prices.write_text("{}")
        openlit.init(
            capture_message_content=False,
            disable_events=True,
            pricing_json=str(prices),
            disabled_instrumentors=[name for name in MODULE_NAME_MAP if name != "openai"],
        )
    return Setup(True, "openlit.init(), OpenAI instrumentor only, content and events off")


SETUPS: dict[str, Callable[[_Sink | None], Setup]] = {
    "none": _setup_none,
    "mellea": _setup_mellea,
    "thunkscope": _setup_thunkscope,
    "thunkscope-fast": lambda sink: _setup_thunkscope(sink, fast_path=True),
    "openllmetry": _setup_openllmetry,
    "openlit": _setup_openlit,
}
ENVIRONMENT: dict[str, dict[str, str]] = {
    "mellea": {"MELLEA_TRACES_ENABLED": "true", "MELLEA_METRICS_ENABLED": "true"},
    "openllmetry": {"TRACELOOP_TRACE_CONTENT": "false"},
}


def prompt(chunks: int, stall: bool = False) -> str:
    """The user message that makes the fake server answer `chunks` chunks (stalling midway)."""
    text = f"Tell me something. [chunks:{chunks}]"
    return f"{text} [stall:{STALL_S}@{chunks // 2}]" if stall else text


class _Worker:
    """One configuration's session, running what the orchestrator asks, one line each."""

    def __init__(self, config: str, base_url: str, metric_interval_ms: int) -> None:
        os.environ.update(ENVIRONMENT.get(config, {}))
        import warnings

        warnings.simplefilter("ignore")  # mellea warns that its metrics have no exporter
        self.sink = None if config == "none" else _Sink(metric_interval_ms)
        sys.path.insert(0, str(REPO / "tests"))
        from mellea.backends import ModelOption

        from support.mellea_session import start_openai_session

        self.setup = SETUPS[config](self.sink)
        self.options = ModelOption
        self.session = start_openai_session(base_url) if self.setup.available else None

    def chat(self, chunks: int, *, stall: bool = False) -> Any:
        """One streamed generation of `chunks` chunks into the session's context."""
        timeout = STALL_TIMEOUT if stall else NORMAL_TIMEOUT
        options = {self.options.STREAM: True, self.options.STREAM_TIMEOUT: timeout}
        assert self.session is not None
        return self.session.chat(prompt(chunks, stall), model_options=options)

    def block(self, count: int, chunks: int, history: bool, marked: bool) -> dict[str, int]:
        """`count` generations (each in a fresh context unless `history`), then a span flush.

        A `marked` block calls ``os.getsid(0)`` right before and right after, each a
        callgrind dump: the second dump holds exactly the block (every thread's share),
        after a pause that lets the other threads finish what the block left them.
        """
        assert self.session is not None
        gc.collect()
        if history:
            self.session.reset()
        if marked:
            os.getsid(0)
        start = time.process_time_ns()
        for _ in range(count):
            if not history:
                self.session.reset()
            self.chat(chunks)
        if self.sink is not None:
            self.sink.flush()
        cpu = time.process_time_ns() - start
        if marked:
            time.sleep(SETTLE_S)
            os.getsid(0)
        return {"cpu_ns": cpu}

    def facts(self, chunks: int) -> dict[str, Any]:
        """The spans one generation and one stalled generation started, as they ended up."""
        sink = self.sink
        if sink is None:
            normal = self._gen_facts(chunks, False)
            return {"normal": normal, "stall": self._gen_facts(chunks, True)}
        sink.flush()
        sink.recording = True
        normal = self._gen_facts(chunks, False)
        stall = self._gen_facts(chunks, True)
        sink.recording = False
        return {"normal": normal, "stall": stall, "metrics": sorted(sink.metric_names)}

    def _gen_facts(self, chunks: int, stall: bool) -> dict[str, Any]:
        sink = self.sink
        assert self.session is not None
        if sink is not None:
            sink.started.clear()
            sink.metric_names.clear()
        self.session.reset()
        raised = None
        try:
            self.chat(chunks, stall=stall)
        except Exception as error:  # the stalled generation ends in mellea's TimeoutError
            raised = f"{type(error).__name__}: {error}"[:120]
        if sink is None:
            return {"raised": raised, "spans": []}
        deadline = time.monotonic() + END_DEADLINE
        while time.monotonic() < deadline and any(s.end_time is None for s in sink.started):
            time.sleep(0.02)
        sink.flush()
        sink.reader.force_flush()
        return {"raised": raised, "spans": [_span_facts(span) for span in sink.started]}

    def serve(self, channel: IO[str]) -> None:
        """Answer the orchestrator's requests (JSON lines on stdin) until it says quit."""
        reply: dict[str, Any] = {"available": self.setup.available, "note": self.setup.note}
        channel.write(json.dumps(reply) + "\n")
        for line in sys.stdin:
            request = json.loads(line)
            op = request.pop("op")
            if op == "quit":
                break
            if op == "block":
                answer: Any = self.block(**request)
            elif op == "facts":
                answer = self.facts(**request)
            else:
                raise ValueError(f"unknown op {op!r}")
            channel.write(json.dumps(answer) + "\n")
        self.close()
        channel.write(json.dumps({"bye": True}) + "\n")

    def close(self) -> None:
        """Close the session's clients and shut the sink's providers down."""
        from support.mellea_session import close_openai_session

        if self.session is not None:
            close_openai_session(self.session)
        if self.sink is not None:
            self.sink.shutdown()


def _span_facts(span: Any) -> dict[str, Any]:
    """What a span tells about its generation: ended or not, status, the timeout recorded."""
    attributes = dict(span.attributes or {})
    evidence = [
        f"{key}={value}"
        for key, value in attributes.items()
        if (key.endswith("outcome") and value == "timeout")
        or (key == "error.type" and "timeout" in str(value).lower())
    ]
    for event in span.events:
        event_attributes = dict(event.attributes or {})
        kind = str(event_attributes.get("exception.type", ""))
        if "timeout" in event.name.lower() or "timeout" in kind.lower():
            evidence.append(f"event {event.name}" + (f"({kind})" if kind else ""))
    status = span.status
    return {
        "name": span.name,
        "scope": getattr(span.instrumentation_scope, "name", ""),
        "ended": span.end_time is not None,
        "status": status.status_code.name,
        "description": (status.description or "")[:100],
        "timeout_recorded": bool(evidence),
        "evidence": evidence,
    }


# --- the server ----------------------------------------------------------------------------------


def serve_fake_openai() -> None:
    """Run the fake OpenAI server until stdin closes, its base URL on the first line of stdout."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


# --- the orchestrator ----------------------------------------------------------------------------


class Process:
    """A child process spoken to in JSON lines."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in finish()
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            cwd=REPO,
        )

    def read(self) -> Any:
        """The next JSON line; the child's stderr in the error if it died instead."""
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            self.popen.wait(30)
            self.stderr.seek(0)
            raise RuntimeError(
                f"{' '.join(self.command[-6:])} exited {self.popen.returncode}:\n"
                + self.stderr.read()[-4000:]
            )
        return json.loads(line)

    def ask(self, **request: Any) -> Any:
        """Send one request, return its answer."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(request) + "\n")
        self.popen.stdin.flush()
        return self.read()

    def finish(self) -> None:
        """Ask it to quit and wait; kill it if it does not."""
        with contextlib.suppress(Exception):
            self.ask(op="quit")
        with contextlib.suppress(Exception):
            assert self.popen.stdin is not None
            self.popen.stdin.close()
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.stderr.close()


@contextlib.contextmanager
def fake_server() -> Iterator[str]:
    """The fake OpenAI server in a process of its own; yields its base URL."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"the fake OpenAI server did not start (said {base_url!r})")
        yield base_url
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def worker_command(config: str, base_url: str, metric_interval_ms: int) -> list[str]:
    """The command line of a worker for `config`."""
    return [
        sys.executable,
        __file__,
        "--worker",
        config,
        "--base-url",
        base_url,
        "--metric-interval-ms",
        str(metric_interval_ms),
    ]


def worker_env() -> dict[str, str]:
    """The workers' environment: a fixed hash seed, so their runs are alike, and no
    ``THUNKSCOPE_MELLEA_FAST_PATH``: each configuration asks for its own mode."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("THUNKSCOPE_MELLEA_FAST_PATH", None)
    return env


@dataclass(slots=True)
class Result:
    """Everything one run measured."""

    sizes: dict[str, Any]
    environment: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)
    cpu: dict[str, dict[str, Any]] = field(default_factory=dict)
    instructions: dict[str, dict[str, float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def start_workers(configs: Sequence[str], base_url: str, sizes: Sizes) -> dict[str, Process]:
    """Start every configuration's worker; return them with their availability read."""
    return {
        config: Process(worker_command(config, base_url, sizes.metric_interval_ms), worker_env())
        for config in configs
    }


def measure_cpu(
    workers: dict[str, Process], available: Sequence[str], sizes: Sizes
) -> dict[str, dict[str, Any]]:
    """CPU per generation, each configuration's block against ``none``'s in the same round."""
    cases = [(f"fresh/{c}", c, False, sizes.per_block, sizes.rounds) for c in sizes.chunks]
    history_chunks = sizes.chunks[0]
    cases.append(
        (f"history/{history_chunks}", history_chunks, True, sizes.history, sizes.history_rounds)
    )
    for config in available:
        for chunks in sizes.chunks:
            workers[config].ask(
                op="block", count=sizes.warmup, chunks=chunks, history=False, marked=False
            )
    results: dict[str, dict[str, Any]] = {}
    for case, chunks, history, count, rounds in cases:
        samples: dict[str, list[float]] = {c: [] for c in available}
        for index in range(rounds):
            order = list(available[index % len(available) :]) + list(
                available[: index % len(available)]
            )
            for config in order:
                answer = workers[config].ask(
                    op="block", count=count, chunks=chunks, history=history, marked=False
                )
                samples[config].append(answer["cpu_ns"] / count)
        base = samples["none"]
        results[case] = {
            config: {
                "cpu_us": round(statistics.median(values) / 1000, 1),
                "ratio": round(
                    statistics.median(v / b for v, b in zip(values, base, strict=True)), 3
                ),
            }
            for config, values in samples.items()
        }
    return results


def _callgrind_total(path: Path) -> int:
    """The instructions a callgrind dump file counted."""
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{path} has no summary line")


def measure_instructions(config: str, base_url: str, sizes: Sizes) -> dict[str, float]:
    """Instructions per generation for `config`, from one worker run under callgrind."""
    out = Path(tempfile.mkdtemp(prefix=f"bench-callgrind-{config}-"))
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}/callgrind.out",
        f"--dump-before={DUMP_FN}",
        # Under callgrind the run is ~50x slower: a periodic metric export every 10 s of
        # wall time would land in the blocks at random, so the reader exports at shutdown.
        *worker_command(config, base_url, 24 * 3600 * 1000),
    ]
    worker = Process(command, worker_env())
    blocks: list[tuple[str, int]] = [("empty", 0)]
    try:
        hello = worker.read()
        if not hello["available"]:
            raise RuntimeError(f"{config} is not available: {hello['note']}")
        for chunks in sizes.chunks:  # one warm-up generation each: imports, caches, clients
            worker.ask(op="block", count=1, chunks=chunks, history=False, marked=False)
        worker.ask(op="block", count=0, chunks=1, history=False, marked=True)
        for chunks in sizes.chunks:
            count = sizes.callgrind_gens
            worker.ask(op="block", count=count, chunks=chunks, history=False, marked=True)
            blocks.append((f"fresh/{chunks}", count))
        history_chunks = sizes.chunks[0]
        count = sizes.history
        worker.ask(op="block", count=count, chunks=history_chunks, history=True, marked=True)
        blocks.append((f"history/{history_chunks}", sizes.history))
    finally:
        worker.finish()
    dumps = sorted(out.glob("callgrind.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    if len(dumps) != 2 * len(blocks):
        raise RuntimeError(
            f"callgrind wrote {len(dumps)} dumps for {len(blocks)} blocks in {out}: "
            f"is {DUMP_FN} in this Python's symbols?"
        )
    # Each block's opening dump holds what came before it; its closing dump, the block.
    totals = [_callgrind_total(path) for path in dumps[1::2]]
    for path in out.iterdir():
        path.unlink()
    out.rmdir()
    empty = totals[0]
    return {
        name: round((total - empty) / count)
        for (name, count), total in zip(blocks[1:], totals[1:], strict=True)
    }


def versions() -> dict[str, str]:
    """The versions of the packages the figures depend on, where installed."""
    found: dict[str, str] = {"python": platform.python_version()}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found["valgrind"] = subprocess.run(
            ["valgrind", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return found


def run(configs: Sequence[str], sizes: Sizes, callgrind: bool) -> Result:
    """Measure every configuration: CPU in rounds, facts, then instructions one by one."""
    result = Result(
        sizes=asdict(sizes),
        environment={
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}",
            "versions": versions(),
        },
    )
    with fake_server() as base_url:
        workers = start_workers(configs, base_url, sizes)
        try:
            available = []
            for config, worker in workers.items():
                hello = worker.read()
                result.notes[config] = hello["note"]
                if hello["available"]:
                    available.append(config)
            if "none" not in available:
                raise RuntimeError("the 'none' configuration is needed as the baseline")
            result.cpu = measure_cpu(workers, available, sizes)
            for config in available:
                result.facts[config] = workers[config].ask(op="facts", chunks=sizes.chunks[0])
        finally:
            for worker in workers.values():
                worker.finish()
        if callgrind:
            for config in available:
                result.instructions[config] = measure_instructions(config, base_url, sizes)
        for config in configs:
            if config not in available:
                result.facts[config] = None
    return result


# --- the report ----------------------------------------------------------------------------------


def _case_order(case: str) -> tuple[str, int]:
    """Cases in reading order: fresh before history, fewer chunks first."""
    kind, chunks = case.split("/")
    return kind, int(chunks)


def _millions(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def report(result: Result) -> str:
    """The run as Markdown tables, ready for benchmarks/README.md."""
    lines = [f"{result.environment['date']}; {result.environment['machine']}"]
    lines.append(
        "versions: " + ", ".join(f"{k} {v}" for k, v in result.environment["versions"].items())
    )
    lines.append("")
    cases = list(result.cpu)
    header = "| configuration | " + " | ".join(f"CPU {case} (ratio, us)" for case in cases)
    instruction_cases = sorted(
        {case for per in result.instructions.values() for case in per}, key=_case_order
    )
    header += "".join(f" | instr. {case} (above none)" for case in instruction_cases) + " |"
    lines += [header, "|" + "---|" * (1 + len(cases) + len(instruction_cases))]
    measured = set(result.cpu[cases[0]]) if cases else set()
    for config, note in result.notes.items():
        if config not in measured:
            lines.append(f"| {config} | unavailable: {note} |")
            continue
        cells = [
            f"{result.cpu[case][config]['ratio']:.3f} ({result.cpu[case][config]['cpu_us']:.0f})"
            for case in cases
        ]
        base = result.instructions.get("none", {})
        for case in instruction_cases:
            value = result.instructions.get(config, {}).get(case)
            if value is None:
                cells.append("-")
            elif config == "none" or case not in base:
                cells.append(_millions(value))
            else:
                delta = value - base[case]
                share = delta / base[case]
                cells.append(f"{_millions(value)} ({delta / 1e6:+.2f} M, {share:+.1%})")
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    lines += ["", "| configuration | generation | span | ended | status | timeout recorded |"]
    lines.append("|---|---|---|---|---|---|")
    for config, facts in result.facts.items():
        if facts is None:
            continue
        for kind in ("normal", "stall"):
            spans = facts[kind]["spans"]
            if not spans:
                raised = facts[kind]["raised"] or ""
                lines.append(f"| {config} | {kind} | (no spans) | | | {raised[:40]} |")
            for span in spans:
                recorded = ", ".join(span["evidence"]) if span["timeout_recorded"] else "no"
                status = span["status"]
                if span["description"]:
                    status += f": {span['description']}"
                lines.append(
                    f"| {config} | {kind} | {span['name']} | {'yes' if span['ended'] else 'NO'} "
                    f"| {status} | {recorded} |"
                )
    return "\n".join([*lines, "", *targets(result)])


def targets(result: Result) -> list[str]:
    """Issue 18's targets for this benchmark, met or not, with the numbers (callgrind)."""
    counts = result.instructions
    base = counts.get("none")
    if not base:
        return ["targets: no instruction counts (run with callgrind)"]
    lines = []
    fast = counts.get("thunkscope-fast", {})

    for case in sorted((c for c in base if c.startswith("fresh/")), key=_case_order):
        if case in fast:
            met = fast[case] < base[case]
            lines.append(
                f"- fast path, {case}: {_millions(fast[case])} against "
                f"{_millions(base[case])} with no telemetry "
                f"({'met' if met else 'missed'}: target below no telemetry)"
            )
    for case in sorted(base, key=_case_order):
        peers = {p: counts[p][case] - base[case] for p in PEERS if case in counts.get(p, {})}
        if not peers:
            continue
        cheapest = min(peers, key=peers.__getitem__)
        for mode in ("thunkscope", "thunkscope-fast"):
            if case not in counts.get(mode, {}):
                continue
            overhead = counts[mode][case] - base[case]
            met = overhead < peers[cheapest] / 5
            lines.append(
                f"- {mode}, {case}: {overhead / 1e6:+.2f} M above no telemetry against "
                f"{cheapest}'s {peers[cheapest] / 1e6:+.2f} M, the cheapest peer "
                f"({'met' if met else 'missed'}: target under a fifth)"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the orchestrator, a worker or the server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run; figures untrusted")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--no-callgrind", action="store_true", help="skip the callgrind runs")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated, from {', '.join(CONFIGS)} (none is always included)",
    )
    parser.add_argument(
        "--chunks", help="comma-separated chunk counts per generation (default 50,200)"
    )
    parser.add_argument("--report", metavar="PATH", help="print the tables of a --json file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--metric-interval-ms", type=int, default=10_000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_fake_openai()
        return 0
    if args.report:
        saved = Result(**json.loads(Path(args.report).read_text()))
        print(report(saved))
        return 0
    if args.worker:
        channel = _quiet_stdout()
        _Worker(args.worker, args.base_url, args.metric_interval_ms).serve(channel)
        return 0
    configs = ["none"] + [c for c in args.configs.split(",") if c and c != "none"]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown configuration(s) {', '.join(unknown)}")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.chunks:
        try:
            chunks = tuple(int(c) for c in args.chunks.split(","))
        except ValueError:
            parser.error(f"--chunks: not a comma-separated list of integers: {args.chunks!r}")
        if not chunks or min(chunks) < 2:
            parser.error("--chunks: each generation needs at least 2 chunks")
        sizes = Sizes(**{**asdict(sizes), "chunks": chunks})
    result = run(configs, sizes, callgrind=not args.no_callgrind)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
