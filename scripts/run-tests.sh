#!/usr/bin/env bash
# Run the test tiers one after another, saying what each stage does and how long it took.
# Usage: scripts/run-tests.sh all|unit|monitoring|swarm|bot|lab
set -uo pipefail
cd "$(dirname "$0")/.."
tiers=(unit monitoring swarm bot lab)
[[ "${1:-all}" == all ]] || tiers=("$1")
declare -A what=(
    [unit]="pure functions: config, addresses, planner, coverage, formatting"
    [monitoring]="health service, real Prometheus/promtool/Alertmanager, dashboards, Chromium"
    [swarm]="a real private Petals swarm on 127.0.0.1 (tiny Llama): generation, no orphans, CLI"
    [bot]="the Discord bot against the fake Discord and the loopback swarm"
    [lab]="Ansible on systemd-nspawn hosts in network namespaces"
)
failed=()
started=$SECONDS
for tier in "${tiers[@]}"; do
    echo "== test tier '$tier': ${what[$tier]}"
    t0=$SECONDS
    .venv/bin/python -m pytest -m "$tier" -p no:cacheprovider -q --durations=8 --durations-min=10
    rc=$?
    # pytest exit 5 = no tests collected in this tier (yet): not a failure of the others.
    if [[ $rc -ne 0 && $rc -ne 5 ]]; then failed+=("$tier"); fi
    echo "== tier '$tier' finished in $((SECONDS - t0))s (exit $rc)"
done
echo "== all tiers done in $((SECONDS - started))s"
if ((${#failed[@]})); then
    echo "== FAILED tiers: ${failed[*]}"
    exit 1
fi
