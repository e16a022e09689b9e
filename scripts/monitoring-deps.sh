#!/usr/bin/env bash
# Install what the monitoring tests need: Prometheus + promtool, Alertmanager + amtool, headless
# Chromium (Debian packages; none of them autostarts) and the npm tools that turn @grafana/schema
# into a JSON Schema for the dashboards. Idempotent; a second run only checks and returns.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
schema_tools="$here/monitoring/grafana/schema-tools"

# Binary -> Debian package that provides it.
declare -A wanted=(
    [prometheus]=prometheus
    [promtool]=prometheus
    [prometheus-alertmanager]=prometheus-alertmanager
    [amtool]=prometheus-alertmanager
    [chromium]=chromium
)
missing=()
for binary in "${!wanted[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || missing+=("${wanted[$binary]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    install=("${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}")
    echo "monitoring-deps: apt-get install ${missing[*]}"
    # apt-get update only when needed: no package lists yet, or lists too old to download from.
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1 || ! "${install[@]}" >/dev/null 2>&1; then
        "${sudo_cmd[@]}" apt-get update -qq
        "${install[@]}" >/dev/null
    fi
fi

# npm ci only when node_modules is missing or older than the lock file.
stamp="$schema_tools/node_modules/.package-lock.json"
if [[ ! -f "$stamp" || "$schema_tools/package-lock.json" -nt "$stamp" ]]; then
    echo "monitoring-deps: npm ci in monitoring/grafana/schema-tools"
    (cd "$schema_tools" && npm ci --no-audit --no-fund --loglevel=error)
fi
