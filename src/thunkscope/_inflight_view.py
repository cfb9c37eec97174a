"""The in-flight view in a terminal: fetch `serve_debug`'s JSON and draw a table, like top.

Answers "which stream is stuck, since when, and on what?" in one command: one row per
running stream, most idle first, with its state, age, idle time and the frame it is
suspended in, then the whole stack of the most idle stream. Standard library only, so
it runs wherever the process being debugged runs.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO

__all__ = ["fetch", "inflight_url", "render", "run"]

CLEAR: Final = "\x1b[H\x1b[2J"
_COLUMNS: Final = ("IDLE", "AGE", "STATE", "ITEMS", "NAME", "STREAM", "BACKEND", "TRACE", "WHERE")
_ASYNCIO_DIR: Final = f"{os.sep}asyncio{os.sep}"
_FLEET_COLUMNS: Final = ("PID", "SERVICE")
_RIGHT_ALIGNED: Final = frozenset({"PID", "IDLE", "AGE", "ITEMS"})

Snapshot = dict[str, Any]

# What reading the endpoint may raise short of a bug: no connection, a reply that is not
# HTTP (another service on the port: BadStatusLine, or one cut short: IncompleteRead),
# or one that is not the JSON list of snapshots.
READ_ERRORS: Final = (OSError, ValueError, http.client.HTTPException)


def inflight_url(url: str) -> str:
    """The endpoint to fetch: `url` itself if it names ``inflight``, else ``url + inflight``."""
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port  # a ValueError when it is not a number from 0 to 65535
    except ValueError as exc:
        raise ValueError(f"--url {url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"--url must be an http URL like http://127.0.0.1:8765/, got {url!r}")
    if port == 0:
        raise ValueError(f"--url {url!r} is not a valid URL: its port must be 1 to 65535")
    if parsed.path.rstrip("/").endswith("/inflight"):
        return url
    return urllib.parse.urljoin(url if url.endswith("/") else url + "/", "inflight")


def fetch(url: str, *, timeout: float = 5.0) -> list[Snapshot]:
    """The snapshots served at `url` (the endpoint itself), as a list of dicts."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = json.loads(response.read())
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{url} did not answer a JSON list of snapshots")
    return data


def render(
    snapshots: Sequence[Snapshot], *, source: str, width: int | None = None, clock: str = ""
) -> str:
    """The table, most idle first, and the stack of the most idle stream; lines clipped to
    `width` when given."""
    ordered = sorted(snapshots, key=lambda s: number(s.get("idle_s")), reverse=True)
    states: dict[str, int] = {}
    for snap in ordered:
        states[str(snap.get("state"))] = states.get(str(snap.get("state")), 0) + 1
    summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    plural = "" if len(ordered) == 1 else "s"
    title = f"thunkscope inflight  {source}  {len(ordered)} stream{plural}"
    if summary:
        title += f" ({summary})"
    if clock:
        title += f"  {clock}"
    lines = [title, ""]
    if not ordered:
        lines.append("no stream in flight")
        return "\n".join(_clip(line, width) for line in lines) + "\n"

    merged = any("pid" in snap for snap in ordered)
    columns = (*_FLEET_COLUMNS, *_COLUMNS) if merged else _COLUMNS
    rows = [_row(snap) for snap in ordered]
    lines.extend(table(columns, rows, right=_RIGHT_ALIGNED).splitlines())

    top = ordered[0]
    lines += ["", f"most idle: stream {top.get('stream_id')} ({_printable(str(top.get('name')))})"]
    if top.get("trace_id"):
        lines.append(f"  trace_id {top['trace_id']}")
    stack = top.get("stack") or []
    if stack:
        lines.append("  suspended in (innermost last):")
        lines.extend(f"    {frame}" for frame in stack)
    else:
        lines.append("  no stack: the producing task is not suspended in a coroutine")
    return "\n".join(_clip(text, width) for text in lines) + "\n"


