#!/usr/bin/env bash
# Install everything the test suite needs (venv, packages, Prometheus, docker-compose,
# the mellea environments), then run the whole suite: `bash scripts/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh test,dev
bash scripts/install-stack-tools.sh
if [ -f scripts/install-mellea-envs.sh ]; then
  bash scripts/install-mellea-envs.sh
fi

.venv/bin/ruff check src tests benchmarks dashboards
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
