"""Collector outages under a steady thunkscope load, with the real collector.

Usage::

    python benchmarks/outage.py --protocol grpc --outage 3          # direct to the gateway
    python benchmarks/outage.py --protocol grpc --outage 30 --agent # through deploy/otel-agent.yaml

A gateway collector (the build of collector/manifest.yaml) writes what it receives to files;
an application process runs one stream (send_to_queue + iter_queue) every 20 ms for the
whole run. After 3 s the gateway (or, with ``--agent-outage``, the agent) is killed for
``--outage`` seconds and restarted. It prints, per signal, what the application produced
and what the gateway received, the application's mean stream latency during the outage
against before it (a ratio, not asserted anywhere), and how long ``shutdown()`` took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
STREAM_PERIOD_S = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def collector_binary() -> str:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-collector.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def start(binary: str, configs: list[Path], health: str, log: Path) -> subprocess.Popen[bytes]:
    """Starts a collector and waits for its health endpoint (its log on failure)."""
    args = [binary, *(f"--config={c}" for c in configs)]
    process = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"collector exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://{health}/", timeout=1).close()
            return process
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"collector not ready:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes], graceful: bool = False) -> None:
    """Kills the collector (SIGKILL), or stops it as a restart does (SIGTERM: it drains)."""
    process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    process.wait()


def gateway_config(workdir: Path, grpc: str, http: str, health: str) -> Path:
    files = {s: str(workdir / f"{s}.json") for s in ("traces", "metrics", "logs")}
    config = {
        "extensions": {"health_check": {"endpoint": health}},
        "receivers": {
            "otlp": {"protocols": {"grpc": {"endpoint": grpc}, "http": {"endpoint": http}}}
        },
        # append: a restarted gateway must not truncate what it wrote before the outage
        # (the file exporter's default), or the benchmark counts that as lost.
        "exporters": {
            f"file/{s}": {"path": path, "flush_interval": "100ms", "append": True}
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


def agent_overlay(workdir: Path, grpc: str, http: str, health: str, gateway: str) -> Path:
    overlay = {
        "extensions": {
            "health_check": {"endpoint": health},
            "file_storage/queue": {"directory": str(workdir / "queue")},
        },
        "receivers": {
            "otlp": {"protocols": {"grpc": {"endpoint": grpc}, "http": {"endpoint": http}}}
        },
        "exporters": {"otlp_grpc/gateway": {"endpoint": gateway}},
        "service": {"telemetry": {"metrics": {"level": "none"}}},
    }
    path = workdir / "agent-overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def exported(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines the file exporter has written so far.

    The exporter flushes on a timer, so the last line can be cut mid-way: it is left for
    the next read rather than failing the run.
    """
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def received(workdir: Path) -> dict[str, int]:
    """Spans, stream.completed log records and the last cumulative stream count received."""
    spans = logs = 0
    streams = 0
    for batch in exported(workdir / "traces.json"):
        for r in batch["resourceSpans"]:
            for s in r["scopeSpans"]:
                spans += sum(1 for sp in s["spans"] if sp["name"] == "send_to_queue")
    for batch in exported(workdir / "logs.json"):
        for r in batch["resourceLogs"]:
            for s in r["scopeLogs"]:
                logs += sum(
                    1
                    for rec in s["logRecords"]
                    if rec.get("body", {}).get("stringValue") == "stream.completed"
                )
    for batch in exported(workdir / "metrics.json"):
        for r in batch["resourceMetrics"]:
            for s in r["scopeMetrics"]:
                for m in s["metrics"]:
                    if m["name"] == "thunkscope.stream.duration":
                        total = sum(int(p["count"]) for p in m["histogram"]["dataPoints"])
                        streams = max(streams, total)
    return {"traces": spans, "logs": logs, "metrics": streams}


