"""Misbehaving OTLP collectors on loopback, and a runner for scripts in a fresh interpreter.

``FaultyCollector(mode)`` stands where a collector should be and fails in one way:

- ``refuse``: nothing listens on the port (connection refused).
- ``hang``: accepts connections, reads the request, never answers.
- ``500`` / ``503``: answers every request with that HTTP status.
- ``vanish``: answers ``200`` until a ``GET /vanish`` arrives, then closes its
  listening socket and every connection (a collector that disappears mid-run).

``run_python(script)`` runs a script in a new interpreter (OTel's global providers can be
set once per process), feeding it nothing, and returns the JSON object it printed last.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self

from support.loopback import StartStop, free_port

Mode = Literal["refuse", "hang", "500", "503", "vanish"]
MODES: tuple[Mode, ...] = ("refuse", "hang", "500", "503", "vanish")

_SRC = str(Path(__file__).resolve().parents[2] / "src")


class _StatusServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, status: int, owner: FaultyCollector) -> None:
        self.status = status
        self.owner = owner
        self.connections: list[socket.socket] = []
        super().__init__(("127.0.0.1", 0), _StatusHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.append(request)
        super().process_request(request, client_address)


class _StatusHandler(BaseHTTPRequestHandler):
    server: _StatusServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.owner.requests.append(self.path)
        self._answer(self.server.status)

    def do_GET(self) -> None:
        if self.path == "/vanish":
            self._answer(200)
            threading.Thread(target=self.server.owner.vanish, daemon=True).start()
        else:
            self._answer(404)

    def _answer(self, status: int) -> None:
        body = b"" if status == 200 else b"collector says no"
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FaultyCollector(StartStop):
    """A loopback collector that misbehaves in one way (see the module docs)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.requests: list[str] = []
        self.port = 0
        self._http: _StatusServer | None = None
        self._listener: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.vanished = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self.mode == "refuse":
            self.port = free_port()
        elif self.mode == "hang":
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            listener.settimeout(0.05)
            self._listener = listener
            self.port = listener.getsockname()[1]
            self._spawn(self._hang)
        else:
            status = 200 if self.mode == "vanish" else int(self.mode)
            self._http = _StatusServer(status, self)
            self.port = self._http.server_address[1]
            self._spawn(lambda: self._http.serve_forever(poll_interval=0.05))  # type: ignore[union-attr]
        return self

    def _spawn(self, target: Any) -> None:
        thread = threading.Thread(target=target, daemon=True, name=f"faulty-{self.mode}")
        thread.start()
        self._threads.append(thread)

    def _hang(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            conn.settimeout(0.05)
            self._held.append(conn)
            self.requests.append("accepted")
            # Drain what the client sends so it blocks waiting for the answer, not on send.
            for held in list(self._held):
                with contextlib.suppress(OSError):
                    held.recv(65536)

    def vanish(self) -> None:
        """Close the listening socket and every connection: the collector is gone."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            for conn in self._http.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()
        self.vanished.set()

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None and not self.vanished.is_set():
            self.vanish()
        if self._listener is not None:
            self._listener.close()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        for thread in self._threads:
            thread.join(timeout=2)


def run_python(
    script: str, *, env: dict[str, str] | None = None, timeout: float = 90.0
) -> dict[str, Any]:
    """Run `script` in a fresh interpreter; return the JSON object on its last stdout line.

    The environment is this one's without OTEL_* and THUNKSCOPE_* variables, plus `env`.
    A non-zero exit is an AssertionError carrying the script's stderr.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "THUNKSCOPE_"))}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, clean.get("PYTHONPATH")) if p)
    clean.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(script)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"script exited with {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"script printed nothing; stderr:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["_stderr"] = proc.stderr
    return result
