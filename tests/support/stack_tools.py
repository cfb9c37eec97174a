"""Finding the stack's real programs, free ports and subprocesses, for tests/test_stack.py.

The programs (`docker-compose`, `prometheus`, `promtool`) are looked up on PATH, then in
`<repo>/.tools/bin`, where `scripts/install-stack-tools.sh` puts what no package manager
installs on PATH. A test that needs one skips, naming the installer, only when it is in
neither place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from support.loopback import free_port as free_port  # re-exported: test_stack imports it here
from support.waiting import poll as poll  # re-exported: the stack tests import it here

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
INSTALLER = "bash scripts/install-stack-tools.sh"

# How long a started program may take to answer its readiness probe: generous, so that only
# a program that really does not come up reaches it, however loaded the machine is.
READY_TIMEOUT_S = 60.0


def find_binary(name: str) -> str | None:
    """The path of program `name` on PATH or in <repo>/.tools/bin, or None."""
    found = shutil.which(name)
    if found:
        return found
    candidate = TOOLS_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def require_binary(name: str) -> str:
    """The path of program `name`; when absent, skips the test (fails it under CI), saying how
    to install it."""
    found = find_binary(name)
    if found is None:
        message = f"{name} not found on PATH or in {TOOLS_BIN}; install it with `{INSTALLER}`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def http_get(url: str, timeout: float = 2.0) -> bytes:
    """The body of a successful GET; raises OSError (urllib's errors included) otherwise."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def wait_http_ok(url: str, *, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    """Polls `url` until it answers 200, failing early (with its log) if `process` exits."""

    def answered() -> None:
        if process.poll() is not None:
            pytest.fail(
                f"{process.args!r} exited with {process.returncode} before {url} answered:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        try:
            http_get(url)
        except urllib.error.URLError as error:
            raise OSError(str(error)) from error

    try:
        poll(answered, timeout=timeout, what=f"waiting for {url}")
    except AssertionError as error:
        raise AssertionError(
            f"{error}; the output of {process.args!r} so far:\n"
            + log.read_text(errors="replace")[-4000:]
        ) from error


@contextlib.contextmanager
def running(
    args: Sequence[str], *, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs a subprocess with stdout and stderr in `log`; terminates it (then kills) on exit."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(args), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