def run(
    url: str,
    *,
    watch: bool = False,
    interval: float = 1.0,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the view once, or redraw it every `interval` seconds until Ctrl-C; exit code."""
    stream = out if out is not None else sys.stdout
    endpoint = inflight_url(url)
    if not watch:
        try:
            snapshots = fetch(endpoint)
        except READ_ERRORS as exc:
            print(f"thunkscope inflight: cannot read {endpoint}: {reason(exc)}", file=sys.stderr)
            return 1
        stream.write(render(snapshots, source=endpoint, width=width(stream)))
        stream.flush()
        return 0
    tty = stream.isatty()
    try:
        while True:
            clock = time.strftime("%H:%M:%S")
            try:
                frame = render(fetch(endpoint), source=endpoint, width=width(stream), clock=clock)
            except READ_ERRORS as exc:
                frame = (
                    f"thunkscope inflight  {endpoint}  {clock}\n\ncannot read it: {reason(exc)}\n"
                )
            stream.write((CLEAR if tty else "\n") + frame)
            stream.flush()
            sleep(interval)
    except KeyboardInterrupt:
        return 0


def table(columns: Sequence[str], rows: Sequence[dict[str, str]], *, right: frozenset[str]) -> str:
    """A header line and one line per row, columns padded to their widest cell; the last
    column is never padded. Control characters in cells are shown escaped, so that a
    hostile stream name cannot move the cursor or break the line."""
    cells = [{col: _printable(row[col]) for col in columns} for row in rows]
    widths = {col: max(len(col), *(len(row[col]) for row in cells)) for col in columns}
    widths[columns[-1]] = 0

    def line(values: dict[str, str]) -> str:
        parts = [
            values[col].rjust(widths[col]) if col in right else values[col].ljust(widths[col])
            for col in columns
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line({col: col for col in columns}), *map(line, cells)]) + "\n"


def _printable(value: str) -> str:
    return value if value.isprintable() else repr(value)[1:-1]


def _row(snap: Snapshot) -> dict[str, str]:
    stack = snap.get("stack") or []
    trace_id = snap.get("trace_id") or ""
    return {
        "PID": str(snap.get("pid", "")),
        "SERVICE": str(snap.get("service_name", "")),
        "IDLE": duration(snap.get("idle_s")),
        "AGE": duration(snap.get("age_s")),
        "STATE": str(snap.get("state", "")),
        "ITEMS": str(snap.get("items", "")),
        "NAME": str(snap.get("name", "")),
        "STREAM": str(snap.get("stream_id", "")),
        "BACKEND": str(snap.get("backend_type", "")),
        "TRACE": str(trace_id)[:8] or "-",
        "WHERE": _short_frame(_where(stack)) if stack else "-",
    }


def _where(stack: Sequence[Any]) -> str:
    """The innermost frame outside asyncio's own code: where the backend is waiting."""
    for frame in reversed(stack):
        if _ASYNCIO_DIR not in str(frame):
            return str(frame)
    return str(stack[-1])


def _short_frame(frame: str) -> str:
    """'/long/path/file.py:12 in fn' as 'file.py:12 in fn'."""
    location, sep, function = frame.partition(" in ")
    path, colon, line = location.rpartition(":")
    if not colon:
        return frame
    return f"{os.path.basename(path)}:{line}{sep}{function}"


def duration(value: Any) -> str:
    seconds = number(value)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _clip(line: str, width: int | None) -> str:
    if width is None or len(line) <= width:
        return line
    return line[: max(width - 1, 0)] + "…"


def width(stream: TextIO) -> int | None:
    """The terminal's width when drawing on one; no clipping into a pipe or a file."""
    try:
        return shutil.get_terminal_size().columns if stream.isatty() else None
    except (AttributeError, ValueError, OSError):
        return None


def reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
        return f"not a valid HTTP reply: {exc!r}"
    return str(exc) or type(exc).__name__
