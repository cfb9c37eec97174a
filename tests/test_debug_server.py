"""serve_debug: the in-flight view as JSON over HTTP, on loopback unless told otherwise."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import thunkscope
from support.waiting import until
from thunkscope import DebugServer, send_to_queue, serve_debug


def get(url: str) -> tuple[int, str, Any]:
    """Status, content type and decoded JSON body of one GET (error statuses included)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], json.loads(error.read())


async def stuck_backend(release: asyncio.Event, given: asyncio.Event) -> AsyncIterator[str]:
    """Two items, then nothing until released; `given` is set once both are taken."""
    yield "a"
    yield "b"
    given.set()
    await release.wait()


@pytest.fixture
def server() -> Iterator[DebugServer]:
    """A debug server on a free loopback port, closed after the test."""
    handle = serve_debug()
    try:
        yield handle
    finally:
        handle.close()


def get_with_host(url: str, host: str) -> tuple[int, Any]:
    """Status and JSON body of a GET of `url` whose Host header is `host`, as a browser
    sends it for a page of that name (a DNS rebinding attack names the attacker's host)."""
    base, _, path = url.removeprefix("http://").partition("/")
    address, _, port = base.rpartition(":")
    connection = http.client.HTTPConnection(address.strip("[]"), int(port), timeout=5)
    try:
        connection.request("GET", "/" + path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class TestEndpoint:
    def test_url(self, server: DebugServer) -> None:
        """The handle's url is the loopback base URL of a free port, ending in a slash."""
        assert server.url.startswith("http://127.0.0.1:")
        assert server.url.endswith("/")
        port = int(server.url.rsplit(":", 1)[1].rstrip("/"))
        assert port > 0
        # The listening socket itself, not just the URL built from the host argument.
        listening = server._server.socket
        assert listening.family == socket.AF_INET
        assert listening.getsockname() == ("127.0.0.1", port)

    async def test_json_of_a_running_stream(self, server: DebugServer, telemetry: Any) -> None:
        """GET <url>inflight answers the snapshots of a real running stream as a JSON list."""
        release, given = asyncio.Event(), asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(
            send_to_queue(stuck_backend(release, given), queue, stall_after=0.05, name="served")
        )
        await given.wait()
        await until(lambda: [s["state"] for s in thunkscope.inflight()] == ["stalled"])
        status, content_type, body = await asyncio.to_thread(get, server.url + "inflight")
        release.set()
        await task
        assert status == 200
        assert content_type == "application/json"
        (snapshot,) = body
        functions = [line.rsplit(" in ", 1)[1] for line in snapshot.pop("stack")]
        assert functions[-2:] == ["stuck_backend", "wait"]
        # Stalled means idle for at least stall_after, and the stream is older than its idleness.
        assert snapshot["age_s"] >= snapshot["idle_s"] >= 0.05
        (span,) = telemetry.spans("send_to_queue")
        assert {k: v for k, v in snapshot.items() if k not in ("age_s", "idle_s")} == {
            "stream_id": span.attributes["thunkscope.stream.id"],
            "name": "served",
            "trace_id": f"{span.get_span_context().trace_id:032x}",
            "state": "stalled",
            "items": 2,
            "backend_type": "stuck_backend",
        }

    def test_empty_list_when_idle(self, server: DebugServer) -> None:
        """With no stream running the endpoint answers an empty list."""
        assert get(server.url + "inflight") == (200, "application/json", [])

    def test_index_and_unknown_paths(self, server: DebugServer) -> None:
        """The base URL answers the HTML page; other paths are a JSON 404."""
        with urllib.request.urlopen(server.url, timeout=10) as reply:
            assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "script-src 'nonce-" in reply.headers["Content-Security-Policy"]
            assert b"<h1>thunkscope: streams in flight</h1>" in reply.read()
        status, _, body = get(server.url + "nope")
        assert status == 404
        assert "nope" in body["error"]

    async def test_answers_while_the_loop_is_blocked(self, server: DebugServer) -> None:
        """The server runs on its own thread: it answers while the event loop is busy."""
        release, given = asyncio.Event(), asyncio.Event()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(stuck_backend(release, given), queue))
        await given.wait()
        answers: list[Any] = []

        def fetch() -> None:
            answers.append(get(server.url + "inflight")[2])

        fetcher = threading.Thread(target=fetch)
        fetcher.start()
        # The event loop is blocked on purpose until the answer is in (or 30 s pass): an
        # answer that needed the loop could only come after this join gave up.
        fetcher.join(30)
        answered_while_blocked = not fetcher.is_alive()
        release.set()
        await task
        fetcher.join(30)
        assert answered_while_blocked
        (body,) = answers
        assert [snap["state"] for snap in body] == ["awaiting_item"]

    def test_close(self) -> None:
        """close() stops serving and frees the port; closing twice is harmless."""
        with serve_debug() as handle:
            assert get(handle.url + "inflight")[0] == 200
        handle.close()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(handle.url + "inflight", timeout=2)
        assert "closed" in repr(handle)

    def test_public_names(self) -> None:
        """serve_debug and its handle type are exported at the top level."""
        assert thunkscope.serve_debug is serve_debug
        assert thunkscope.DebugServer is DebugServer


