#!/usr/bin/env bash
# The core suite on every other CPython thunkscope claims (3.12, 3.13), each in its own venv
# (.venv-py312, .venv-py313), where the interpreter is installed, then the mellea 0.8
# instrumentation with the fast path serving in a mellea venv of each (.venv-py312-mellea08,
# .venv-py313-mellea08: the fast path recognises mellea's code by a fingerprint of its
# source tokens, which each interpreter's tokenizer must reproduce): `bash scripts/test.sh`
# runs this after the 3.11 suite. Fails if any run fails; an interpreter that is not installed is
# named and left out. SKIP_OTHER_PYTHONS=1 leaves all of them out (the stress runs use it).
# Usage: scripts/test-other-pythons.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [ "${SKIP_OTHER_PYTHONS:-0}" = "1" ]; then
  lib_log "SKIP_OTHER_PYTHONS=1: the suite ran on $(.venv/bin/python -V 2>&1) only"
  exit 0
fi

# find_python X.Y: the path of a working CPython X.Y (PATH first, then pyenv's versions).
find_python() {
  local want="$1" candidate
  local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  for candidate in "python${want}" $(ls -d "$pyenv_root"/versions/"${want}".*/bin/python"${want}" \
      /root/.pyenv/versions/"${want}".*/bin/python"${want}" 2>/dev/null | sort -rV); do
    if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != (${want/./, }))" \
        >/dev/null 2>&1; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

failed=()
for version in 3.12 3.13; do
  if ! python="$(find_python "$version")"; then
    lib_log "no CPython ${version} installed: the suite does not run on it here"
    continue
  fi
  venv=".venv-py${version/./}"
  lib_log "core suite on $("$python" -V 2>&1) ($python) in $venv"
  PYTHON="$python" VENV="$venv" bash scripts/bootstrap.sh test
  started=$SECONDS
  if ! "$venv/bin/python" -m pytest -m "not mellea and not mellea08" "$@"; then
    failed+=("$version")
  fi
  mellea_venv="${venv}-mellea08"
  PYTHON="$python" VENV="$mellea_venv" bash scripts/bootstrap.sh test
  # opentelemetry-distro pinned as in install-mellea-envs.sh (pip check stays clean).
  "$mellea_venv/bin/python" -m pip install --quiet "mellea==0.8.0" "opentelemetry-distro==0.66b1"
  if ! THUNKSCOPE_MELLEA_FAST_PATH=1 "$mellea_venv/bin/python" -m pytest -m mellea \
      tests/test_instrumentation_mellea.py tests/test_mellea_fast_path.py \
      tests/test_mellea_fast_path_properties.py "$@"; then
    failed+=("${version} (mellea 0.8, fast path)")
  fi
  lib_log "CPython ${version}: $((SECONDS - started)) s"
done

if [ "${#failed[@]}" -gt 0 ]; then
  lib_log "the suite failed on CPython ${failed[*]}"
  exit 1
fi
