#!/usr/bin/env bash
# Install what the nspawn lab (tests/lab) needs: apt tools on this machine, Ansible in the venv.
# Idempotent and quick when everything is present. Usage: scripts/lab-deps.sh [VENV] (default .venv)
set -euo pipefail

venv="${1:-.venv}"
apt_pkgs=(systemd-container mmdebstrap iproute2 openssh-client nftables)
pip_specs=("ansible-core>=2.19,<2.20" "ansible-lint>=26,<27")

log="$(mktemp -t lab-deps.XXXXXX)"
trap 'rm -f "$log"' EXIT

quietly() {  # run a command with its output in $log; show the log only if it fails
    if ! "$@" >"$log" 2>&1; then
        echo "lab-deps: failed: $*" >&2
        tail -n 30 "$log" >&2
        return 1
    fi
}

# --- apt ---------------------------------------------------------------------------------------
missing=()
for pkg in "${apt_pkgs[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    if [[ "$(id -u)" != 0 ]]; then
        echo "lab-deps: need root to install ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the package lists only when they cannot name a package we need.
    for pkg in "${missing[@]}"; do
        if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]'; then
            echo "lab-deps: apt-get update (no candidate for $pkg)"
            quietly apt-get update -qq
            break
        fi
    done
    echo "lab-deps: apt-get install ${missing[*]}"
    install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
    if ! "${install[@]}" >"$log" 2>&1; then
        # Stale lists point at files the mirror no longer has: refresh once and retry.
        echo "lab-deps: install failed, apt-get update and retry"
        quietly apt-get update -qq
        quietly "${install[@]}"
    fi
fi

echo "lab-deps: apt packages present: ${apt_pkgs[*]}"

# --- pip (Ansible in the project venv) -------------------------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
    echo "lab-deps: creating venv $venv"
    quietly python3.11 -m venv "$venv"
fi

check_ansible() {  # prints the installed versions; fails unless both are the wanted series
    "$venv/bin/python" - <<'PY'
import importlib.metadata as md
import sys

wanted = {"ansible-core": "2.19.", "ansible-lint": "26."}
found = {}
for name in wanted:
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        found[name] = "missing"
print(", ".join(f"{name} {version}" for name, version in found.items()))
sys.exit(any(not found[name].startswith(prefix) for name, prefix in wanted.items()))
PY
}

if ! versions="$(check_ansible)"; then
    echo "lab-deps: have $versions; pip install ${pip_specs[*]} into $venv"
    quietly "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pip_specs[@]}"
    versions="$(check_ansible)"
fi
echo "lab-deps: $versions in $venv"
