"""Collector outages under a steady thunkscope load, with the real collector.

Usage::

    python benchmarks/outage.py                                  # the whole scenario
    python benchmarks/outage.py --outages 3,10,30 --agent-outage 3 --protocols grpc

One scenario starts a gateway collector (the build of collector/manifest.yaml, writing what
it receives to files) and, in front of it, the per-host agent of deploy/otel-agent.yaml
(its disk-backed sending queue). Applications run one stream every 20 ms each, per
protocol: one sends straight to the gateway ("direct", no agent queue), one through the
agent ("agent"). The gateway is killed (SIGKILL) for each of ``--outages`` seconds in
turn, then the agent for ``--agent-outage`` seconds. Every stream is named after the phase
it ran in (``up``, ``gateway-down-3s``, ``after-gateway-3s``, ...), so what the gateway
received is counted per application, phase and signal: distinct ``send_to_queue`` spans,
distinct ``stream.completed`` log records and the cumulative stream count of the
``thunkscope.stream.duration`` histogram. It prints that table against what each
application produced, each application's mean stream latency during an outage against
``up`` (a ratio, asserted nowhere) and how long its ``shutdown()`` took.

tests/test_outage.py runs the same scenario and asserts on the counts. Every process a
run starts is stopped when it ends, also when it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
AGENT_CONFIG = REPO / "deploy" / "otel-agent.yaml"
STREAM_PERIOD_S = 0.02
SHAPES = ("direct", "agent")
PROTOCOLS = ("grpc", "http/protobuf")
SIGNALS = ("traces", "logs", "metrics")
UP = "up"
STOP = "stop"
#: How long a condition may take before the run fails: minutes, however loaded the machine.
WAIT_S = 240.0
STREAM_NAME = "thunkscope.stream.name"


class OutageRunFailed(RuntimeError):
    """A collector or an application failed; the message carries their own output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def endpoints() -> dict[str, str]:
    """Free loopback addresses for one collector's gRPC, HTTP and health endpoints."""
    return {k: f"127.0.0.1:{free_port()}" for k in ("grpc", "http", "health")}


def collector_binary() -> str:
    """The collector build's path, built first by scripts/build-collector.sh if not cached."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-collector.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def tail(path: Path, size: int = 4000) -> str:
    """The end of a log file, to show with a failure."""
    return path.read_text(errors="replace")[-size:] if path.exists() else "(no output)"


@dataclass
class Collector:
    """One collector that can be killed and started again on the same config and ports."""

    binary: str
    configs: list[Path]
    health: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Starts it and waits until its health endpoint answers; fails at once, with its
        own output, if it exits or prints its fatal ``Error:`` line first."""
        args = [self.binary, *(f"--config={c}" for c in self.configs)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise OutageRunFailed(f"collector exited:\n{tail(self.log)}")
            fatal = [line for line in tail(self.log).splitlines() if line.startswith("Error: ")]
            if fatal:
                raise OutageRunFailed(f"collector failed ({fatal[-1]}):\n{tail(self.log)}")
            try:
                urllib.request.urlopen(f"http://{self.health}/", timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise OutageRunFailed(
                        f"collector not ready within {timeout:g} s:\n{tail(self.log)}"
                    ) from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing drained."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM (it drains), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def gateway_config(workdir: Path, ends: dict[str, str]) -> Path:
    """The gateway: OTLP in, each signal appended to a JSON-lines file.

    `rotation` makes the file exporter write each batch straight to the file (without it,
    a 4 KiB buffer flushed on a timer holds batches the gateway already acknowledged, which
    a SIGKILL loses, and leaves half a line that spoils the next one); its writer appends to
    an existing file, so a restart keeps what was received before the outage.
    """
    files = {s: str(workdir / f"{s}.json") for s in SIGNALS}
    config = {
        "extensions": {"health_check": {"endpoint": ends["health"]}},
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": ends["grpc"]},
                    "http": {"endpoint": ends["http"]},
                }
            }
        },
        "exporters": {
            f"file/{s}": {"path": path, "rotation": {"max_megabytes": 1024}}
            for s, path in files.items()
        },
        "service": {
            "extensions": ["health_check"],
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {s: {"receivers": ["otlp"], "exporters": [f"file/{s}"]} for s in files},
        },
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def agent_overlay(workdir: Path, ends: dict[str, str], gateway_http: str) -> Path:
    """Overlay on deploy/otel-agent.yaml: loopback endpoints, the queue under `workdir`, the
    collector's own metrics off (their fixed port would collide between collectors)."""
    queue = workdir / "queue"
    queue.mkdir(exist_ok=True)
    overlay = {
        "extensions": {
            "health_check": {"endpoint": ends["health"]},
            "file_storage/queue": {"directory": str(queue)},
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": ends["grpc"]},
                    "http": {"endpoint": ends["http"]},
                }
            }
        },
        "exporters": {"otlp_http/gateway": {"endpoint": f"http://{gateway_http}"}},
        "service": {"telemetry": {"metrics": {"level": "none"}}},
    }
    path = workdir / "agent-overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


