"""Discovery files: which local processes serve a debug endpoint, and where (SPEC section 6).

A process serving `serve_debug` writes ``<runtime dir>/thunkscope/<pid>.json`` with its
``pid``, ``url``, ``service_name``, ``service_instance_id`` and ``started_at``, so that
``thunkscope ps`` and ``thunkscope inflight`` find every worker of a host without being
told their ports. The runtime dir is ``$THUNKSCOPE_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR``,
else the temp dir with a per-user subdirectory (mode 0700). Files are written atomically
(rename of a complete temporary file), removed at close and at exit, and readers ignore
and prune the files of dead pids. Nothing here runs per stream or per item: a file is
written only when an endpoint starts.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from thunkscope import names
from thunkscope._settings import from_environment

__all__ = ["DiscoveryError", "Entry", "discovery_dir", "live_entries", "remove", "write"]

_log = logging.getLogger(names.LOGGER_NAME)

SUBDIR: Final = "thunkscope"
_FIELDS: Final = ("pid", "url", "service_name", "service_instance_id", "started_at")


class DiscoveryError(RuntimeError):
    """The discovery directory cannot be used: not a directory, or not the user's own."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One process's discovery file, as read."""

    pid: int
    url: str
    service_name: str
    service_instance_id: str
    started_at: float
    path: Path

    def as_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in _FIELDS}


def _runtime_base() -> tuple[Path, bool]:
    """The runtime dir, and whether it is the per-user subdirectory of the temp dir."""
    configured = from_environment("runtime_dir")
    if configured is not None:
        return Path(configured), False
    # The shared temp dir: a per-user subdirectory, so users do not see each other's.
    return Path(tempfile.gettempdir()) / f"thunkscope-{os.getuid()}", True


def discovery_dir(*, create: bool = False) -> Path:
    """``<runtime dir>/thunkscope``, checked to be the user's own directory.

    With `create`, it (and a per-user temp parent) is made with mode 0700. A path that
    exists but is not a directory, or belongs to another user, is a `DiscoveryError`.
    """
    base, per_user_tmp = _runtime_base()
    directory = base / SUBDIR
    for path in (base, directory) if per_user_tmp else (directory,):
        if create:
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700, parents=True)
        _check_own_dir(path)
    return directory


def _check_own_dir(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return  # nothing yet: a reader finds no process, a writer creates it
    if not stat.S_ISDIR(info.st_mode):
        raise DiscoveryError(
            f"thunkscope discovery directory {str(path)!r} is not a directory; remove it "
            "or set THUNKSCOPE_RUNTIME_DIR to another place"
        )
    if info.st_uid != os.getuid():
        raise DiscoveryError(
            f"thunkscope discovery directory {str(path)!r} belongs to uid {info.st_uid}, "
            f"not to this user (uid {os.getuid()}); refusing to use it: set "
            "THUNKSCOPE_RUNTIME_DIR to a directory of your own"
        )


def write(url: str, service_name: str, service_instance_id: str) -> Path:
    """Write this process's discovery file atomically; return its path."""
    directory = discovery_dir(create=True)
    pid = os.getpid()
    record = {
        "pid": pid,
        "url": url,
        "service_name": service_name,
        "service_instance_id": service_instance_id,
        "started_at": time.time(),
    }
    target = directory / f"{pid}.json"
    temporary = directory / f".{pid}.{uuid.uuid4().hex}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _written[target] = (pid, url)
    _register_exit_cleanup()
    return target


def remove(path: Path, url: str | None = None) -> None:
    """Remove a discovery file this process wrote, if it still describes `url` (the
    endpoint closing; None: whichever). No error if it is gone."""
    owner = _written.get(path)
    if owner is None or owner[0] != os.getpid() or (url is not None and owner[1] != url):
        return  # not ours, a parent's inherited through fork, or a newer endpoint's
    del _written[path]
    with contextlib.suppress(OSError):
        path.unlink()


_written: dict[Path, tuple[int, str]] = {}
_exit_cleanup_registered = False


def _register_exit_cleanup() -> None:
    global _exit_cleanup_registered
    if not _exit_cleanup_registered:
        _exit_cleanup_registered = True
        atexit.register(_remove_all)


def _remove_all() -> None:
    for path in list(_written):
        remove(path)


def live_entries(*, prune: bool = True) -> list[Entry]:
    """The discovery files of live processes, by pid; dead pids' files are pruned.

    A file that is not a complete record (corrupt, half-written, foreign) is skipped
    with one warning.
    """
    directory = discovery_dir()
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    entries = []
    for path in paths:
        entry = _read(path)
        if entry is None:
            continue
        if not _alive(entry.pid):
            if prune:
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        entries.append(entry)
    entries.sort(key=lambda entry: entry.pid)
    return entries


def _read(path: Path) -> Entry | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        pid = data["pid"]
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
            raise ValueError(f"pid is not a positive int: {pid!r}")
        if path.stem != str(pid):
            raise ValueError(f"pid {pid} does not match the file name")
        url = data["url"]
        if not isinstance(url, str) or not url.startswith("http://"):
            raise ValueError(f"url is not an http URL: {url!r}")
        started_at = data["started_at"]
        if isinstance(started_at, bool) or not isinstance(started_at, int | float):
            raise ValueError(f"started_at is not a number: {started_at!r}")
        return Entry(
            pid=pid,
            url=url,
            service_name=str(data.get("service_name") or ""),
            service_instance_id=str(data.get("service_instance_id") or ""),
            started_at=float(started_at),
            path=path,
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        _log.warning("thunkscope: skipping discovery file %s: %s", path, reason)
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with this pid: not dead
    return True
