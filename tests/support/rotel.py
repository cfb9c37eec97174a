"""The real ``rotel-agent`` as a test collector: its debug exporter's text, parsed back into
the records of `support.records`."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from support.loopback import StartStop, free_port
from support.records import (
    POLL_INTERVAL,
    WAIT_TIMEOUT_S,
    LogRecordData,
    MetricPoint,
    Protocol,
    SpanRecord,
    T,
    Views,
    log_exporter,
    metric_exporter,
    new_log,
    new_point,
    new_span,
    span_exporter,
    timeout_message,
)

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter


# --------------------------------------------------------------------------------------------
# rotel's debug-exporter text
# --------------------------------------------------------------------------------------------

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_OWN_LOG_RE = re.compile(r"^(?:\x1b\[[0-9;]*m)*\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_RESOURCE_RE = re.compile(r"^Resource(?:Spans|Metrics|Logs?) #\d+$", re.MULTILINE)
_HEADER_RE = re.compile(
    r"^(?P<h>ResourceSpans|ResourceMetrics|ResourceLogs?|ScopeSpans|ScopeMetrics|ScopeLogs|Span"
    r"|SpanEvent|SpanLink|Metric|NumberDataPoints|HistogramDataPoints"
    r"|ExponentialHistogramDataPoints|SummaryDataPoints|LogRecord|Exemplar) #\d+$"
)
_SECTION_RE = re.compile(
    r"^(?P<s>Resource attributes|InstrumentationScope attributes|Attributes|Events|Links"
    r"|Descriptor|Data point attributes|Exemplars):$"
)
_TOP_KV_RE = re.compile(
    r"^(?P<k>Resource SchemaURL|ScopeSpans SchemaURL|ScopeMetrics SchemaURL|ScopeLogs SchemaURL"
    r"|Start time|End time|StartTimestamp|Timestamp|ObservedTimestamp|Value|Count|Sum|Min|Max"
    r"|SeverityText|SeverityNumber|Body|Flags|EventName|DroppedAttributesCount"
    r"|ExplicitBounds #\d+|QuantileValue #\d+): ?(?P<v>.*)$",
    re.DOTALL,
)
_BUCKET_RE = re.compile(r"^Buckets? (?P<b>.*), Count: (?P<c>\d+)$")
_SCOPE_RE = re.compile(r"^InstrumentationScope (?P<name>\S*) ?(?P<version>.*)$")
# "    {key:<15}: {value}" (span ids, name, kind, status; a log record's ids)
_PADDED_RE = re.compile(
    r"^    (?=[A-Z][A-Za-z ]{14}: )(?P<k>[A-Za-z ]+?) *: ?(?P<v>.*)$", re.DOTALL
)
_ARROW_RE = re.compile(r"^(?P<indent> +)-> (?P<rest>.*)$", re.DOTALL)
_SEVERITY_RE = re.compile(r"^SEVERITY_NUMBER_(?P<name>\w+?)\((?P<n>-?\d+)\)$")

_TYPE_TAGS = ("Str", "Int", "Double", "Bool", "Slice", "Map", "Bytes")
# Top-level keys whose value is a plain integer, and the record field each one fills (one
# table rather than an ``elif`` a key: spans say "Start time", data points "StartTimestamp").
_INT_FIELDS = {
    "Start time": "start_time_unix_nano",
    "StartTimestamp": "start_time_unix_nano",
    "End time": "end_time_unix_nano",
    "Timestamp": "time_unix_nano",
    "ObservedTimestamp": "observed_time_unix_nano",
    "Count": "count",
    "Flags": "flags",
}


def _is_structural(line: str) -> bool:
    return bool(
        _HEADER_RE.match(line)
        or _SECTION_RE.match(line)
        or _TOP_KV_RE.match(line)
        or _BUCKET_RE.match(line)
        or line.startswith("InstrumentationScope ")
        or _PADDED_RE.match(line)
        or _ARROW_RE.match(line)
    )


def _logical_lines(text: str) -> Iterator[str]:
    """Lines of the report, with the continuation lines of multi-line strings joined back."""
    current: str | None = None
    for line in text.removesuffix("\n").split("\n"):
        if _OWN_LOG_RE.match(line):  # rotel's own log lines ("Starting Rotel." ...)
            if current is not None:
                yield current
            current = None
            continue
        if _is_structural(line) or current is None:
            if current is not None:
                yield current
            current = line
        else:
            current += "\n" + line
    if current is not None:
        yield current


def _number(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)  # also "inf", "-inf", "NaN" as Rust prints them


def _parse_value(text: str) -> Any:
    """Parse one value as the debug exporter prints it: ``Str(x)``, ``Int(1)``, ``Slice(...)``,
    ``Map(k:Str(v), ...)``, ``Bytes([0, 1])``, ``Empty``; anything else stays the raw text.

    Strings are printed unescaped, so a ``)`` inside one is ambiguous: the parser backtracks
    over the possible ends and keeps the first reading that consumes the whole text.
    """
    for value, rest in _values(text):
        if rest == "":
            return value
    return text


def _values(text: str) -> Iterator[tuple[Any, str]]:
    """Every way of reading one value from the start of ``text``: (value, text after it)."""
    if text.startswith("Empty"):
        yield None, text[len("Empty") :]
        return
    tag, paren, body = text.partition("(")
    if not paren or tag not in _TYPE_TAGS:
        return
    if tag == "Str":
        close = body.find(")")
        while close >= 0:
            yield body[:close], body[close + 1 :]
            close = body.find(")", close + 1)
    elif tag in ("Int", "Double", "Bool"):
        raw, _, rest = body.partition(")")
        try:
            yield (raw == "true" if tag == "Bool" else _number(raw)), rest
        except ValueError:
            return
    elif tag == "Bytes":
        raw, _, rest = body.partition("])")
        try:
            yield bytes(int(b) for b in raw.lstrip("[").split(",") if b.strip()), rest
        except ValueError:
            return
    elif body.startswith(")"):
        yield ({} if tag == "Map" else []), body[1:]
    else:
        for items, rest in _sequence(body, is_map=tag == "Map"):
            yield (dict(items) if tag == "Map" else [v for _, v in items]), rest


def _sequence(text: str, *, is_map: bool) -> Iterator[tuple[list[tuple[str, Any]], str]]:
    """Readings of ``item, item, ...)`` (Map items are ``key:Value``), the ``)`` consumed."""
    key = ""
    if is_map:
        key, sep, text = text.partition(":")
        if not sep:
            return
    for value, rest in _values(text):
        if rest.startswith(")"):
            yield [(key, value)], rest[1:]
        if rest.startswith(", "):
            for more, after in _sequence(rest[2:], is_map=is_map):
                yield [(key, value), *more], after


class _RotelParser:
    """State machine over the logical lines of rotel's ``--debug-log-verbosity detailed``."""

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []
        self.points: list[MetricPoint] = []
        self.logs: list[LogRecordData] = []
        self.unparsed: list[str] = []
        self._resource: dict[str, Any] = {}
        self._scope: tuple[str, str] = ("", "")
        self._record: Any = None  # the SpanRecord / MetricPoint / LogRecordData being filled
        self._descriptor: dict[str, Any] = {}
        self._sub: dict[str, Any] | None = None  # event, link, exemplar or descriptor
        self._attr_target: dict[str, Any] | None = None
        self._attr_indent = 0

    def feed(self, text: str) -> None:
        for line in _logical_lines(text):
            if line:
                self._line(line)

    def _line(self, line: str) -> None:
        if m := _HEADER_RE.match(line):
            self._header(m["h"])
        elif m := _SECTION_RE.match(line):
            self._section(m["s"])
        elif m := _ARROW_RE.match(line):
            self._arrow(len(m["indent"]), m["rest"])
        elif m := _BUCKET_RE.match(line):
            if self._record is not None and "bucket_counts" in self._record:
                self._record["bucket_counts"].append(int(m["c"]))
        elif m := _SCOPE_RE.match(line):
            self._scope = (m["name"], m["version"].strip())
        elif m := _TOP_KV_RE.match(line):
            self._top_kv(m["k"], m["v"])
        elif m := _PADDED_RE.match(line):
            self._padded(m["k"].strip(), m["v"])
        else:
            self.unparsed.append(line)

    def _header(self, header: str) -> None:
        self._attr_target = None
        self._sub = None
        if header.startswith("Resource"):
            self._resource = {}
            self._scope = ("", "")
            self._record = None
        elif header.startswith("Scope"):
            self._scope = ("", "")
            self._record = None
        elif header == "Span":
            self._record = new_span(self._resource, self._scope)
            self.spans.append(self._record)
        elif header == "SpanEvent" and self._record is not None:
            self._sub = {"name": "", "time_unix_nano": 0, "attributes": {}}
            self._record["events"].append(self._sub)
        elif header == "SpanLink" and self._record is not None:
            self._sub = {"trace_id": "", "span_id": "", "attributes": {}}
            self._record["links"].append(self._sub)
        elif header == "Metric":
            self._record = None
            self._descriptor = {"resource": self._resource, "scope": self._scope}
        elif header.endswith("DataPoints"):
            self._record = new_point(self._descriptor)
            self.points.append(self._record)
        elif header == "Exemplar" and self._record is not None:
            self._sub = {"attributes": {}}
            self._record["exemplars"].append(self._sub)
        elif header == "LogRecord":
            self._record = new_log(self._resource, self._scope)
            self.logs.append(self._record)

    def _section(self, section: str) -> None:
        self._sub = None
        self._attr_indent = 5
        if section == "Resource attributes":
            self._attr_target = self._resource
        elif section == "InstrumentationScope attributes":
            self._attr_target = {}
        elif section in ("Attributes", "Data point attributes") and self._record is not None:
            self._attr_target = self._record["attributes"]
        elif section == "Descriptor":
            self._attr_target = None
            self._sub = self._descriptor
        else:  # Events:, Links:, Exemplars:
            self._attr_target = None

    def _arrow(self, indent: int, rest: str) -> None:
        key, sep, raw = rest.partition(": ")
        if not sep:  # "-> Attributes::", "-> FilteredAttributes:", "-> Description:" (empty)
            key = rest.rstrip(":")
            raw = ""
            if key in ("Attributes", "FilteredAttributes") and self._sub is not None:
                self._attr_target = self._sub.setdefault("attributes", {})
                self._attr_indent = indent + 5
                return
        if self._attr_target is not None and indent == self._attr_indent:
            self._attr_target[key] = _parse_value(raw)
            return
        sub = self._sub
        if sub is None:
            self.unparsed.append(rest)
            return
        if sub is self._descriptor:
            self._descriptor_field(key, raw)
        elif key == "Name":
            sub["name"] = raw
            self._record["event_names"].append(raw)
        elif key == "Timestamp":
            sub["time_unix_nano"] = int(raw)
        elif key == "Trace ID":
            sub["trace_id"] = raw
        elif key in ("ID", "Span ID"):
            sub["span_id"] = raw
        elif key == "Value":
            sub["value"] = _number(raw)

    def _descriptor_field(self, key: str, raw: str) -> None:
        d = self._descriptor
        if key == "Name":
            d["name"] = raw
        elif key == "Description":
            d["description"] = raw
        elif key == "Unit":
            d["unit"] = raw
        elif key == "DataType":
            d["type"] = raw
        elif key == "IsMonotonic":
            d["monotonic"] = raw == "true"
        elif key == "AggregationTemporality":
            d["temporality"] = raw.removeprefix("AGGREGATION_TEMPORALITY_")

    def _top_kv(self, key: str, raw: str) -> None:
        rec = self._record
        self._attr_target = None
        if rec is None:
            return
        if key in _INT_FIELDS:
            rec[_INT_FIELDS[key]] = int(raw)
        elif key in ("Value", "Sum", "Min", "Max"):
            rec[key.lower()] = _number(raw)
        elif key.startswith("ExplicitBounds"):
            rec["explicit_bounds"].append(_number(raw))
        elif key == "SeverityText":
            rec["severity_text"] = raw
        elif key == "SeverityNumber":
            if m := _SEVERITY_RE.match(raw):
                rec["severity_number"] = int(m["n"])
                rec["severity"] = m["name"]
        elif key == "Body":
            rec["body"] = _parse_value(raw)

    def _padded(self, key: str, raw: str) -> None:
        rec = self._record
        if rec is None:
            return
        if key == "Trace ID":
            is_log = "body" in rec
            rec["trace_id"] = (raw or None) if is_log else raw
        elif key == "Span ID":
            rec["span_id"] = raw or None
        elif key == "Parent ID":
            rec["parent_span_id"] = raw or None
        elif key == "ID":
            rec["span_id"] = raw
        elif key == "Name":
            rec["name"] = raw
        elif key == "Kind":
            rec["kind"] = raw.removeprefix("SPAN_KIND_")
        elif key == "Status code":
            rec["status"] = raw.removeprefix("STATUS_CODE_")
        elif key == "Status message":
            rec["status_message"] = raw