class TestLoopbackOnly:
    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "10.0.0.1", "example.com"])
    def test_non_loopback_refused(self, host: str) -> None:
        """A host that is not loopback is a ValueError naming host, before anything binds."""
        with pytest.raises(ValueError, match=r"host=.*allow_non_loopback=True") as raised:
            serve_debug(host=host)
        assert repr(host) in str(raised.value)

    def test_ip6_localhost_refused(self) -> None:
        """ip6-localhost (a Debian /etc/hosts name for ::1) is refused before binding: it was
        accepted, then bound as IPv4, where it does not resolve (a bare gaierror)."""
        with pytest.raises(ValueError, match=r"host='ip6-localhost' is not a loopback address"):
            serve_debug(host="ip6-localhost")

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2", "localhost."])
    def test_loopback_accepted(self, host: str) -> None:
        """Loopback addresses and localhost are served."""
        with serve_debug(host=host) as handle:
            assert get(handle.url + "inflight")[:2] == (200, "application/json")
            if host.startswith("localhost"):
                assert handle.url.startswith("http://localhost:")  # bound without the dot

    @pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
    def test_ipv6_loopback(self) -> None:
        """::1 is served, with the URL's host in brackets."""
        with serve_debug(host="::1") as handle:
            assert handle.url.startswith("http://[::1]:")
            assert get(handle.url + "inflight")[0] == 200

    def test_explicit_flag_allows_any_host(self) -> None:
        """allow_non_loopback=True binds a non-loopback host (here: all interfaces)."""
        with serve_debug(host="0.0.0.0", allow_non_loopback=True) as handle:
            port = handle.url.rsplit(":", 1)[1]
            assert get(f"http://127.0.0.1:{port}inflight")[0] == 200

    @pytest.mark.parametrize(
        "host",
        [
            "attacker.example",
            "attacker.example:{port}",
            "127.0.0.1.attacker.example:{port}",
            "localhost.attacker.example",
            "0.0.0.0:{port}",
            "[::]:{port}",
            "",
        ],
    )
    def test_foreign_host_header_refused(self, server: DebugServer, host: str) -> None:
        """A request naming another host (a web page after DNS rebinding) gets a 403 with
        no snapshot in it, on every path."""
        port = server.url.rsplit(":", 1)[1].rstrip("/")
        for path in ("inflight", ""):
            status, body = get_with_host(server.url + path, host.format(port=port))
            assert (status, body) == (403, {"error": "forbidden Host header"}), path

    @pytest.mark.parametrize(
        "host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "localhost.", "[::1]:{port}"]
    )
    def test_loopback_host_header_served(self, server: DebugServer, host: str) -> None:
        """Host headers that name the loopback interface are served."""
        port = server.url.rsplit(":", 1)[1].rstrip("/")
        assert get_with_host(server.url + "inflight", host.format(port=port)) == (200, [])

    def test_no_host_header_served(self, server: DebugServer) -> None:
        """An HTTP/1.0 request without Host (no browser sends one) is served."""
        port = int(server.url.rsplit(":", 1)[1].rstrip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /inflight HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"HTTP/1.0 200 OK"
        assert json.loads(body) == []

    def test_explicit_flag_allows_any_host_header(self) -> None:
        """With allow_non_loopback=True the server answers whatever name it was reached by."""
        with serve_debug(host="127.0.0.1", allow_non_loopback=True) as handle:
            assert get_with_host(handle.url + "inflight", "debug.internal:8765") == (200, [])

    @pytest.mark.parametrize("port", [-1, 70000, True, "80"])
    def test_bad_port(self, port: Any) -> None:
        """A port outside 0-65535 is a ValueError naming port."""
        with pytest.raises(ValueError, match="port"):
            serve_debug(port=port)
