"""Discovery files (SPEC section 6): written by serve_debug, removed at close and exit,
pruned by readers when their process is dead, refused when the directory is not ours."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from thunkscope import _discovery, serve_debug
from thunkscope._instance import instance_id


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class TestWrite:
    def test_serve_debug_writes_its_file_and_close_removes_it(
        self, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The file holds pid, url, service name, instance id and start time; close removes it."""
        monkeypatch.setenv("OTEL_SERVICE_NAME", "svc-a")
        server = serve_debug()
        path = runtime_dir / "thunkscope" / f"{os.getpid()}.json"
        try:
            assert server.discovery_file == path
            record = json.loads(path.read_text())
            assert set(record) == {
                "pid",
                "url",
                "service_name",
                "service_instance_id",
                "started_at",
            }
            assert record["pid"] == os.getpid()
            assert record["url"] == server.url
            assert record["service_name"] == "svc-a"
            assert record["service_instance_id"] == instance_id()
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert [e.url for e in _discovery.live_entries()] == [server.url]
        finally:
            server.close()
        assert not path.exists()
        assert list(path.parent.iterdir()) == []  # no temporary file left either

    def test_no_file_without_discover(self, runtime_dir: Path) -> None:
        """discover=False serves without writing anything."""
        with serve_debug(discover=False) as server:
            assert server.discovery_file is None
            assert not (runtime_dir / "thunkscope").exists()

    def test_file_removed_at_exit(self, runtime_dir: Path) -> None:
        """A process that never closes its endpoint leaves no file behind at exit."""
        program = "import thunkscope; s = thunkscope.serve_debug(); print(s.discovery_file)"
        result = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        written = Path(result.stdout.strip())
        assert written.parent == runtime_dir / "thunkscope"
        assert not written.exists()

    def test_per_user_temp_dir_when_no_runtime_dir(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No THUNKSCOPE_RUNTIME_DIR/XDG_RUNTIME_DIR: <tmp>/thunkscope-<uid>/thunkscope, 0700."""
        monkeypatch.delenv("THUNKSCOPE_RUNTIME_DIR")
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        monkeypatch.setattr("tempfile.tempdir", None)
        directory = _discovery.discovery_dir(create=True)
        assert directory == tmp_path / f"thunkscope-{os.getuid()}" / "thunkscope"
        assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


class TestRead:
    def test_dead_pid_file_is_ignored_and_pruned(self, runtime_dir: Path) -> None:
        """A file whose process is gone is not listed and is deleted by the reader."""
        directory = _discovery.discovery_dir(create=True)
        pid = dead_pid()
        stale = directory / f"{pid}.json"
        stale.write_text(
            json.dumps(
                {
                    "pid": pid,
                    "url": "http://127.0.0.1:1/",
                    "service_name": "gone",
                    "service_instance_id": "x",
                    "started_at": 1.0,
                }
            )
        )
        assert _discovery.live_entries() == []
        assert not stale.exists()

    @pytest.mark.parametrize(
        ("name", "content", "reason"),
        [
            ("corrupt", "{not json", "Expecting property name"),
            ("half-written", '{"pid": 1, "url": "http://127.0', "Unterminated string"),
            ("foreign", '["a", "list"]', "not a JSON object"),
            ("no-url", '{"pid": PID, "started_at": 1}', "missing field 'url'"),
            ("bad-url", '{"pid": PID, "url": "file:///etc", "started_at": 1}', "not an http URL"),
            (
                "wrong-name",
                '{"pid": 1, "url": "http://127.0.0.1:1/", "started_at": 1}',
                "does not match the file name",
            ),
        ],
    )
    def test_bad_file_skipped_with_one_warning(
        self, name: str, content: str, reason: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A file that is not a complete record of its pid is skipped with one warning naming it."""
        directory = _discovery.discovery_dir(create=True)
        path = directory / f"{os.getpid()}.json"
        path.write_text(content.replace("PID", str(os.getpid())))
        with caplog.at_level(logging.WARNING, logger="thunkscope"):
            assert _discovery.live_entries() == []
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 1, messages
        assert str(path) in messages[0]
        assert reason in messages[0]
        assert path.exists()  # not ours to delete: its pid is alive or unknown


class TestDirectory:
    def test_not_a_directory_is_a_clear_error(self, runtime_dir: Path) -> None:
        """A file where the directory should be refuses serve_debug with the path named."""
        (runtime_dir / "thunkscope").write_text("")
        with pytest.raises(_discovery.DiscoveryError, match="is not a directory"):
            serve_debug()

    def test_directory_of_another_user_is_refused(
        self, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A directory owned by another uid is refused, by writers and readers."""
        (runtime_dir / "thunkscope").mkdir(mode=0o700)
        monkeypatch.setattr(os, "getuid", lambda: os.stat(runtime_dir).st_uid + 1)
        with pytest.raises(_discovery.DiscoveryError, match="belongs to uid"):
            serve_debug()
        with pytest.raises(_discovery.DiscoveryError, match="belongs to uid"):
            _discovery.live_entries()


FORKER = textwrap.dedent(
    """
    import os, sys, json
    import thunkscope
    from thunkscope._instance import instance_id
    parent = instance_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, instance_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    print(json.dumps({"parent": parent, "child": child, "after": instance_id()}))
    """
)


class TestInstanceId:
    def test_forked_child_gets_a_fresh_instance_id(self) -> None:
        """service.instance.id differs in a forked child; the parent's stays."""
        result = subprocess.run(
            [sys.executable, "-c", FORKER], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        ids = json.loads(result.stdout)
        assert ids["parent"] == ids["after"]
        assert ids["child"] != ids["parent"]
        assert len(ids["child"]) == 36
