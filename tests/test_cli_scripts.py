"""The scripts behind the README's two commands (``scripts/demo.sh``, ``scripts/test.sh``):
on a fresh Debian, whose Python has no ensurepip until ``python3.X-venv`` is installed,
they install it before creating a virtual environment.

The machine is simulated: a Python that has no ensurepip until a stub ``apt-get`` installs
the venv package, and whose venvs are stubs too, so nothing is downloaded or installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

# A Python 3.11 as Debian ships it: ``import ensurepip`` fails and ``-m venv`` leaves a
# venv without pip until $MARKER exists (the venv package is installed). Its venvs'
# pythons are copies of it.
FAKE_PYTHON = r"""#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
echo "$0 $*" >> "$CALLS"
if [ "$1" = "-c" ]; then
    case "$2" in
        *"import ensurepip"*) [ -e "$MARKER" ]; exit ;;
        *version_info*print*|*print*version_info*) echo 3.11; exit 0 ;;
        *version_info*) exit 0 ;;
    esac
    exit 0
fi
if [ "$1 $2" = "-m venv" ]; then
    dir="${@: -1}"
    mkdir -p "$dir/bin"
    cp "$0" "$dir/bin/python"
    if [ ! -e "$MARKER" ]; then
        echo "The virtual environment was not created successfully because ensurepip is" \
             "not available. On Debian/Ubuntu systems, you need to install the" \
             "python3-venv package" >&2
        exit 1
    fi
    touch "$dir/pip-installed"
    exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
    [ -e "$here/../pip-installed" ] && exit 0
    echo "$0: No module named pip" >&2
    exit 1
fi
exit 0
"""

FAKE_APT_GET = r"""#!/usr/bin/env bash
echo "apt-get $*" >> "$CALLS"
case " $* " in *" install "*) touch "$MARKER" ;; esac
exit 0
"""

FAKE_ID = """#!/usr/bin/env bash
echo 0
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    """A repository copy of the scripts, with stub python3.11, apt-get and id on PATH."""
    repo = tmp_path / "repo"
    shutil.copytree(SCRIPTS, repo / "scripts")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    executable(stubs / "python3.11", FAKE_PYTHON)
    executable(stubs / "apt-get", FAKE_APT_GET)
    executable(stubs / "id", FAKE_ID)
    return tmp_path


def run(machine: Path, script: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run `script` of the copy on the simulated machine; its result and the calls made."""
    calls = machine / "calls.log"
    calls.write_text("")
    env = {
        **os.environ,
        "PATH": f"{machine / 'stubs'}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": str(machine / "stubs" / "python3.11"),
        "CALLS": str(calls),
        "MARKER": str(machine / "venv-package-installed"),
    }
    result = subprocess.run(
        ["bash", str(machine / "repo" / "scripts" / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, calls.read_text().splitlines()


def apt_installs(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("apt-get") and " install " in call]


class TestVenvPackage:
    def test_bootstrap_installs_the_venv_package(self, machine: Path) -> None:
        """bootstrap.sh installs python3.11-venv (and python3-venv) before creating .venv,
        once: a second run finds everything in place and installs nothing."""
        result, calls = run(machine, "bootstrap.sh")
        assert result.returncode == 0, result.stderr
        assert "ensurepip is not available" not in result.stderr
        (install,) = apt_installs(calls)
        assert install.split()[-2:] == ["python3.11-venv", "python3-venv"]
        assert (machine / "repo" / ".venv" / "pip-installed").exists()

        again, calls = run(machine, "bootstrap.sh")
        assert again.returncode == 0, again.stderr
        assert [call for call in calls if call.startswith("apt-get")] == []
        assert not [call for call in calls if " -m venv " in call]

    def test_bootstrap_repairs_a_venv_left_without_pip(self, machine: Path) -> None:
        """A .venv that an earlier run left without pip (ensurepip missing) is recreated."""
        venv = machine / "repo" / ".venv" / "bin"
        venv.mkdir(parents=True)
        executable(venv / "python", FAKE_PYTHON)
        result, calls = run(machine, "bootstrap.sh")
        assert result.returncode == 0, result.stderr
        assert len(apt_installs(calls)) == 1
        assert (machine / "repo" / ".venv" / "pip-installed").exists()

    def test_mellea_envs_install_the_venv_package(self, machine: Path) -> None:
        """install-mellea-envs.sh creates its venvs from .venv's Python, which needs the
        same package; it installs it, then the three mellea environments."""
        venv = machine / "repo" / ".venv"
        (venv / "bin").mkdir(parents=True)
        executable(venv / "bin" / "python", FAKE_PYTHON)
        (venv / "pip-installed").touch()  # .venv works; the machine has no venv package
        result, calls = run(machine, "install-mellea-envs.sh")
        assert result.returncode == 0, result.stderr
        (install,) = apt_installs(calls)
        assert install.split()[-2:] == ["python3.11-venv", "python3-venv"]
        for tag in ("08", "07", "06"):
            assert (machine / "repo" / f".venv-mellea{tag}" / "pip-installed").exists()

        again, calls = run(machine, "install-mellea-envs.sh")
        assert again.returncode == 0, again.stderr
        assert [call for call in calls if call.startswith("apt-get")] == []
        assert not [call for call in calls if " -m venv " in call]
