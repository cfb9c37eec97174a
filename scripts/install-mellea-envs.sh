#!/usr/bin/env bash
# The environments the mellea instrumentation is tested in: .venv-mellea08 (mellea 0.8.0,
# the thunk calling convention), .venv-mellea07 (mellea 0.7.0, the queue convention with
# chunk_timeout) and .venv-mellea06 (mellea 0.6.0, the queue convention without it).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

for pair in 08:0.8.0 07:0.7.0 06:0.6.0; do
  tag="${pair%%:*}"
  version="${pair##*:}"
  venv=".venv-mellea${tag}"
  if ! venv_has_pip "$venv"; then
    ensure_venv_support .venv/bin/python
    .venv/bin/python -m venv --clear "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # opentelemetry-distro 0.66b1 keeps opentelemetry-instrumentation at the version the
  # structlog instrumentation pins; 0.66b2 would break `pip check`.
  # pytest-timeout and psutil: what mellea's own tests use beyond thunkscope's test extras
  # (its sdists' test group names them without a version); scripts/test-mellea-suites.sh
  # runs 0.6.0's and 0.7.0's tests here (0.8.0's sdist ships none).
  "$venv/bin/python" -m pip install --quiet "mellea==${version}" -e ".[test]" \
    "opentelemetry-distro==0.66b1" pytest-timeout psutil
done
