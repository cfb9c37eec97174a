"""serve_debug: the in-flight view over HTTP, for a look at a process from outside it.

A stalled stream blocks no event loop and ends no span, so neither loop monitors nor
traces show it while it hangs. `serve_debug` answers ``GET <url>inflight`` with
`thunkscope.inflight()` as JSON, from a background thread, so the answer comes even
when every event loop of the process is busy or stuck::

    debug = thunkscope.serve_debug(port=8765)   # http://127.0.0.1:8765/
    ...
    debug.close()

and ``thunkscope inflight --url http://127.0.0.1:8765/ --watch`` shows it as a live
table. The snapshots carry stack traces and trace ids, so the server binds to
loopback only, and answers 403 to a request whose Host header names anything but a
loopback address or localhost (a web page that rebinds its DNS name to 127.0.0.1 cannot
read it), unless the caller passes ``allow_non_loopback=True``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from thunkscope import _debug_page, _discovery, names
from thunkscope._inflight import inflight
from thunkscope._instance import instance_id, service_name
from thunkscope._settings import count, text
from thunkscope._telemetry import telemetry

__all__ = ["DebugServer", "serve_debug", "serve_debug_in_every_process"]

INFLIGHT_PATH: Final = "inflight"
# The one loopback name, with or without its trailing dot; the server binds IPv4 for a
# name, so no IPv6-only name such as Debian's ip6-localhost.
_LOOPBACK_NAME: Final = "localhost"


def serve_debug(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_non_loopback: bool = False,
    discover: bool = True,
) -> DebugServer:
    """Serve the in-flight view over HTTP from a daemon thread; return its handle.

    With `discover` (the default) the process's discovery file is written so that
    ``thunkscope ps`` and ``thunkscope inflight`` find it; a discovery directory that is
    not a directory or not the user's own is a `DiscoveryError` (nothing is served).

    `port` 0 picks a free port (read it from the handle's ``url``). A `host` that is not
    a loopback address is a ValueError unless `allow_non_loopback` is true: the view
    shows where code is suspended and which traces are running.
    """
    text("host", host, blank_ok=True, wrong_type=ValueError)
    count("port", port, low=0, high=65535, note=" (0: any free port)", wrong_type=ValueError)
    if not allow_non_loopback and not _is_loopback(host):
        raise ValueError(
            f"host={host!r} is not a loopback address: the in-flight view shows stack "
            "traces and trace ids, so serve_debug binds to 127.0.0.1, ::1 or localhost "
            "only. Pass allow_non_loopback=True to serve it on other interfaces."
        )
    if not isinstance(discover, bool):
        raise TypeError(f"discover must be a bool, got {type(discover).__name__}")
    return DebugServer(host, port, any_host_header=allow_non_loopback, discover=discover)


def _is_loopback(host: str) -> bool:
    if host.lower().removesuffix(".") == _LOOPBACK_NAME:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: what it resolves to may change, so no


def _is_loopback_host_header(value: str) -> bool:
    """Whether a Host header (``name``, ``name:port``, ``[v6]:port``) names loopback."""
    name = value.strip()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return bool(name) and _is_loopback(name)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    any_host_header = False


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "thunkscope-debug"

    server: _Server

    def do_GET(self) -> None:
        host = self.headers.get("Host")  # absent: not a browser, so not DNS rebinding
        if not (self.server.any_host_header or host is None or _is_loopback_host_header(host)):
            self._send(HTTPStatus.FORBIDDEN, {"error": "forbidden Host header"})
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == f"/{INFLIGHT_PATH}":
            try:
                body = json.dumps(inflight(), default=str).encode()
            except Exception as exc:
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})
                return
            self._send_bytes(HTTPStatus.OK, body)
        elif path == "":
            self._send_page()
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})

    def _send_page(self) -> None:
        nonce = _debug_page.new_nonce()
        body = _debug_page.render(
            service=service_name(),
            instance=instance_id(),
            trace_url=telemetry.settings.trace_url,
            nonce=nonce,
        )
        self._send_bytes(
            HTTPStatus.OK,
            body,
            content_type="text/html; charset=utf-8",
            csp=_debug_page.content_security_policy(nonce),
        )

    def _send(self, status: HTTPStatus, payload: Any) -> None:
        self._send_bytes(status, json.dumps(payload).encode())

    def _send_bytes(
        self,
        status: HTTPStatus,
        body: bytes,
        *,
        content_type: str = "application/json",
        csp: str | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        if csp is not None:
            self.send_header("Content-Security-Policy", csp)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a --watch client polls every second."""


class DebugServer:
    """A running `serve_debug` server: its base ``url`` and ``close()``."""

    def __init__(
        self, host: str, port: int, *, any_host_header: bool = False, discover: bool = False
    ) -> None:
        bare = host.strip("[]").removesuffix(".")  # "localhost." does not resolve everywhere
        server_class = _Server6 if ":" in bare else _Server
        self._server = server_class((bare, port), _Handler)
        self._server.any_host_header = any_host_header
        bound_port = self._server.server_address[1]
        shown = f"[{bare}]" if ":" in bare else bare
        self.url: str = f"http://{shown}:{bound_port}/"
        """The base URL, ending in ``/``; the view is at ``url + "inflight"``."""
        self._lock = threading.Lock()
        self._closed = False
        self.discovery_file: Path | None = None
        """This process's discovery file, while this endpoint serves and has one."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="thunkscope-debug-server",
            daemon=True,
        )
        self._thread.start()
        if discover:
            try:
                self.discovery_file = _discovery.write(self.url, service_name(), instance_id())
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Stop serving and release the port; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.discovery_file is not None:
            _discovery.remove(self.discovery_file, self.url)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def close_inherited(self) -> None:
        """In a forked child: release the parent's socket; there is no thread to stop, and
        the discovery file is the parent's."""
        self._closed = True
        self.discovery_file = None
        self._server.server_close()

    def __enter__(self) -> DebugServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<DebugServer {self.url} {state}>"


# --- the endpoint of every process (configure(debug_server=True)) -----------------------------

_log = logging.getLogger(names.LOGGER_NAME)
_per_process: DebugServer | None = None
_per_process_lock = threading.Lock()
_fork_hook_registered = False


def serve_debug_in_every_process() -> DebugServer | None:
    """Serve the debug endpoint on 127.0.0.1 (free port) in this process, once, and in
    every child forked from it later; None (with a warning) if it cannot start.

    A forked child inherits the parent's listening socket but not its serving thread:
    it closes the socket and starts an endpoint, and a discovery file, of its own.
    Telemetry never breaks the application, so a failure is a warning, not an error.
    """
    global _per_process, _fork_hook_registered
    with _per_process_lock:
        if _per_process is None:
            try:
                _per_process = serve_debug()
            except (OSError, _discovery.DiscoveryError) as exc:
                _log.warning("thunkscope: the debug endpoint did not start: %s", exc)
                return None
        if not _fork_hook_registered:
            _fork_hook_registered = True
            os.register_at_fork(after_in_child=_serve_in_forked_child)
        return _per_process


def _serve_in_forked_child() -> None:
    global _per_process, _per_process_lock
    _per_process_lock = threading.Lock()  # another thread may have held it at the fork
    inherited, _per_process = _per_process, None
    if inherited is None:
        return
    inherited.close_inherited()
    serve_debug_in_every_process()
