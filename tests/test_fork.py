"""Fork survival: children forked after configure(debug_server=True) each get their own
endpoint and discovery file, a fresh service.instance.id, and working exporters; the
parent's queued spans are not exported twice. Against a real collector (rotel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import thunkscope
from support.collectors import RotelCollector
from thunkscope import names

CHILDREN = 3

# configure() in the parent, a span left in its batch queue, then CHILDREN forked workers
# that each run one stream and report their pid, endpoint, discovery file and instance id.
# The parent lists the processes with `thunkscope ps --json` while all are alive.
PROGRAM = textwrap.dedent(
    f"""
    import asyncio, json, multiprocessing, os, subprocess, sys
    from opentelemetry import trace
    import thunkscope
    from thunkscope import _debug_server
    from thunkscope._instance import instance_id

    handle = thunkscope.configure(debug_server=True, log_format=None)
    with trace.get_tracer("fork-test").start_as_current_span("before-fork"):
        pass  # still in the parent's batch queue when the children fork

    def worker(index, conn):
        async def backend():
            yield "token"
        async def main():
            await thunkscope.send_to_queue(backend(), asyncio.Queue(), name=f"child-{{index}}")
        asyncio.run(main())
        server = _debug_server.serve_debug_in_every_process()
        conn.send({{"pid": os.getpid(), "url": server.url, "instance": instance_id(),
                    "file": str(server.discovery_file), "exists": server.discovery_file.exists()}})
        conn.recv()  # until the parent has listed everyone
        handle.shutdown()

    context = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for index in range({CHILDREN}):
        mine, theirs = context.Pipe()
        proc = context.Process(target=worker, args=(index, theirs))
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    children = [pipe.recv() for pipe in pipes]
    ps = subprocess.run([sys.executable, "-m", "thunkscope", "ps", "--json"],
                        capture_output=True, text=True, timeout=60)
    for pipe in pipes:
        pipe.send("done")
    for proc in procs:
        proc.join(60)
    parent = _debug_server.serve_debug_in_every_process()
    handle.shutdown()
    me = {{"pid": os.getpid(), "url": parent.url, "instance": instance_id()}}
    print(json.dumps({{"parent": me,
                      "children": children, "exitcodes": [p.exitcode for p in procs],
                      "ps": ps.stdout, "ps_err": ps.stderr}}))
    """
)


class TestForkedWorkers:
    def test_children_get_endpoint_instance_id_and_exporters(
        self, rotel: RotelCollector, runtime_dir: Path
    ) -> None:
        """Each forked child serves its own endpoint with its own file and instance id, and its
        spans and metrics reach rotel under that id; the parent's queued span arrives once."""
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": rotel.http_endpoint,
            "OTEL_SERVICE_NAME": "forked",
            "THUNKSCOPE_RUNTIME_DIR": str(runtime_dir),
        }
        result = subprocess.run(
            [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=180, env=env
        )
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        report = json.loads(result.stdout)
        parent, children = report["parent"], report["children"]
        assert report["exitcodes"] == [0] * CHILDREN, result.stderr

        pids = [parent["pid"], *(c["pid"] for c in children)]
        instances = [parent["instance"], *(c["instance"] for c in children)]
        urls = [parent["url"], *(c["url"] for c in children)]
        assert len(set(pids)) == len(set(instances)) == len(set(urls)) == CHILDREN + 1
        for child in children:
            assert child["file"] == str(runtime_dir / "thunkscope" / f"{child['pid']}.json")
            assert child["exists"] is True

        listed = json.loads(report["ps"])
        assert sorted(
            (r["pid"], r["service_instance_id"], r["url"], r["error"]) for r in listed
        ) == (sorted(zip(pids, instances, urls, [None] * len(pids), strict=True))), report["ps_err"]

        streams = rotel.wait_for_spans(CHILDREN, name=names.SPAN_SEND_TO_QUEUE)
        by_instance = {s["resource"]["service.instance.id"]: s for s in streams}
        assert set(by_instance) == {c["instance"] for c in children}, (
            report,
            [s["resource"] for s in streams],
        )
        for child in children:
            span = by_instance[child["instance"]]
            assert span["attributes"][names.STREAM_NAME] == f"child-{children.index(child)}"
            assert span["service_name"] == "forked"

        durations = rotel.wait_for(
            lambda: (
                found
                if len(
                    found := {
                        p["resource"]["service.instance.id"]
                        for p in rotel.points(names.STREAM_DURATION.name)
                        if p["count"]
                    }
                )
                >= CHILDREN
                else None
            )
        )
        assert durations == {c["instance"] for c in children}

        before_fork = rotel.wait_for_spans(1, name="before-fork")
        assert [s["resource"]["service.instance.id"] for s in before_fork] == [parent["instance"]]


ENV_ONLY = textwrap.dedent(
    """
    import json, urllib.request
    import thunkscope
    from thunkscope import _discovery
    thunkscope.configure(log_format=None)
    [entry] = _discovery.live_entries()
    with urllib.request.urlopen(entry.url + "inflight", timeout=30) as reply:
        print(json.dumps({"entry": entry.as_dict(), "inflight": json.loads(reply.read())}))
    """
)


class TestDebugServerSetting:
    def test_environment_variable_starts_the_endpoint(self, runtime_dir: Path) -> None:
        """THUNKSCOPE_DEBUG_SERVER=1, bare configure(): an endpoint on 127.0.0.1 with its file."""
        env = {
            **os.environ,
            "THUNKSCOPE_DEBUG_SERVER": "1",
            "OTEL_SDK_DISABLED": "true",
            "OTEL_SERVICE_NAME": "from-env",
            "THUNKSCOPE_RUNTIME_DIR": str(runtime_dir),
        }
        result = subprocess.run(
            [sys.executable, "-c", ENV_ONLY], capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["entry"]["url"].startswith("http://127.0.0.1:")
        assert report["entry"]["service_name"] == "from-env"
        assert report["inflight"] == []
        assert list((runtime_dir / "thunkscope").iterdir()) == []  # removed at exit

    def test_off_by_default(self, runtime_dir: Path) -> None:
        """Without the setting configure() serves nothing and writes no file."""
        env_free = {**os.environ, "OTEL_SDK_DISABLED": "true"}
        env_free.pop("THUNKSCOPE_DEBUG_SERVER", None)
        program = "import thunkscope; thunkscope.configure(log_format=None); print('ok')"
        result = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env_free, "THUNKSCOPE_RUNTIME_DIR": str(runtime_dir)},
        )
        assert result.stdout == "ok\n", result.stderr
        assert not (runtime_dir / "thunkscope").exists()

    def test_bad_arguments_name_themselves(self) -> None:
        """debug_server must be a bool; trace_url an http(s) template with {trace_id}."""
        with pytest.raises(TypeError, match="debug_server must be a bool or None, got str"):
            thunkscope.configure(debug_server="yes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="trace_url must be an http"):
            thunkscope.configure(trace_url="ftp://jaeger/{trace_id}")
        with pytest.raises(ValueError, match=r"trace_url must be .* containing \{trace_id\}"):
            thunkscope.configure(trace_url="http://jaeger:16686/trace/")
