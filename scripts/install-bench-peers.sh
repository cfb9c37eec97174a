#!/usr/bin/env bash
# The environment of benchmarks/generation.py: .venv-bench with mellea 0.8.0 and its
# telemetry extra, the peers users would pick instead of thunkscope (traceloop's
# opentelemetry-instrumentation-openai, openlit) and thunkscope itself (editable).
# Every package is pinned by benchmarks/peers-constraints.txt, a set that resolves
# together (`pip check` clean); valgrind (Debian's) gives the instruction counts.
# Not part of scripts/test.sh: the suite proves the benchmark's harness in .venv-mellea08.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

venv="${VENV:-.venv-bench}"
python="${PYTHON:-python3.11}"
if ! venv_has_pip "$venv"; then
  ensure_venv_support "$python"
  "$python" -m venv --clear "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c benchmarks/peers-constraints.txt \
  "mellea[telemetry]==0.8.0" "opentelemetry-instrumentation-openai==0.62.4" \
  "openlit==1.45.0" -e .
"$venv/bin/python" -m pip check
if ! command -v valgrind >/dev/null 2>&1; then
  lib_log "valgrind is missing: installing Debian's (the benchmark counts instructions with it)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
