"""A thunkscope workload for the alerting end-to-end tests, serving /metrics for a scrape.

    python alert_workload.py --port P --mode hang --release FILE
        streams named "chat" complete all the time; one of them yields an item and then
        hangs until FILE exists, then ends.
    python alert_workload.py --port P --mode timeouts
        streams named "flaky": nine in ten time out (chunk_timeout), one completes.

Runs until terminated. Real thunkscope, real OpenTelemetry SDK, real Prometheus exporter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider

import thunkscope
from thunkscope import _demo
from thunkscope._telemetry import use_providers


async def tokens(count: int, pause: float) -> AsyncIterator[str]:
    """`count` items, `pause` seconds apart."""
    for i in range(count):
        await asyncio.sleep(pause)
        yield f"t{i}"


async def hanging(release: Path) -> AsyncIterator[str]:
    """One item, then nothing until `release` exists."""
    yield "first"
    while not release.exists():  # noqa: ASYNC110, ASYNC240 - made by another process
        await asyncio.sleep(0.1)
    yield "last"


async def drain(queue: asyncio.Queue[object]) -> None:
    """Consume a queue until its terminator (None or an exception)."""
    while True:
        item = await queue.get()
        if item is None or isinstance(item, BaseException):
            return


async def one(backend: AsyncIterator[str], name: str, chunk_timeout: float | None) -> None:
    """One stream through send_to_queue, consumed."""
    queue: asyncio.Queue[object] = asyncio.Queue()
    consumer = asyncio.create_task(drain(queue))
    await thunkscope.send_to_queue(backend, queue, name=name, chunk_timeout=chunk_timeout)
    await consumer


async def run(mode: str, release: Path | None) -> None:
    """The chosen workload, forever."""
    hang = None
    if mode == "hang":
        assert release is not None
        hang = asyncio.create_task(one(hanging(release), "chat", None))
    print("workload running", flush=True)
    n = 0
    while True:
        n += 1
        if mode == "hang":
            await one(tokens(3, 0.01), "chat", None)
        else:
            slow = n % 10 != 0  # nine in ten: the backend pauses past chunk_timeout
            await one(tokens(2, 1.0 if slow else 0.01), "flaky", 0.05)
        await asyncio.sleep(0.05)
        if hang is not None and hang.done():
            hang.result()
            hang = None
            print("hanging stream ended", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["hang", "timeouts"], required=True)
    parser.add_argument("--release", type=Path)
    args = parser.parse_args()
    use_providers(meter_provider=MeterProvider(metric_readers=[_demo.prometheus_reader(args.port)]))
    print(f"pid {os.getpid()} serving /metrics on {args.port}", file=sys.stderr, flush=True)
    asyncio.run(run(args.mode, args.release))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
