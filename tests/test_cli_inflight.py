"""``thunkscope inflight``: the terminal table of another process's streams, most idle first."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from thunkscope import _inflight_view, serve_debug

# A process with two stuck streams and a debug server: "oldest" (3 items, stalled) and
# "newest" (1 item, still within its stall_after). It prints its URL and runs until its
# standard input closes.
TARGET = textwrap.dedent(
    """
    import asyncio, sys
    import thunkscope

    async def stuck_backend(count, release):
        for i in range(count):
            yield i
        await release.wait()

    async def main():
        release = asyncio.Event()
        queue = asyncio.Queue()
        tasks = [asyncio.create_task(thunkscope.send_to_queue(
            stuck_backend(3, release), queue, name="oldest", stall_after=0.05))]
        await asyncio.sleep(0.2)
        tasks.append(asyncio.create_task(thunkscope.send_to_queue(
            stuck_backend(1, release), queue, name="newest", stall_after=30)))
        await asyncio.sleep(0.05)
        server = thunkscope.serve_debug()
        print(server.url, flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        release.set()
        await asyncio.gather(*tasks)
        server.close()

    asyncio.run(main())
    """
)


# Replies that are not HTTP: another protocol's banner (http.client.BadStatusLine) and an
# HTTP body cut short (http.client.IncompleteRead).
NOT_HTTP = {
    "ssh-banner": b"SSH-2.0-x\r\n",
    "cut-short": b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n[",
}


@pytest.fixture(params=sorted(NOT_HTTP))
def garbage_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a loopback socket that answers every connection with a non-HTTP reply."""
    reply = NOT_HTTP[request.param]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.recv(65536)  # the request
                    conn.sendall(reply)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture(scope="module")
def target_url() -> Iterator[str]:
    """The serve_debug URL of a child process with two stuck streams."""
    child = subprocess.Popen(
        [sys.executable, "-c", TARGET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    try:
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        child.stdin.close()
        try:
            assert child.wait(timeout=10) == 0
        finally:
            if child.poll() is None:
                child.kill()
            child.stdout.close()


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``python -m thunkscope`` with `args`; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "thunkscope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def table_rows(output: str) -> list[list[str]]:
    """The table's rows (header excluded) as lists of cells."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["IDLE"])
    rows = []
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def interrupt_on_second_nap(naps: list[float]) -> Callable[[float], None]:
    """A sleep for the watch loop that records each nap and presses Ctrl-C on the second."""

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    return sleep


class TestOnce:
    def test_table_of_a_running_process(self, target_url: str) -> None:
        """Without --watch it prints one table, most idle first, and the top stream's stack."""
        result = cli("inflight", "--url", target_url)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        title = out.splitlines()[0]
        assert title.startswith(f"thunkscope inflight  {target_url}inflight  2 streams")
        assert "(1 awaiting_item, 1 stalled)" in title
        header = next(line for line in out.splitlines() if line.split()[:1] == ["IDLE"])
        assert header.split() == [
            "IDLE", "AGE", "STATE", "ITEMS", "NAME", "STREAM", "BACKEND", "TRACE", "WHERE",
        ]  # fmt: skip
        oldest, newest = table_rows(out)
        assert oldest[2:5] == ["stalled", "3", "oldest"]
        assert newest[2:5] == ["awaiting_item", "1", "newest"]
        assert oldest[6:8] == ["stuck_backend", "-"]
        # WHERE: the innermost frame outside asyncio, the backend's own line.
        assert oldest[-3].startswith("<string>:")
        assert oldest[-2:] == ["in", "stuck_backend"]
        assert float(oldest[0].rstrip("s")) > float(newest[0].rstrip("s"))
        assert f"most idle: stream {oldest[5]} (oldest)" in out
        stack = out.split("suspended in (innermost last):\n", 1)[1].splitlines()
        assert [line.rsplit(" in ", 1)[1] for line in stack][-3:] == [
            "_pump",
            "stuck_backend",
            "wait",
        ]
        assert result.stderr == ""

    def test_url_of_the_endpoint_itself(self, target_url: str) -> None:
        """--url may name the inflight endpoint itself, or the base URL without its slash."""
        for url in (target_url + "inflight", target_url.rstrip("/")):
            result = cli("inflight", "--url", url)
            assert result.returncode == 0, result.stderr
            assert len(table_rows(result.stdout)) == 2

    def test_nothing_in_flight(self) -> None:
        """A process with no stream running prints that, and exits 0."""
        with serve_debug() as server:
            result = cli("inflight", "--url", server.url)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[2] == "no stream in flight"

    def test_unreachable(self) -> None:
        """A URL nobody serves is exit 1 with the reason on stderr."""
        with serve_debug() as server:
            url = server.url
        result = cli("inflight", "--url", url)
        assert result.returncode == 1
        assert result.stderr.startswith(f"thunkscope inflight: cannot read {url}inflight: ")
        assert result.stdout == ""

    def test_not_an_http_reply(self, garbage_url: str) -> None:
        """A server that does not answer HTTP is exit 1 with the reason, not a traceback."""
        result = cli("inflight", "--url", garbage_url)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"thunkscope inflight: cannot read {garbage_url}inflight: ")
        assert "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert result.stdout == ""

    def test_not_an_http_url(self) -> None:
        """A URL that is not http(s) is a usage error (exit 2)."""
        result = cli("inflight", "--url", "ftp://127.0.0.1/")
        assert result.returncode == 2
        assert "--url must be an http URL" in result.stderr

    @pytest.mark.parametrize(
        "url", ["http://[::1/", "http://127.0.0.1:99999/", "http://127.0.0.1:abc/", "http://:0/"]
    )
    def test_malformed_url(self, url: str) -> None:
        """A URL that does not parse, or whose port is not 1..65535, is a usage error naming
        --url (exit 2), not a connection attempt."""
        result = cli("inflight", "--url", url)
        assert result.returncode == 2
        assert result.stderr.startswith("thunkscope inflight: --url ")
        assert repr(url) in result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert result.stdout == ""


class TestWatch:
    def test_redraws_until_interrupted(self, target_url: str) -> None:
        """--watch redraws the table every --interval seconds and exits 0 on Ctrl-C."""
        child = subprocess.Popen(
            [
                sys.executable,
                *["-m", "thunkscope", "inflight", "--watch", "--interval", "0.1", "--url"],
                target_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout or []), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            while sum(line.startswith("thunkscope inflight") for line in lines) < 3:
                assert child.poll() is None, "the watch ended by itself"
                assert time.monotonic() < deadline, "no three frames in time"
                time.sleep(0.05)
            child.send_signal(signal.SIGINT)
            assert child.wait(timeout=10) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        reader.join(5)
        frames = "".join(lines).split("\nthunkscope inflight")
        assert len(frames) >= 3
        for frame in frames[1:]:
            assert [row[4] for row in table_rows(frame)] == ["oldest", "newest"]
        assert child.stderr is not None
        assert "Traceback" not in child.stderr.read()
        child.stdout.close()
        child.stderr.close()


class TestRender:
    SNAPSHOTS: ClassVar[list[dict[str, Any]]] = [
        {
            "stream_id": "ab-1",
            "name": "fast",
            "trace_id": None,
            "state": "awaiting_item",
            "items": 40,
            "age_s": 3.5,
            "idle_s": 0.01,
            "backend_type": "gen",
            "stack": [],
        },
        {
            "stream_id": "ab-2",
            "name": "slow",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "state": "stalled",
            "items": 2,
            "age_s": 3725.0,
            "idle_s": 75.0,
            "backend_type": "AsyncStream",
            "stack": [
                "/x/_stream.py:10 in send_to_queue",
                "/site/httpx/_transport.py:99 in read",
                "/usr/lib/python3.11/asyncio/streams.py:7 in read",
            ],
        },
    ]

    def test_sorted_by_idle_time(self) -> None:
        """Rows come most idle first, whatever order the snapshots had."""
        text = _inflight_view.render(self.SNAPSHOTS, source="http://h/inflight")
        assert [row[4] for row in table_rows(text)] == ["slow", "fast"]

    def test_durations_and_columns(self) -> None:
        """Durations read as in top; the trace id is shortened; WHERE skips asyncio's frames."""
        text = _inflight_view.render(self.SNAPSHOTS, source="http://h/inflight")
        slow, fast = table_rows(text)
        assert slow == [
            "1m15s", "1h02m", "stalled", "2", "slow", "ab-2", "AsyncStream", "0af76519",
            "_transport.py:99", "in", "read",
        ]  # fmt: skip
        assert fast == ["0.01s", "3.50s", "awaiting_item", "40", "fast", "ab-1", "gen", "-", "-"]
        assert "  trace_id 0af7651916cd43dd8448eb211c80319c" in text.splitlines()

    def test_clipped_to_the_terminal(self) -> None:
        """With a width, no line is longer than the terminal."""
        text = _inflight_view.render(self.SNAPSHOTS, source="http://h/inflight", width=40)
        assert max(len(line) for line in text.splitlines()) == 40

    def test_watch_loop_stops_on_ctrl_c(self) -> None:
        """The watch loop draws a frame per interval and returns 0 on KeyboardInterrupt."""
        drawn = io.StringIO()
        naps: list[float] = []
        sleep = interrupt_on_second_nap(naps)
        with serve_debug() as server:
            code = _inflight_view.run(server.url, watch=True, interval=0.25, out=drawn, sleep=sleep)
        assert code == 0
        assert naps == [0.25, 0.25]
        assert drawn.getvalue().count("no stream in flight") == 2

    def test_watch_loop_survives_a_non_http_reply(self, garbage_url: str) -> None:
        """--watch draws "cannot read it" for a non-HTTP reply and keeps polling."""
        drawn = io.StringIO()
        naps: list[float] = []
        sleep = interrupt_on_second_nap(naps)
        code = _inflight_view.run(garbage_url, watch=True, interval=0.25, out=drawn, sleep=sleep)
        assert code == 0
        assert naps == [0.25, 0.25]
        assert drawn.getvalue().count("\n\ncannot read it: ") == 2