def parse_rotel_output(
    text: str,
) -> tuple[list[SpanRecord], list[MetricPoint], list[LogRecordData]]:
    """Parse rotel's detailed debug output into (spans, metric points, log records)."""
    parser = _RotelParser()
    parser.feed(text)
    return parser.spans, parser.points, parser.logs


# --------------------------------------------------------------------------------------------
# Ports, binaries, exporters
# --------------------------------------------------------------------------------------------


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of sockets listening on 127.0.0.1:port, or None where /proc can't tell."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    wanted = f"0100007F:{port:04X}"
    return {
        fields[9]
        for fields in (line.split() for line in lines)
        if len(fields) > 9 and fields[1] == wanted and fields[3] == "0A"
    }


def _owns_listener(pid: int, port: int) -> bool:
    inodes = _listening_inodes(port)
    if inodes is None:
        return _accepts(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return _accepts(port)
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


def find_rotel_agent() -> Path:
    """The ``rotel-agent`` binary inside the installed ``rotel`` package."""
    spec = importlib.util.find_spec("rotel")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "rotel-agent"
        if candidate.is_file():
            return candidate
    found = shutil.which("rotel-agent")
    if found:
        return Path(found)
    raise RuntimeError(
        "rotel-agent not found: install the test extras (pip install -e '.[test]', "
        "which pins rotel==0.0.1a15)"
    )


# --------------------------------------------------------------------------------------------
# rotel
# --------------------------------------------------------------------------------------------


def _agent_environment() -> dict[str, str]:
    """This environment without ROTEL_* settings, able to load this interpreter's libpython.

    The rotel wheel's agent embeds the CPython it was installed for and links its shared
    library by name. Debian's interpreters keep it on the loader's path; pyenv-built ones
    (the 3.12 and 3.13 CI runs) keep it in their own LIBDIR, which the agent must be shown.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p
        )
    return env


class RotelCollector(Views, StartStop):
    """The real ``rotel-agent`` on two free loopback ports, printing what it receives.

    ``with RotelCollector() as rotel: ...`` (or ``RotelCollector(workdir).start()`` and
    ``.stop()``). Its stdout and stderr go to ``output_path``, a ``rotel-*.log`` file in
    ``workdir`` (kept), or in a temporary directory removed on stop when no workdir is given.
    Parsed records stay readable after stop.
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        self._workdir_given = workdir is not None
        self._workdir = Path(workdir) if workdir is not None else None
        self._extra_args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: Any = None  # binary file object reading the output
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()
        self._text = ""
        self._parsed_upto = 0  # offset in _text up to which blocks are parsed for good
        self._spans: list[SpanRecord] = []
        self._points: list[MetricPoint] = []
        self._logs: list[LogRecordData] = []
        self._view: tuple[list[SpanRecord], list[MetricPoint], list[LogRecordData]] = ([], [], [])
        self._view_len = -1
        self.grpc_port = 0
        self.http_port = 0
        self.output_path: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def grpc_endpoint(self) -> str:
        """``http://127.0.0.1:<grpc port>``: the OTLP gRPC exporter's ``endpoint``."""
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """``http://127.0.0.1:<http port>``: base of ``/v1/traces``, ``/v1/metrics``, ..."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        if self._proc is not None:
            return self
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="rotel-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        binary = find_rotel_agent()
        env = _agent_environment()
        last_error = ""
        for attempt in range(5):
            self.grpc_port, self.http_port = free_port(), free_port()
            if self.grpc_port == self.http_port:
                continue
            path = self._workdir / f"rotel-{os.getpid()}-{attempt}-{self.grpc_port}.log"
            cmd = [
                str(binary),
                "start",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{self.grpc_port}",
                "--otlp-http-endpoint",
                f"127.0.0.1:{self.http_port}",
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log",
                "metrics",
                "--debug-log",
                "logs",
                "--debug-log-verbosity",
                "detailed",
                "--pid-file",
                str(self._workdir / f"rotel-{self.grpc_port}.pid"),
                *self._extra_args,
            ]
            with path.open("wb") as out:
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
            if self._wait_listening(proc):
                self._proc = proc
                self.output_path = path
                self._reader = path.open("rb")
                return self
            self._end(proc)
            last_error = path.read_text(errors="replace")
        self._cleanup_workdir()
        raise RuntimeError(f"rotel-agent did not start; its last output:\n{last_error}")

    def _wait_listening(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if _owns_listener(proc.pid, self.grpc_port) and _owns_listener(
                proc.pid, self.http_port
            ):
                return True
            time.sleep(0.005)
        return False

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def stop(self) -> None:
        """Terminate (then kill) the agent, close the output file, remove a temporary workdir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._end(proc)
        if self._reader is not None:
            with self._lock:
                self._read_new()
                self._reader.close()
                self._reader = None
        self._cleanup_workdir()

    def _cleanup_workdir(self) -> None:
        if not self._workdir_given and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- reading -----------------------------------------------------------------------------

    def _read_new(self) -> None:
        if self._reader is None:
            return
        data = self._reader.read()
        if data:
            self._text += self._decoder.decode(data)

    def output(self) -> str:
        """Everything the agent printed so far (stdout and stderr), ANSI colours stripped."""
        with self._lock:
            self._read_new()
            return _ANSI_RE.sub("", self._text)

    def _parsed(self) -> tuple[list[SpanRecord], list[MetricPoint], list[LogRecordData]]:
        with self._lock:
            self._read_new()
            text = self._text
            if len(text) == self._view_len:
                return self._view
            # Only complete lines; every export is one write(2), so whole blocks but the last
            # are final: parse them once, and re-parse the last one until another follows it.
            complete = text[: text.rfind("\n") + 1]
            starts = [m.start() for m in _RESOURCE_RE.finditer(complete, self._parsed_upto)]
            if len(starts) > 1:
                spans, points, logs = parse_rotel_output(complete[self._parsed_upto : starts[-1]])
                self._spans += spans
                self._points += points
                self._logs += logs
                self._parsed_upto = starts[-1]
            tail_spans, tail_points, tail_logs = parse_rotel_output(complete[self._parsed_upto :])
            self._view = (
                self._spans + tail_spans,
                self._points + tail_points,
                self._logs + tail_logs,
            )
            self._view_len = len(text)
            return self._view

    def spans(self) -> list[SpanRecord]:
        """Every span received so far, in the order rotel printed them (end order, per batch)."""
        return list(self._parsed()[0])

    def metric_points(self) -> list[MetricPoint]:
        """Every metric data point received so far, flat, in arrival order."""
        return list(self._parsed()[1])

    def logs(self) -> list[LogRecordData]:
        """Every log record received so far, in arrival order."""
        return list(self._parsed()[2])

    # -- waiting -----------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"rotel-agent exited:\n{self.output()[-3000:]}")

    def _poll(self, predicate: Callable[[], T | None], deadline: float, timeout: float) -> T | None:
        """One look for ``wait_for`` and ``wait_for_async``, which differ only in how they sleep:
        ``predicate()``'s truthy result, or None to look again; raises once past ``deadline`` or
        once rotel has exited."""
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(timeout_message("predicate", timeout, self.output()))
        self._check_alive()
        return None

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = WAIT_TIMEOUT_S) -> T:
        """Poll ``predicate()`` until it returns something truthy, and return that.

        Raises ``TimeoutError`` (with the tail of rotel's output) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if (result := self._poll(predicate, deadline, timeout)) is not None:
                return result
            time.sleep(POLL_INTERVAL)

    async def wait_for_async(
        self,
        predicate: Callable[[], T | None],
        timeout: float = WAIT_TIMEOUT_S,  # noqa: ASYNC109
    ) -> T:
        """``wait_for`` that sleeps with ``asyncio.sleep``, for use inside async tests."""
        deadline = time.monotonic() + timeout
        while True:
            if (result := self._poll(predicate, deadline, timeout)) is not None:
                return result
            await asyncio.sleep(POLL_INTERVAL)

    def wait_for_spans(
        self, count: int = 1, *, name: str | None = None, timeout: float = WAIT_TIMEOUT_S
    ) -> list[SpanRecord]:
        """Wait until ``count`` spans (named ``name``, if given) arrived; return all of them."""

        def matching() -> list[SpanRecord]:
            found = [s for s in self.spans() if name is None or s["name"] == name]
            return found if len(found) >= count else []

        return self.wait_for(matching, timeout)

    def wait_for_point(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        where: Callable[[MetricPoint], bool] | None = None,
        timeout: float = WAIT_TIMEOUT_S,
    ) -> MetricPoint:
        """Wait for a data point of ``name`` with ``attributes`` (and ``where``); return the
        latest such point."""

        def latest() -> MetricPoint | None:
            found = [p for p in self.points(name, attributes) if where is None or where(p)]
            return found[-1] if found else None

        return self.wait_for(latest, timeout)

    def wait_for_logs(
        self,
        count: int = 1,
        *,
        where: Callable[[LogRecordData], bool] | None = None,
        timeout: float = WAIT_TIMEOUT_S,
    ) -> list[LogRecordData]:
        """Wait until ``count`` log records (matching ``where``) arrived; return all of them."""

        def matching() -> list[LogRecordData]:
            found = [r for r in self.logs() if where is None or where(r)]
            return found if len(found) >= count else []

        return self.wait_for(matching, timeout)

    # -- exporters pointed at this collector --------------------------------------------------

    def span_exporter(self, protocol: Protocol = "http/protobuf") -> SpanExporter:
        return span_exporter(protocol, self.http_endpoint, self.grpc_endpoint)

    def metric_exporter(
        self, protocol: Protocol = "http/protobuf", **kwargs: Any
    ) -> MetricExporter:
        """Extra kwargs (``preferred_temporality``, ...) go to the OTLP metric exporter."""
        return metric_exporter(protocol, self.http_endpoint, self.grpc_endpoint, **kwargs)

    def log_exporter(self, protocol: Protocol = "http/protobuf") -> LogRecordExporter:
        return log_exporter(protocol, self.http_endpoint, self.grpc_endpoint)
