#!/usr/bin/env bash
# Helpers the scripts share: `source scripts/lib.sh` (it runs nothing by itself).

lib_log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# as_root CMD...: run CMD as root, through sudo when not root already.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        lib_log "need root (or sudo) to run: $*"; return 1
    fi
}

# ensure_venv_support PYTHON: `PYTHON -m venv` needs ensurepip, which Debian and Ubuntu ship
# apart from the interpreter, in pythonX.Y-venv: install it (as root) when it is missing.
ensure_venv_support() {
    local python="$1" version
    if "$python" -c 'import ensurepip' >/dev/null 2>&1; then
        return 0
    fi
    version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if ! command -v apt-get >/dev/null 2>&1; then
        lib_log "${python} has no ensurepip, so it cannot create a venv: install the package" \
            "that provides it (python${version}-venv on Debian and Ubuntu)"
        return 1
    fi
    lib_log "${python} has no ensurepip: installing python${version}-venv"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends \
        "python${version}-venv" python3-venv >/dev/null
    "$python" -c 'import ensurepip'
}

# venv_has_pip VENV: whether VENV is a venv with pip (a run that found no ensurepip leaves
# one without it).
venv_has_pip() {
    [ -x "$1/bin/python" ] && "$1/bin/python" -m pip --version >/dev/null 2>&1
}