# --- what the gateway received --------------------------------------------------------------


def json_objects(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete JSON object the file exporter wrote, one after the other.

    Objects are read back to back rather than by line, so one whose newline a kill cut
    off still counts; an unfinished last one is left for the next read.
    """
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return
        try:
            found, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            newline = text.find("\n", pos)
            if newline < 0:
                return  # being written
            pos = newline + 1  # a damaged object: skip it
            continue
        yield found


def _attributes(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        a["key"]: next(iter(a["value"].values()), None) for a in owner.get("attributes", [])
    }


@dataclass
class Received:
    """Per (service, phase): distinct span and log-record ids, copies, and the stream count."""

    spans: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    logs: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    copies: dict[tuple[str, str, str], int] = field(default_factory=dict)
    streams: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, service: str, phase: str) -> dict[str, int]:
        """Distinct spans, distinct log records and the stream count of one phase."""
        key = (service, phase)
        return {
            "traces": len(self.spans.get(key, ())),
            "logs": len(self.logs.get(key, ())),
            "metrics": self.streams.get(key, 0),
        }

    def duplicates(self, service: str, phase: str, signal_name: str) -> int:
        """Copies received beyond the first (at-least-once delivery resends some)."""
        key = (service, phase)
        distinct = self.spans if signal_name == "traces" else self.logs
        return self.copies.get((service, phase, signal_name), 0) - len(distinct.get(key, ()))

    def _add(self, signal_name: str, service: str, phase: str, ident: str) -> None:
        target = self.spans if signal_name == "traces" else self.logs
        target.setdefault((service, phase), set()).add(ident)
        key = (service, phase, signal_name)
        self.copies[key] = self.copies.get(key, 0) + 1


def _service(resource_block: dict[str, Any]) -> str:
    return str(_attributes(resource_block.get("resource", {})).get("service.name", ""))


def received(workdir: Path) -> Received:
    """What the gateway wrote so far, by service and phase (the stream's name)."""
    got = Received()
    for batch in json_objects(workdir / "traces.json"):
        for block in batch.get("resourceSpans", []):
            service = _service(block)
            for scope in block.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    if span["name"] == "send_to_queue":
                        phase = str(_attributes(span).get(STREAM_NAME, ""))
                        got._add("traces", service, phase, span["spanId"])
    for batch in json_objects(workdir / "logs.json"):
        for block in batch.get("resourceLogs", []):
            service = _service(block)
            for scope in block.get("scopeLogs", []):
                for record in scope.get("logRecords", []):
                    if record.get("body", {}).get("stringValue") != "stream.completed":
                        continue
                    attributes = _attributes(record)
                    phase = str(attributes.get("stream", attributes.get(STREAM_NAME, "")))
                    ident = str(attributes.get("stream_id") or record.get("spanId", ""))
                    got._add("logs", service, phase, ident)
    for batch in json_objects(workdir / "metrics.json"):
        for block in batch.get("resourceMetrics", []):
            service = _service(block)
            for scope in block.get("scopeMetrics", []):
                for metric in scope.get("metrics", []):
                    if metric["name"] != "thunkscope.stream.duration":
                        continue
                    totals: dict[str, int] = {}
                    for point in metric["histogram"]["dataPoints"]:
                        phase = str(_attributes(point).get(STREAM_NAME, ""))
                        totals[phase] = totals.get(phase, 0) + int(point["count"])
                    for phase, total in totals.items():
                        key = (service, phase)
                        got.streams[key] = max(got.streams.get(key, 0), total)
    return got


# --- the application --------------------------------------------------------------------------


def app(endpoint: str, protocol: str, service: str, control: Path) -> None:
    """One stream every STREAM_PERIOD_S, named after the phase in `control`, until it says
    ``stop``; prints the streams per phase, mean latencies and the shutdown time."""
    import thunkscope

    handle = thunkscope.configure(
        service_name=service,
        endpoint=endpoint,
        protocol=protocol,  # type: ignore[arg-type]
        log_format="json",
        log_level="info",
        metric_export_interval_s=1.0,
    )
    produced: dict[str, int] = {}
    took: dict[str, float] = {}

    async def backend() -> Any:
        for i in range(3):
            yield i

    def current(phase: str) -> str:
        """The phase `control` names now (the last one while it is being rewritten)."""
        with contextlib.suppress(OSError):
            return control.read_text().strip() or phase
        return phase

    async def run() -> None:
        phase = UP
        while True:
            phase = current(phase)
            if phase == STOP:
                return
            t0 = time.perf_counter()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            producer = asyncio.create_task(thunkscope.send_to_queue(backend(), queue, name=phase))
            async for _ in thunkscope.iter_queue(queue):
                pass
            await producer
            took[phase] = took.get(phase, 0.0) + time.perf_counter() - t0
            produced[phase] = produced.get(phase, 0) + 1
            await asyncio.sleep(STREAM_PERIOD_S)

    asyncio.run(run())
    t0 = time.monotonic()
    handle.shutdown()
    shutdown_s = time.monotonic() - t0
    latency = {phase: took[phase] / produced[phase] for phase in produced}
    print(json.dumps({"produced": produced, "latency": latency, "shutdown_s": shutdown_s}))


@dataclass
class Application:
    """One application process of the scenario, its output in files (a pipe nobody reads
    while it runs would fill and block it)."""

    shape: str
    protocol: str
    service: str
    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def result(self, timeout: float = WAIT_S) -> dict[str, Any]:
        """Waits for its exit (after ``stop``); its last stdout line, parsed."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise OutageRunFailed(f"{self.service} did not exit:\n{tail(self.err)}") from None
        lines = self.out.read_text().splitlines()
        if self.process.returncode != 0 or not lines:
            raise OutageRunFailed(
                f"{self.service} failed ({self.process.returncode}):\n{tail(self.err)}"
            )
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_application(
    workdir: Path, shape: str, protocol: str, endpoint: str, control: Path
) -> Application:
    service = f"outage-{shape}-{'grpc' if protocol == 'grpc' else 'http'}"
    out, err = workdir / f"{service}.out", workdir / f"{service}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, __file__, "--app", endpoint, protocol, service, str(control)],
            stdout=stdout,
            stderr=stderr,
        )
    return Application(shape, protocol, service, process, out, err)


# --- the scenario -----------------------------------------------------------------------------


def set_phase(control: Path, phase: str) -> None:
    """Names the phase every application's next stream runs in (replaced whole, so no
    application ever reads half a name)."""
    staged = control.with_suffix(".new")
    staged.write_text(phase)
    os.replace(staged, control)


def gateway_phase(seconds: float) -> tuple[str, str]:
    """The names of the phase during a gateway outage and the one after it."""
    return f"gateway-down-{seconds:g}s", f"after-gateway-{seconds:g}s"


def agent_phase(seconds: float) -> tuple[str, str]:
    """The names of the phase during an agent outage and the one after it."""
    return f"agent-down-{seconds:g}s", f"after-agent-{seconds:g}s"


@dataclass
class Outcome:
    """What a scenario's applications produced and what the gateway received."""

    applications: list[Application]
    results: dict[str, dict[str, Any]]
    got: Received
    phases: list[str]
    logs: list[Path]

    def produced(self, service: str, phase: str) -> int:
        return int(self.results[service]["produced"].get(phase, 0))

    def rows(self) -> list[dict[str, Any]]:
        """One row per application, phase and signal: produced against received."""
        rows = []
        for application in self.applications:
            for phase in self.phases:
                counts = self.got.count(application.service, phase)
                for signal_name in SIGNALS:
                    rows.append(
                        {
                            "shape": application.shape,
                            "protocol": application.protocol,
                            "phase": phase,
                            "signal": signal_name,
                            "produced": self.produced(application.service, phase),
                            "received": counts[signal_name],
                            "duplicates": 0
                            if signal_name == "metrics"
                            else self.got.duplicates(application.service, phase, signal_name),
                        }
                    )
        return rows

    def table(self) -> str:
        """The rows as an aligned text table, then latency ratios and shutdown times."""
        lines = [
            f"{'shape':7} {'protocol':14} {'phase':20} {'signal':8} "
            f"{'produced':>8} {'received':>8} {'copies':>6}"
        ]
        for row in self.rows():
            lines.append(
                f"{row['shape']:7} {row['protocol']:14} {row['phase']:20} {row['signal']:8} "
                f"{row['produced']:8d} {row['received']:8d} {row['duplicates']:6d}"
            )
        for application in self.applications:
            result = self.results[application.service]
            latency = result["latency"]
            ratios = ", ".join(
                f"{phase} {latency[phase] / latency[UP]:.2f}"
                for phase in self.phases
                if "down" in phase and phase in latency and latency.get(UP)
            )
            lines.append(
                f"{application.service}: latency during/up {ratios}; "
                f"shutdown {result['shutdown_s']:.2f} s"
            )
        return "\n".join(lines)

    def lossless(self, application: Application) -> bool:
        """Every phase's spans, log records and stream count arrived, for `application`."""
        return all(
            self.got.count(application.service, phase)
            == dict.fromkeys(SIGNALS, self.produced(application.service, phase))
            for phase in self.phases
        )

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{tail(p, 3000)}" for p in self.logs)


def wait_for(condition: Callable[[], bool], what: str, logs: list[Path]) -> None:
    """Polls `condition` until it holds; after WAIT_S fails naming it, with the logs."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            shown = "\n".join(f"--- {p.name}\n{tail(p, 3000)}" for p in logs)
            raise OutageRunFailed(f"{what}: not within {WAIT_S:g} s\n{shown}")
        time.sleep(0.25)


def run_scenario(
    workdir: Path,
    *,
    protocols: tuple[str, ...] = PROTOCOLS,
    outages: tuple[float, ...] = (3.0, 10.0, 30.0),
    agent_outage: float = 3.0,
    binary: str | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Runs the scenario of this module's docstring in `workdir`; stops every process it
    started before it returns or raises."""
    binary = binary or collector_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    control = workdir / "phase"
    set_phase(control, UP)
    gw, ag = endpoints(), endpoints()
    gateway_cfg = gateway_config(workdir, gw)
    gateway = Collector(binary, [gateway_cfg], gw["health"], workdir / "gateway.log")
    agent = Collector(
        binary,
        [AGENT_CONFIG, agent_overlay(workdir, ag, gw["http"])],
        ag["health"],
        workdir / "agent.log",
    )
    logs = [gateway.log, agent.log]
    applications: list[Application] = []
    phases = [UP]

    def flowing(phase: str) -> Callable[[], bool]:
        """Every application's three signals of `phase` have reached the gateway."""

        def check() -> bool:
            for application in applications:
                if application.process.poll() is not None:
                    raise OutageRunFailed(
                        f"{application.service} exited:\n{tail(application.err)}"
                    )
            got = received(workdir)
            return all(
                min(got.count(application.service, phase).values()) > 0
                for application in applications
            )

        return check

    def outage(target: Collector, seconds: float, down: str, after: str) -> None:
        set_phase(control, down)
        phases.append(down)
        target.kill()
        say(f"{target.log.stem} down for {seconds:g} s")
        time.sleep(seconds)  # the outage itself: the stimulus, not a wait for a condition
        target.start()
        set_phase(control, after)
        phases.append(after)
        wait_for(flowing(after), f"telemetry of phase {after} at the gateway", logs)

    with contextlib.ExitStack() as stack:
        stack.callback(gateway.stop)
        stack.callback(agent.stop)
        gateway.start()
        agent.start()
        for shape in SHAPES:
            front = gw if shape == "direct" else ag
            for protocol in protocols:
                address = front["grpc"] if protocol == "grpc" else front["http"]
                application = start_application(
                    workdir, shape, protocol, f"http://{address}", control
                )
                stack.callback(application.stop)
                applications.append(application)
        logs += [a.err for a in applications]
        wait_for(flowing(UP), "telemetry of phase up at the gateway", logs)
        for seconds in outages:
            outage(gateway, seconds, *gateway_phase(seconds))
        if agent_outage:
            outage(agent, agent_outage, *agent_phase(agent_outage))
        set_phase(control, STOP)
        results = {a.service: a.result() for a in applications}
        say("applications done; waiting for the agent's queue to drain")
        outcome = Outcome(applications, results, received(workdir), phases, logs)
        through_agent = [a for a in applications if a.shape == "agent"]

        def drained() -> bool:
            outcome.got = received(workdir)
            return all(outcome.lossless(a) for a in through_agent)

        # Direct applications' counts are final once they exited (the gateway writes a batch
        # before acknowledging it); the agent's queue may still be draining.
        with contextlib.suppress(OutageRunFailed):
            wait_for(drained, "the agent's queue drained", logs)
        return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help="comma-separated: grpc,http/protobuf"
    )
    parser.add_argument(
        "--outages", default="3,10,30", help="seconds the gateway is down, one outage each"
    )
    parser.add_argument(
        "--agent-outage", type=float, default=3.0, help="seconds the agent is down (0: none)"
    )
    parser.add_argument("--app", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.app:
        app(args.app[0], args.app[1], args.app[2], Path(args.app[3]))
        return 0
    protocols = tuple(p for p in args.protocols.split(",") if p)
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            parser.error(f"--protocols: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    try:
        outages = tuple(float(x) for x in args.outages.split(",") if x)
    except ValueError:
        parser.error(f"--outages: {args.outages!r} is not a comma-separated list of seconds")
    workdir = Path(tempfile.mkdtemp(prefix="outage-"))
    print(f"outage: working in {workdir}", flush=True)
    outcome = run_scenario(
        workdir,
        protocols=protocols,
        outages=outages,
        agent_outage=args.agent_outage,
        say=lambda message: print(f"outage: {message}", flush=True),
    )
    print(outcome.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
