#!/usr/bin/env bash
# Install everything the test suite needs (venv, packages, Prometheus, docker-compose,
# the mellea environments), then run the whole suite: `bash scripts/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh test,dev
bash scripts/install-stack-tools.sh
bash scripts/install-mellea-envs.sh

.venv/bin/ruff check src tests benchmarks dashboards deploy
.venv/bin/mypy

# The core suite, then the mellea instrumentation in each mellea environment (0.8, 0.7, 0.6):
# the markers select what each release can run, so every test runs somewhere and none is
# skipped.
.venv/bin/python -m pytest -m "not mellea and not mellea08" "$@"
mellea_tests=(tests/test_instrumentation_mellea.py tests/test_fake_openai.py tests/test_streamrec.py
  tests/test_mellea_fast_path.py tests/test_mellea_fast_path_properties.py
  tests/test_mellea_suites_plugin.py tests/test_generation_benchmark.py)
# THUNKSCOPE_MELLEA_FAST_PATH=0: the instrumentor wraps mellea's own functions; then the
# tests that drive each release's real backend (fake OpenAI server) and helpers through the
# instrumentor run again with the fast path serving (=1): the same results in both modes.
markers=("08:mellea" "07:mellea and not mellea08"
  "06:mellea and not mellea08 and not mellea07plus")
for env in "${markers[@]}"; do
  THUNKSCOPE_MELLEA_FAST_PATH=0 ".venv-mellea${env%%:*}/bin/python" -m pytest -m "${env#*:}" \
    "${mellea_tests[@]}" "$@"
done
for env in "${markers[@]}"; do
  THUNKSCOPE_MELLEA_FAST_PATH=1 ".venv-mellea${env%%:*}/bin/python" -m pytest -m "${env#*:}" \
    tests/test_instrumentation_mellea.py "$@"
done
# mellea's own test suites with thunkscope's instrumentor on, per release and mode.
bash scripts/test-mellea-suites.sh

# The core suite again on CPython 3.12 and 3.13 (each in its own venv) where they are installed.
bash scripts/test-other-pythons.sh "$@"
