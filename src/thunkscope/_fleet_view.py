"""``thunkscope ps`` and ``thunkscope inflight`` without a URL: every local process at once.

The discovery files (`_discovery`) say which processes serve a debug endpoint; this reads
each endpoint in parallel, with a short timeout, and merges what they answer. A process
that does not answer is reported on its own row, never fatal: the others still show.
All the cost is the reader's; the observed processes only answer HTTP requests.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from thunkscope import _discovery, _inflight_view
from thunkscope._inflight_view import Snapshot

__all__ = ["Process", "gather", "run_inflight", "run_ps"]

FETCH_TIMEOUT_S: Final = 2.0
_PS_COLUMNS: Final = ("PID", "SERVICE", "INSTANCE", "STREAMS", "OLDEST_IDLE", "URL")


@dataclass
class Process:
    """One live process with a debug endpoint, and what its endpoint answered."""

    entry: _discovery.Entry
    snapshots: list[Snapshot] = field(default_factory=list)
    error: str | None = None

    def row(self) -> dict[str, Any]:
        """The ``ps`` row as plain data (``--json``)."""
        idle = max((_inflight_view.number(s.get("idle_s")) for s in self.snapshots), default=0.0)
        return {
            **self.entry.as_dict(),
            "streams": None if self.error else len(self.snapshots),
            "oldest_idle_s": None if self.error else round(idle, 6),
            "error": self.error,
        }


def gather(*, pids: Sequence[int] = (), services: Sequence[str] = ()) -> list[Process]:
    """The live processes (optionally only these pids / service names), each read once."""
    entries = [
        entry
        for entry in _discovery.live_entries()
        if (not pids or entry.pid in pids) and (not services or entry.service_name in services)
    ]
    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(entries))) as pool:
        return list(pool.map(_read, entries))


def _read(entry: _discovery.Entry) -> Process:
    endpoint = _inflight_view.inflight_url(entry.url)
    try:
        snapshots = _inflight_view.fetch(endpoint, timeout=FETCH_TIMEOUT_S)
    except _inflight_view.READ_ERRORS as exc:
        return Process(entry, error=f"no answer from {endpoint}: {_inflight_view.reason(exc)}")
    for snap in snapshots:
        snap["pid"] = entry.pid
        snap["service_name"] = entry.service_name
    return Process(entry, snapshots)


def render_ps(processes: Sequence[Process]) -> str:
    """The ``ps`` table: one row per process, an unreachable one with its error."""
    if not processes:
        return f"no thunkscope debug endpoint found in {_discovery.discovery_dir()}\n"
    rows = []
    for process in processes:
        data = process.row()
        rows.append(
            {
                "PID": str(data["pid"]),
                "SERVICE": data["service_name"] or "-",
                "INSTANCE": data["service_instance_id"] or "-",
                "STREAMS": "?" if process.error else str(data["streams"]),
                "OLDEST_IDLE": "?"
                if process.error
                else _inflight_view.duration(data["oldest_idle_s"]),
                "URL": f"{data['url']}  ({process.error})" if process.error else data["url"],
            }
        )
    return _inflight_view.table(
        _PS_COLUMNS, rows, right=frozenset({"PID", "STREAMS", "OLDEST_IDLE"})
    )


def run_ps(*, as_json: bool = False, out: TextIO | None = None) -> int:
    """Print the live processes; exit code 0 (an unreachable one is on its row)."""
    stream = out if out is not None else sys.stdout
    processes = gather()
    if as_json:
        stream.write(json.dumps([p.row() for p in processes], indent=2) + "\n")
    else:
        stream.write(render_ps(processes))
    stream.flush()
    return 0


def merged(processes: Sequence[Process]) -> list[Snapshot]:
    """Every process's snapshots in one list, most idle first."""
    snapshots = [snap for process in processes for snap in process.snapshots]
    snapshots.sort(key=lambda s: _inflight_view.number(s.get("idle_s")), reverse=True)
    return snapshots


def _render_merged(processes: Sequence[Process], width: int | None, clock: str) -> str:
    source = f"{len(processes)} process{'es' if len(processes) != 1 else ''}"
    text = _inflight_view.render(merged(processes), source=source, width=width, clock=clock)
    failed = [p for p in processes if p.error]
    if failed:
        text += "\n" + "".join(
            f"pid {p.entry.pid} ({p.entry.service_name or '-'}): {p.error}\n" for p in failed
        )
    if not processes:
        text += f"\nno thunkscope debug endpoint found in {_discovery.discovery_dir()}\n"
    return text


def run_inflight(
    *,
    pids: Sequence[int] = (),
    services: Sequence[str] = (),
    watch: bool = False,
    as_json: bool = False,
    interval: float = 1.0,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the merged in-flight view once (table or JSON), or redraw it until Ctrl-C."""
    stream = out if out is not None else sys.stdout
    tty = stream.isatty()
    try:
        while True:
            processes = gather(pids=pids, services=services)
            if as_json:
                for process in processes:
                    if process.error:
                        print(
                            f"thunkscope inflight: pid {process.entry.pid}: {process.error}",
                            file=sys.stderr,
                        )
                frame = json.dumps(merged(processes), default=str) + "\n"
            else:
                clock = time.strftime("%H:%M:%S") if watch else ""
                frame = _render_merged(processes, _inflight_view.width(stream), clock)
                if watch:
                    frame = (_inflight_view.CLEAR if tty else "\n") + frame
            stream.write(frame)
            stream.flush()
            if not watch:
                return 0
            sleep(interval)
    except KeyboardInterrupt:
        return 0
