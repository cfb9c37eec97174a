#!/usr/bin/env bash
# Builds Jaeger v2 (the module github.com/jaegertracing/jaeger, package cmd/jaeger) at the
# pinned version into a cache keyed by that version and the Go version:
#   ~/.cache/thunkscope/jaeger/<sha256>/jaeger
# and prints that path. A second run (or a concurrent one, which waits on a lock) builds
# nothing. Build output goes to <cache>/build.log and stderr on failure.
set -euo pipefail

JAEGER_VERSION="v1.75.0"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib_go.sh
source "${repo_root}/scripts/lib_go.sh"

go="$(go_bin)"
key="$( { echo "jaeger ${JAEGER_VERSION}"; "${go}" version; } | sha256sum | cut -c1-16)"
dir="$(thunkscope_cache jaeger "${key}")"
binary="${dir}/jaeger"

build() {
    local work start
    work="$(mktemp -d "${dir}/build.XXXXXX")"
    start="$(date +%s)"
    printf 'build-jaeger: building %s (log: %s/build.log)\n' "${binary}" "${dir}" >&2
    # Jaeger's go.mod has a replace directive, which `go install pkg@version` refuses: build
    # it as the main module, from a writable copy of its source in the module cache.
    if ! {
        src="$("${go}" mod download -json "github.com/jaegertracing/jaeger@${JAEGER_VERSION}" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" &&
        [ -n "${src}" ] && cp -r "${src}" "${work}/src" && chmod -R u+w "${work}/src" &&
        (cd "${work}/src" && "${go}" build -trimpath -ldflags="-s -w" -o "${work}/jaeger" ./cmd/jaeger)
    } >"${dir}/build.log" 2>&1; then
        tail -n 40 "${dir}/build.log" >&2
        printf 'build-jaeger: the build failed; full log in %s/build.log\n' "${dir}" >&2
        rm -rf "${work}"
        return 1
    fi
    mv -f "${work}/jaeger" "${binary}"
    rm -rf "${work}"
    printf 'build-jaeger: built in %ss, %s bytes\n' "$(( $(date +%s) - start ))" \
        "$(stat -c %s "${binary}")" >&2
}

build_once "${binary}" build
echo "${binary}"
