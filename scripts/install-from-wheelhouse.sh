#!/usr/bin/env bash
# Install the kit into a virtualenv from a wheelhouse made by `make wheelhouse`, with no index:
# for air-gapped clusters and the Ansible petals_runtime role.
# Usage: install-from-wheelhouse.sh WHEELHOUSE VENV [PYTHON]
set -euo pipefail
wheelhouse="$(cd "$1" && pwd)"
venv="$2"
python="${3:-python3.11}"
pip=("$venv/bin/python" -m pip --disable-pip-version-check install --no-index --find-links "$wheelhouse" -q)

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo "install-from-wheelhouse: pinned Petals stack and the kit's services"
"${pip[@]}" -c "$wheelhouse/constraints.txt" pip setuptools wheel
"${pip[@]}" -c "$wheelhouse/constraints.txt" -r "$wheelhouse/petals-stack.txt" -r "$wheelhouse/kit.txt"
echo "install-from-wheelhouse: petals 2.2.0.post1 and the kit without dependency resolution"
"${pip[@]}" --no-deps petals==2.2.0.post1
"${pip[@]}" --no-deps "$(ls "$wheelhouse"/petals_swarm_kit-*.whl | sort -V | tail -n 1)"
"$venv/bin/python" -c 'import swarm.compat, petals; print("install-from-wheelhouse: petals", petals.__version__, "ready")' 2>/dev/null
