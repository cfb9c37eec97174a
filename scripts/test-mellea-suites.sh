#!/usr/bin/env bash
# mellea's own tests, run with thunkscope's MelleaInstrumentor on (tests/support/
# mellea_instrumented.py), in the mellea environment of each release, in each mode:
# wrapping mellea's functions (THUNKSCOPE_MELLEA_FAST_PATH=0) and the fast path (=1).
# Prints, per release and mode, passed/failed/skipped/deselected and mellea's own skips;
# exits non-zero if any run failed. `bash scripts/test-mellea-suites.sh` after
# scripts/install-mellea-envs.sh.
#
# The tests come from each release's sdist on PyPI (0.6.0 and 0.7.0 ship test/), cached by
# version under ~/.cache/thunkscope/mellea-sdists/<version>/: only test/ and pyproject.toml
# (mellea's pytest settings) are extracted, so the tests import the installed mellea.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
repo="$(pwd)"
cache="${HOME}/.cache/thunkscope/mellea-sdists"
modes=(0 1)

# fetch_tests VERSION: the directory holding the release's test/ and pyproject.toml.
fetch_tests() {
  local version="$1" dir="${cache}/$1"
  if [ ! -f "${dir}/.complete" ]; then
    rm -rf "$dir"
    mkdir -p "${dir}/src"
    .venv/bin/python -m pip download --quiet --no-binary :all: --no-deps \
      "mellea==${version}" -d "$dir"
    tar -xzf "${dir}/mellea-${version}.tar.gz" -C "${dir}/src" --strip-components=1 \
      "mellea-${version}/test" "mellea-${version}/pyproject.toml"
    touch "${dir}/.complete"
  fi
  echo "${dir}/src"
}

# The suites per release: the helpers' tests (send_to_queue, wait_for_all_mots,
# get_current_event_loop, ClientCache and the helpers around them).
declare -A suites=(
  [0.6.0]="test/helpers"
  [0.7.0]="test/helpers"
)
declare -A venvs=([0.6.0]=.venv-mellea06 [0.7.0]=.venv-mellea07)

status=0
summary=()
for version in 0.6.0 0.7.0; do
  src="$(fetch_tests "$version")"
  python="${repo}/${venvs[$version]}/bin/python"
  for mode in "${modes[@]}"; do
    log="$(mktemp)"
    # mellea's addopts ask for coverage reports; ours replace them. pytest-timeout (which
    # mellea's settings use) stops a hung test instead of the whole CI run.
    # shellcheck disable=SC2086 # the suite list splits into paths
    if (cd "$src" && PYTHONPATH="${repo}/tests" THUNKSCOPE_MELLEA_FAST_PATH="$mode" \
        "$python" -m pytest -p support.mellea_instrumented -p no:randomly -p no:cacheprovider \
        -o addopts="" -m "not slow" --timeout=300 -q -rs ${suites[$version]}) >"$log" 2>&1; then
      :
    else
      status=1
      cat "$log"  # the failures, in full
    fi
    mapfile -t lines < <(grep '^thunkscope-mellea-suite:' "$log" || true)
    if [ "${#lines[@]}" -eq 0 ]; then
      lib_log "mellea ${version} mode ${mode}: no summary (the run did not start); output above"
      status=1
    fi
    summary+=("${lines[@]}")
    rm -f "$log"
  done
done
printf '%s\n' "${summary[@]}"
exit "$status"
