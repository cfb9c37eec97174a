#!/usr/bin/env bash
# Builds the thunkscope collector distribution (collector/manifest.yaml) with the
# OpenTelemetry Collector Builder at the manifest's release, into a cache keyed by the
# manifest's content and the Go version:
#   ~/.cache/thunkscope/otelcol/<sha256>/otelcol-thunkscope
# and prints that path. A second run (or a concurrent one, which waits on a lock) builds
# nothing. Build output goes to <cache>/build.log and stderr on failure.
set -euo pipefail

BUILDER_VERSION="v0.161.0"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
manifest="${repo_root}/collector/manifest.yaml"
# shellcheck source=scripts/lib_go.sh
source "${repo_root}/scripts/lib_go.sh"

go="$(go_bin)"
key="$( { cat "${manifest}"; echo "${BUILDER_VERSION}"; "${go}" version; } | sha256sum | cut -c1-16)"
dir="$(thunkscope_cache otelcol "${key}")"
binary="${dir}/otelcol-thunkscope"

build() {
    local work start
    work="$(mktemp -d "${dir}/build.XXXXXX")"
    start="$(date +%s)"
    printf 'build-collector: building %s (log: %s/build.log)\n' "${binary}" "${dir}" >&2
    if ! {
        GOBIN="${work}/bin" "${go}" install "go.opentelemetry.io/collector/cmd/builder@${BUILDER_VERSION}" &&
        sed "s|^\(  output_path:\).*|\1 ${work}/dist|" "${manifest}" >"${work}/manifest.yaml" &&
        "${work}/bin/builder" --config="${work}/manifest.yaml"
    } >"${dir}/build.log" 2>&1; then
        tail -n 40 "${dir}/build.log" >&2
        printf 'build-collector: the build failed; full log in %s/build.log\n' "${dir}" >&2
        rm -rf "${work}"
        return 1
    fi
    mv -f "${work}/dist/otelcol-thunkscope" "${binary}"
    rm -rf "${work}"
    printf 'build-collector: built in %ss, %s bytes\n' "$(( $(date +%s) - start ))" \
        "$(stat -c %s "${binary}")" >&2
}

build_once "${binary}" build
echo "${binary}"
