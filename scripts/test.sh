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
  tests/test_mellea_suites_plugin.py
  tests/test_generation_benchmark.py)
.venv-mellea08/bin/python -m pytest -m "mellea" "${mellea_tests[@]}" "$@"
.venv-mellea07/bin/python -m pytest -m "mellea and not mellea08" "${mellea_tests[@]}" "$@"
.venv-mellea06/bin/python -m pytest -m "mellea and not mellea08 and not mellea07plus" \
  "${mellea_tests[@]}" "$@"
# mellea's own test suites with thunkscope's instrumentor on, per release and mode.
bash scripts/test-mellea-suites.sh

# The core suite again on CPython 3.12 and 3.13 (each in its own venv) where they are installed.
bash scripts/test-other-pythons.sh "$@"
