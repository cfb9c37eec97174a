"""``thunkscope ps`` and ``thunkscope inflight`` without --url: every local process serving a
debug endpoint, found through the discovery files, merged; one that does not answer is
reported on its row."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from thunkscope import _fleet_view, serve_debug

# A process with one stalled stream named argv[1], serving its debug endpoint. It prints
# its URL once the stream shows as stalled, and runs until its standard input closes.
TARGET = textwrap.dedent(
    """
    import asyncio, sys, time
    import thunkscope

    async def stuck_backend(release):
        yield "first"
        await release.wait()

    async def main():
        release = asyncio.Event()
        queue = asyncio.Queue()
        task = asyncio.create_task(thunkscope.send_to_queue(
            stuck_backend(release), queue, name=sys.argv[1], stall_after=0.05))
        deadline = time.monotonic() + 60
        while [s["state"] for s in thunkscope.inflight()] != ["stalled"]:
            assert time.monotonic() < deadline, thunkscope.inflight()
            await asyncio.sleep(0.01)
        server = thunkscope.serve_debug()
        print(server.url, flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        release.set()
        await task
        server.close()

    asyncio.run(main())
    """
)


@dataclass
class Target:
    pid: int
    url: str
    service: str
    stream: str


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m thunkscope`` with `args` in `env`; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "thunkscope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.fixture
def env(runtime_dir: Path) -> dict[str, str]:
    return {**os.environ, "THUNKSCOPE_RUNTIME_DIR": str(runtime_dir)}


@pytest.fixture
def targets(env: dict[str, str]) -> Iterator[list[Target]]:
    """Two processes of different services, each with one stalled stream."""
    children: list[subprocess.Popen[str]] = []
    found = []
    try:
        for service, stream in (("svc-a", "alpha"), ("svc-b", "<b>beta")):
            child = subprocess.Popen(
                [sys.executable, "-c", TARGET, stream],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**env, "OTEL_SERVICE_NAME": service},
            )
            children.append(child)
            assert child.stdout is not None
            url = child.stdout.readline().strip()
            if not url.startswith("http://127.0.0.1:"):
                child.kill()
                pytest.fail(f"target printed {url!r}; stderr:\n{child.communicate()[1]}")
            found.append(Target(child.pid, url, service, stream))
        yield found
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        for child in children:
            try:
                child.wait(timeout=30)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                for pipe in (child.stdout, child.stderr):
                    assert pipe is not None
                    pipe.close()


@pytest.fixture
def silent_process(env: dict[str, str], runtime_dir: Path) -> Iterator[int]:
    """A live process whose discovery file names a port nobody listens on."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends
    directory = runtime_dir / "thunkscope"
    directory.mkdir(mode=0o700, exist_ok=True)
    record = {
        "pid": child.pid,
        "url": f"http://127.0.0.1:{port}/",
        "service_name": "mute",
        "service_instance_id": "i-mute",
        "started_at": time.time(),
    }
    (directory / f"{child.pid}.json").write_text(json.dumps(record))
    try:
        yield child.pid
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def table_rows(output: str, first: str) -> list[list[str]]:
    """The rows (header excluded) of the table whose header starts with `first`, split."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == [first])
    rows = []
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


class TestPs:
    def test_lists_every_live_process(self, targets: list[Target], env: dict[str, str]) -> None:
        """One row per process: pid, service, instance id, 1 stream in flight, its URL."""
        result = cli("ps", env=env)
        assert result.returncode == 0, result.stderr
        rows = table_rows(result.stdout, "PID")
        assert [(r[0], r[1], r[3], r[5]) for r in rows] == [
            (str(t.pid), t.service, "1", t.url) for t in sorted(targets, key=lambda t: t.pid)
        ]
        assert len({r[2] for r in rows}) == 2  # distinct instance ids

    def test_json_rows(self, targets: list[Target], env: dict[str, str]) -> None:
        """--json: the discovery record of each process plus streams, oldest idle, error."""
        result = cli("ps", "--json", env=env)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert [
            (r["pid"], r["service_name"], r["url"], r["streams"], r["error"]) for r in rows
        ] == [(t.pid, t.service, t.url, 1, None) for t in sorted(targets, key=lambda t: t.pid)]
        assert all(r["oldest_idle_s"] > 0 for r in rows)

    def test_process_that_does_not_answer_is_on_its_row(
        self, targets: list[Target], silent_process: int, env: dict[str, str]
    ) -> None:
        """A live process whose endpoint refuses is listed with the error; the others still show."""
        result = cli("ps", "--json", env=env)
        assert result.returncode == 0, result.stderr
        rows = {r["pid"]: r for r in json.loads(result.stdout)}
        assert set(rows) == {silent_process, *(t.pid for t in targets)}
        mute = rows[silent_process]
        assert mute["streams"] is None
        assert mute["error"].startswith("no answer from ")
        assert all(rows[t.pid]["streams"] == 1 for t in targets)
        table = cli("ps", env=env)
        assert table.returncode == 0, table.stderr
        line = next(x for x in table.stdout.splitlines() if x.split()[:1] == [str(silent_process)])
        assert "mute" in line
        assert "no answer from" in line

    def test_nothing_running(self, env: dict[str, str], runtime_dir: Path) -> None:
        """No process: one line saying where it looked, exit 0."""
        result = cli("ps", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == (
            f"no thunkscope debug endpoint found in {runtime_dir / 'thunkscope'}\n"
        )


class TestInflightMerged:
    def test_merges_all_processes(self, targets: list[Target], env: dict[str, str]) -> None:
        """Without --url: every process's streams in one table, each row with pid and service."""
        result = cli("inflight", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0].startswith(
            "thunkscope inflight  2 processes  2 streams"
        )
        rows = table_rows(result.stdout, "PID")
        assert sorted((r[0], r[1], r[4], r[6]) for r in rows) == sorted(
            (str(t.pid), t.service, "stalled", t.stream) for t in targets
        )

    def test_json_filtered_by_pid_and_service(
        self, targets: list[Target], env: dict[str, str]
    ) -> None:
        """--json --pid / --service: exactly that process's snapshot, carrying pid and service."""
        first, second = targets
        by_pid = json.loads(cli("inflight", "--json", "--pid", str(second.pid), env=env).stdout)
        assert [(s["pid"], s["service_name"], s["name"], s["state"]) for s in by_pid] == [
            (second.pid, "svc-b", "<b>beta", "stalled")
        ]
        by_service = json.loads(cli("inflight", "--json", "--service", "svc-a", env=env).stdout)
        assert [(s["pid"], s["name"]) for s in by_service] == [(first.pid, "alpha")]

    def test_process_that_does_not_answer_is_not_fatal(
        self, targets: list[Target], silent_process: int, env: dict[str, str]
    ) -> None:
        """The merged table still shows the others; the silent one is reported below it."""
        result = cli("inflight", env=env)
        assert result.returncode == 0, result.stderr
        assert len(table_rows(result.stdout, "PID")) == 2
        assert f"pid {silent_process} (mute): no answer from http://127.0.0.1:" in result.stdout

    def test_url_with_fleet_options_is_a_usage_error(self, env: dict[str, str]) -> None:
        """--url names one endpoint: --pid, --service or --json with it is refused (exit 2)."""
        result = cli("inflight", "--url", "http://127.0.0.1:1/", "--pid", "1", env=env)
        assert result.returncode == 2
        assert "argument --url: not allowed with --pid, --service or --json" in result.stderr


class TestInflightWatch:
    def test_watch_redraws_the_merged_table_until_ctrl_c(self) -> None:
        """--watch: one merged frame per interval (this process's endpoint), exit 0 on Ctrl-C."""
        naps: list[float] = []

        def sleep(seconds: float) -> None:
            naps.append(seconds)
            if len(naps) == 2:
                raise KeyboardInterrupt

        out = io.StringIO()
        with serve_debug():
            code = _fleet_view.run_inflight(watch=True, interval=0.5, out=out, sleep=sleep)
        assert code == 0
        assert naps == [0.5, 0.5]
        frames = out.getvalue().split("\nthunkscope inflight  ")
        assert len(frames) == 3  # the leading empty piece, then two frames
        assert all(frame.startswith("1 process  0 streams") for frame in frames[1:])
        assert all("no stream in flight" in frame for frame in frames[1:])


class TestBadDirectory:
    def test_not_a_directory_is_a_clear_error(self, env: dict[str, str], runtime_dir: Path) -> None:
        """ps and inflight exit 2 naming the path when the discovery directory is a file."""
        (runtime_dir / "thunkscope").write_text("")
        for command in ("ps", "inflight"):
            result = cli(command, env=env)
            assert result.returncode == 2
            assert result.stdout == ""
            assert f"'{runtime_dir / 'thunkscope'}' is not a directory" in result.stderr
