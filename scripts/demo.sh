#!/usr/bin/env bash
# Set up .venv if needed and run the demo workload: `bash scripts/demo.sh [demo options]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh prometheus
exec .venv/bin/thunkscope demo "$@"