def app(endpoint: str, protocol: str, duration: float, marks: str) -> None:
    """The application: one stream every STREAM_PERIOD_S; prints produced counts and latencies."""
    import thunkscope

    handle = thunkscope.configure(
        service_name="outage-bench",
        endpoint=endpoint,
        protocol=protocol,  # type: ignore[arg-type]
        log_format="json",
        log_level="info",
        metric_export_interval_s=1.0,
    )
    outage_start, outage_end = (float(x) for x in marks.split(","))
    latencies: dict[str, list[float]] = {"before": [], "during": []}

    async def backend() -> Any:
        for i in range(3):
            yield i

    async def run() -> int:
        count = 0
        start = time.monotonic()
        while (now := time.monotonic() - start) < duration:
            t0 = time.perf_counter()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            producer = asyncio.create_task(thunkscope.send_to_queue(backend(), queue, name="bench"))
            async for _ in thunkscope.iter_queue(queue):
                pass
            await producer
            took = time.perf_counter() - t0
            if now < outage_start:
                latencies["before"].append(took)
            elif now < outage_end:
                latencies["during"].append(took)
            count += 1
            await asyncio.sleep(STREAM_PERIOD_S)
        return count

    streams = asyncio.run(run())
    t0 = time.monotonic()
    handle.shutdown()
    shutdown_s = time.monotonic() - t0
    mean = {k: sum(v) / len(v) if v else 0.0 for k, v in latencies.items()}
    print(json.dumps({"streams": streams, "shutdown_s": shutdown_s, "latency": mean}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["http/protobuf", "grpc"], default="grpc")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the collector is down")
    parser.add_argument("--agent", action="store_true", help="send through deploy/otel-agent.yaml")
    parser.add_argument(
        "--agent-outage", action="store_true", help="kill the agent, not the gateway"
    )
    parser.add_argument(
        "--graceful", action="store_true", help="stop with SIGTERM (a restart), not SIGKILL"
    )
    parser.add_argument("--app", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.app:
        app(args.app[0], args.app[1], float(args.app[2]), args.app[3])
        return 0
    binary = collector_binary()
    workdir = Path(tempfile.mkdtemp(prefix="outage-"))
    gw = {k: f"127.0.0.1:{free_port()}" for k in ("grpc", "http", "health")}
    gateway_cfg = gateway_config(workdir, gw["grpc"], gw["http"], gw["health"])
    gateway = start(binary, [gateway_cfg], gw["health"], workdir / "gateway.log")
    front = gw
    agent = None
    agent_cfgs: list[Path] = []
    if args.agent:
        front = {k: f"127.0.0.1:{free_port()}" for k in ("grpc", "http", "health")}
        agent_cfgs = [
            REPO / "deploy" / "otel-agent.yaml",
            agent_overlay(workdir, front["grpc"], front["http"], front["health"], gw["grpc"]),
        ]
        (workdir / "queue").mkdir()
        agent = start(binary, agent_cfgs, front["health"], workdir / "agent.log")
    endpoint = f"http://{front['http'] if args.protocol == 'http/protobuf' else front['grpc']}"
    lead, tail = 3.0, 5.0
    duration = lead + args.outage + tail
    env = dict(os.environ)
    application = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--app",
            endpoint,
            args.protocol,
            str(duration),
            f"{lead},{lead + args.outage}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    time.sleep(lead)  # the benchmark's schedule, not a wait for a condition
    if args.agent_outage and agent is not None:
        stop(agent, args.graceful)
        time.sleep(args.outage)
        agent = start(binary, agent_cfgs, front["health"], workdir / "agent.log")
    else:
        stop(gateway, args.graceful)
        time.sleep(args.outage)
        gateway = start(binary, [gateway_cfg], gw["health"], workdir / "gateway.log")
    out, _ = application.communicate(timeout=600)
    produced = json.loads(out.splitlines()[-1])
    # Received counts settle once the queues drain: wait until all are in, or until they
    # have not moved for 12 s (longer than the agent's 5 s retry interval), at most 120 s.
    deadline = time.monotonic() + 120
    got, settled_at = received(workdir), time.monotonic()
    while time.monotonic() < deadline and min(got.values()) < produced["streams"]:
        time.sleep(0.5)
        now = received(workdir)
        if now != got:
            got, settled_at = now, time.monotonic()
        elif time.monotonic() - settled_at > 12:
            break
    for process in (agent, gateway):
        if process is not None:
            process.terminate()
            process.wait()
    shape = (
        ("agent, " + ("agent" if args.agent_outage else "gateway") + " down")
        if args.agent
        else "direct"
    )
    lat = produced["latency"]
    ratio = lat["during"] / lat["before"] if lat["before"] else float("nan")
    print(
        f"{args.protocol} {shape} {args.outage:g}s: latency during/before {ratio:.2f}, "
        f"shutdown {produced['shutdown_s']:.2f}s"
    )
    for signal_name in ("traces", "metrics", "logs"):
        print(f"  {signal_name:8} produced {produced['streams']:5d} received {got[signal_name]:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
