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

# The suites per release: every file of mellea's tests that sends a stream through
# send_to_queue without a model server and without extras (found by running the whole
# test tree instrumented and counting the streams per file): the helpers' own tests
# (send_to_queue, wait_for_all_mots, get_current_event_loop, ClientCache) and the backend
# tests that mock the model's client, so streams go through the openai and ollama backends'
# own send_to_queue bindings.
declare -A suites=(
  [0.6.0]="test/helpers test/backends/test_openai_intrinsics_unit.py"
  [0.7.0]="test/helpers test/backends/test_openai_intrinsics_unit.py
           test/backends/test_vision_ollama.py"
)
# Left out, with the reason:
# - test/backends/test_document_rendering_unit.py and (0.7.0) test_litellm_thinking.py: they
#   import litellm (the litellm extra). Installed, litellm makes every `import mellea` in
#   these environments about 8 s slower (mellea.telemetry.pricing loads litellm's model
#   tables), thunkscope's own mellea tests included. Run once by hand with it installed,
#   they passed in both modes, except the two below that fail without thunkscope too.
#   Their ::test_watsonx_... needs ibm_watsonx_ai (watsonx extra), ::test_huggingface_...
#   needs torch and transformers (hf extra).
# - test/telemetry/test_tracing_backend.py, test_tracing_streaming.py (0.7.0): their spans
#   come from mellea's hook plugins (the hooks extra, cpex, which would also change how
#   mellea runs for thunkscope's own tests here); without it their integration tests fail
#   without thunkscope too.
# - test_litellm_ollama.py, test_openai_ollama.py, test_ollama.py, test_vision_openai.py,
#   test_openai_vllm.py, test_watsonx.py, test_litellm_watsonx.py, test_huggingface*.py:
#   every stream in them needs a model server, a GPU model or cloud credentials.
# - mellea 0.8.0: its sdist ships no tests at all (its build includes only mellea/ and cli/),
#   nor does its wheel; thunkscope's own mellea tests cover 0.8 in .venv-mellea08.
declare -A venvs=([0.6.0]=.venv-mellea06 [0.7.0]=.venv-mellea07)

status=0
summary=()
for version in 0.6.0 0.7.0; do
  src="$(fetch_tests "$version")"
  python="${repo}/${venvs[$version]}/bin/python"
  for mode in "${modes[@]}"; do
    log="$(mktemp)"
    # Only the plugins mellea's tests use (asyncio, timeout), not every one the environment
    # has (hypothesis alone takes seconds to load). mellea's addopts ask for coverage
    # reports; ours replace them. pytest-timeout stops a hung test, not the whole CI run.
    # shellcheck disable=SC2086 # the suite list splits into paths
    if (cd "$src" && PYTHONPATH="${repo}/tests" THUNKSCOPE_MELLEA_FAST_PATH="$mode" \
        PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$python" -m pytest -p support.mellea_instrumented \
        -p pytest_asyncio.plugin -p pytest_timeout -p no:cacheprovider -o addopts="" \
        -m "not slow" --timeout=300 -q -rs ${suites[$version]}) >"$log" 2>&1; then
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
