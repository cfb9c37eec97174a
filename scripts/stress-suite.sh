#!/usr/bin/env bash
# Proof that the suite stays green under load: RUNS times, clone the repository's main into a
# fresh temporary directory, start HOGS busy-looping processes (one core each), run the README's
# test command there (`bash scripts/test.sh`) and print one summary line per run: exit status,
# the pytest counts and the ids of the failing tests. The hogs are ended by pid, always.
# Usage: scripts/stress-suite.sh [RUNS] [HOGS]        (defaults: 3 runs, 2 hogs)
# REF=<branch or commit> tests another ref than main; SKIP_OTHER_PYTHONS=1 runs the 3.11 suite
# only (the summary says which interpreters ran); logs stay in $STRESS_LOGS (default a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-3}"
hogs="${2:-2}"
ref="${REF:-main}"
for value in "$runs" "$hogs"; do
  if ! [[ "$value" =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/stress-suite.sh [RUNS] [HOGS] (whole numbers, got '$value')" >&2
    exit 2
  fi
done
repo="$(git rev-parse --show-toplevel)"
logs="${STRESS_LOGS:-$(mktemp -d -t thunkscope-stress-logs.XXXXXX)}"
mkdir -p "$logs"
work="$(mktemp -d -t thunkscope-stress.XXXXXX)"
hog_pids=()
test_pid=""

stop_hogs() {
  local pid
  for pid in "${hog_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  hog_pids=()
}
# The test run is its own process group (setsid): ending it ends pytest and what it started.
stop_test() {
  if [ -n "$test_pid" ]; then
    kill -- "-$test_pid" 2>/dev/null || true
    wait "$test_pid" 2>/dev/null || true
    test_pid=""
  fi
}
cleanup() {
  stop_test
  stop_hogs
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${SKIP_OTHER_PYTHONS:-0}" = "1" ]; then pythons="3.11 only"; else pythons="3.11 and 3.12/3.13 where installed"; fi
commit="$(git -C "$repo" rev-parse --verify "${ref}^{commit}")"
echo "stress: ${runs} run(s) of scripts/test.sh on ${ref} (${commit:0:7}) with ${hogs} CPU hog(s); Python ${pythons}; logs in ${logs}"

green=0
for run in $(seq 1 "$runs"); do
  clone="$work/run${run}"
  git clone --quiet --no-hardlinks "$repo" "$clone"
  git -C "$clone" checkout --quiet --detach "$commit"
  for _ in $(seq 1 "$hogs"); do
    python3 -c 'while True: pass' &
    hog_pids+=("$!")
  done
  log="$logs/run${run}.log"
  started=$SECONDS
  status=0
  # In the background and waited for, so that an interrupt is handled at once.
  (cd "$clone" && PIP_DISABLE_PIP_VERSION_CHECK=1 exec setsid bash scripts/test.sh) >"$log" 2>&1 &
  test_pid=$!
  wait "$test_pid" || status=$?
  test_pid=""
  stop_hogs
  elapsed=$((SECONDS - started))
  # pytest's final lines ("== 3 failed, 420 passed, 2 skipped in 80.1s ==") and -ra's FAILED/ERROR lines.
  counts="$(grep -E '^(=+ )?[0-9]+ (passed|failed|errors?|skipped|deselected)\b.* in [0-9.]+s' "$log" \
    | sed -E 's/^=+ //; s/ in [0-9.]+s.*$//' | paste -sd ';' - || true)"
  failing="$(grep -E '^(FAILED|ERROR) [^ ]+\.py' "$log" | awk '{print $2}' | sort -u | paste -sd ' ' - || true)"
  [ "$status" -eq 0 ] && green=$((green + 1))
  echo "run ${run}/${runs}: exit ${status} in ${elapsed} s | pytest sessions: ${counts:-none} | failing: ${failing:-none}"
  rm -rf "$clone"
done
echo "stress: ${green} of ${runs} run(s) green"
[ "$green" -eq "$runs" ]
