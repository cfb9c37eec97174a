"""A real pre-fork server: gunicorn with 4 uvicorn workers, the app preloaded and configured
with THUNKSCOPE_DEBUG_SERVER=1. `thunkscope inflight` (a subprocess, no URL) finds the one
stalled request in the right worker; a worker killed with SIGKILL is pruned and replaced;
spans from every worker reach rotel under distinct service.instance.ids."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from support.collectors import RotelCollector
from support.loopback import free_port
from thunkscope import names

WORKERS = 4
WAIT_S = 90
T = TypeVar("T")


def cli(*args: str, env: dict[str, str]) -> Any:
    """``thunkscope <args> --json`` as a subprocess; its parsed output."""
    result = subprocess.run(
        [sys.executable, "-m", "thunkscope", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class Gunicorn:
    """gunicorn running tests/support/asgi_app.py; its output is kept for failures."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._out = log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "support.asgi_app:app",
                "-k",
                "uvicorn_worker.UvicornWorker",
                "-w",
                str(WORKERS),
                "--preload",
                "-b",
                f"127.0.0.1:{self.port}",
                "--graceful-timeout",
                "5",
            ],
            cwd=Path(__file__).parent,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, condition: Callable[[], T | None], what: str) -> T:
        """Poll `condition` until it gives a value, generously; fail with gunicorn's log."""
        deadline = time.monotonic() + WAIT_S
        while True:
            value = condition()
            if value is not None:
                return value
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never saw {what}; gunicorn's output:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()


@pytest.fixture
def server(
    rotel: RotelCollector, runtime_dir: Path, tmp_path: Path
) -> Iterator[tuple[Gunicorn, dict[str, str]]]:
    env = {
        **os.environ,
        "THUNKSCOPE_DEBUG_SERVER": "1",
        "THUNKSCOPE_RUNTIME_DIR": str(runtime_dir),
        "OTEL_SERVICE_NAME": "llm-api",
        "OTEL_EXPORTER_OTLP_ENDPOINT": rotel.http_endpoint,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    gunicorn = Gunicorn(env, tmp_path / "gunicorn.log")
    try:
        yield gunicorn, env
    finally:
        gunicorn.stop()


def worker_pids(master: int) -> set[int]:
    """The live children of the gunicorn master, from /proc."""
    children = Path(f"/proc/{master}/task/{master}/children")
    try:
        return {int(pid) for pid in children.read_text().split()}
    except OSError:
        return set()


class TestGunicornWorkers:
    def test_stall_found_kill_pruned_spans_per_worker(
        self, server: tuple[Gunicorn, dict[str, str]], rotel: RotelCollector, runtime_dir: Path
    ) -> None:
        """Exactly the stalled stream, in the worker that serves it; a killed worker pruned and
        replaced; 4+ distinct service.instance.id in rotel."""
        gunicorn, env = server
        master = gunicorn.process.pid

        def all_listed() -> list[dict[str, Any]] | None:
            workers = worker_pids(master)
            rows = cli("ps", env=env)
            listed = {row["pid"] for row in rows}
            return rows if len(workers) == WORKERS and listed == workers | {master} else None

        rows = gunicorn.wait_for(all_listed, f"{WORKERS} workers and the master in ps")
        assert len({row["service_instance_id"] for row in rows}) == WORKERS + 1
        assert {row["service_name"] for row in rows} == {"llm-api"}

        # One request that stalls after its first token, read from a thread.
        first_line: list[str] = []
        got_first = threading.Event()

        def stalled_request() -> None:
            url = f"http://127.0.0.1:{gunicorn.port}/stream?name=stuck-chat&stall=1"
            try:
                with urllib.request.urlopen(url, timeout=WAIT_S) as reply:
                    first_line.append(reply.readline().decode())
                    got_first.set()
                    reply.read()
            except (OSError, http.client.HTTPException):  # the server stops mid-response
                got_first.set()

        reader = threading.Thread(target=stalled_request, daemon=True)
        reader.start()
        assert got_first.wait(WAIT_S), gunicorn.output()
        stalled_pid = int(first_line[0].split()[1])
        assert stalled_pid in worker_pids(master)

        def stalled() -> list[dict[str, Any]] | None:
            snaps = cli("inflight", env=env)
            return snaps if [s["state"] for s in snaps] == ["stalled"] else None

        (snap,) = gunicorn.wait_for(stalled, "the stalled stream in thunkscope inflight")
        assert (snap["pid"], snap["service_name"], snap["name"], snap["items"]) == (
            stalled_pid,
            "llm-api",
            "stuck-chat",
            1,
        )
        assert any("in fake_backend" in frame for frame in snap["stack"])

        # SIGKILL another worker: its file is pruned, its replacement appears.
        victim = min(worker_pids(master) - {stalled_pid})
        victim_file = runtime_dir / "thunkscope" / f"{victim}.json"
        assert victim_file.exists()
        # Its warm-up span must be exported before the kill, or its id never reaches rotel.
        (victim_id,) = [r["service_instance_id"] for r in rows if r["pid"] == victim]

        def victim_exported() -> bool:
            spans = rotel.spans_named(names.SPAN_SEND_TO_QUEUE)
            return any(s["resource"]["service.instance.id"] == victim_id for s in spans)

        rotel.wait_for(victim_exported)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> list[dict[str, Any]] | None:
            rows = all_listed()
            return rows if rows is not None and victim not in {r["pid"] for r in rows} else None

        rows = gunicorn.wait_for(replaced, "the replacement worker in ps")
        assert not victim_file.exists()
        assert [s["pid"] for s in cli("inflight", env=env)] == [stalled_pid]

        # Spans from every worker, the replacement included: 5 distinct instance ids.
        worker_ids = {r["service_instance_id"] for r in rows if r["pid"] != master}

        def warmups() -> set[str] | None:
            ids = {
                s["resource"]["service.instance.id"]
                for s in rotel.spans_named(names.SPAN_SEND_TO_QUEUE)
            }
            return ids if worker_ids <= ids and len(ids) >= WORKERS + 1 else None

        ids = rotel.wait_for(warmups)
        assert len(ids) >= WORKERS + 1
        print(
            f"gunicorn: master {master}, stalled in {stalled_pid}, killed {victim}; "
            f"{len(ids)} distinct service.instance.id in rotel"
        )
