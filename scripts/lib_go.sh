#!/usr/bin/env bash
# Helpers shared by the scripts that build Go programs into the cache (build-collector.sh,
# build-jaeger.sh): `source scripts/lib_go.sh` (it runs nothing by itself).

# go_bin: the Go toolchain to build with ($GO, `go` on PATH, or /usr/local/go/bin/go).
go_bin() {
    local candidate
    for candidate in "${GO:-}" "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go; do
        if [ -n "${candidate}" ] && [ -x "${candidate}" ]; then
            echo "${candidate}"
            return 0
        fi
    done
    printf '%s: no Go toolchain found (set GO=/path/to/go or put go on PATH)\n' "$(basename "$0")" >&2
    return 1
}

# thunkscope_cache DIR...: the cache root for builds (outside any work tree).
thunkscope_cache() {
    local root="${THUNKSCOPE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/thunkscope}"
    local IFS=/
    echo "${root}/$*"
}

# build_once TARGET_BINARY BUILD_FUNCTION: runs BUILD_FUNCTION unless TARGET_BINARY exists,
# under an exclusive flock beside it, so concurrent callers build once and the others wait
# and reuse the result. BUILD_FUNCTION must create TARGET_BINARY (atomically, via mv).
build_once() {
    local target="$1" builder="$2" dir
    dir="$(dirname "${target}")"
    if [ -x "${target}" ]; then
        return 0
    fi
    mkdir -p "${dir}"
    exec {lock_fd}>"${dir}/.lock"
    flock "${lock_fd}"
    if [ ! -x "${target}" ]; then
        "${builder}"
    fi
    flock -u "${lock_fd}"
    exec {lock_fd}>&-
    [ -x "${target}" ]
}
