#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install thunkscope into it, with the extras given.
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh test,dev
# PYTHON=... picks the interpreter, VENV=... the venv directory (default .venv), e.g.
# PYTHON=python3.13 VENV=.venv-py313 scripts/bootstrap.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

extras="${1:-}"
venv="${VENV:-.venv}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "thunkscope needs Python 3.11 or newer; none found on PATH" >&2
  exit 1
fi

if ! venv_has_pip "$venv"; then
  ensure_venv_support "$python"
  "$python" -m venv --clear "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
target="."
[ -n "$extras" ] && target=".[${extras}]"
"$venv/bin/python" -m pip install --quiet -e "$target"
