#!/usr/bin/env bash
# Install the kit into a virtualenv from a wheelhouse made by `make wheelhouse`, with no index:
# for air-gapped clusters and the Ansible petals_runtime role.
# Usage: install-from-wheelhouse.sh WHEELHOUSE VENV [PYTHON]
# PYTHON defaults to python3.11, else python3.12; it must be the version the wheelhouse was built
# with (compiled wheels are per Python version). A wheelhouse from `make wheelhouse GPU=1` holds
# gpu.txt and the CUDA 13 wheel set, installed first so torch is the CUDA build.
set -euo pipefail
wheelhouse="$(cd "$1" && pwd)"
venv="$2"
python="${3:-$(command -v python3.11 || command -v python3.12 || echo python3)}"
pip=("$venv/bin/python" -m pip --disable-pip-version-check install --no-index --find-links "$wheelhouse" -q)

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo "install-from-wheelhouse: pinned Petals stack and the kit's services"
"${pip[@]}" -c "$wheelhouse/constraints.txt" pip setuptools wheel
if [[ -f "$wheelhouse/gpu.txt" ]]; then
    echo "install-from-wheelhouse: the CUDA 13 wheel set (gpu.txt)"
    "${pip[@]}" -c "$wheelhouse/constraints.txt" -c "$wheelhouse/gpu.txt" -r "$wheelhouse/gpu.txt"
fi
"${pip[@]}" -c "$wheelhouse/constraints.txt" -r "$wheelhouse/petals-stack.txt" -r "$wheelhouse/kit.txt"
echo "install-from-wheelhouse: petals 2.2.0.post1 and the kit without dependency resolution"
"${pip[@]}" --no-deps petals==2.2.0.post1
"${pip[@]}" --no-deps "$(ls "$wheelhouse"/petals_swarm_kit-*.whl | sort -V | tail -n 1)"
"$venv/bin/python" -c 'import swarm.compat, petals; print("install-from-wheelhouse: petals", petals.__version__, "ready")' 2>/dev/null
