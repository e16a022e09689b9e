# petals-swarm-kit: `make demo` runs a private swarm on 127.0.0.1 and answers; `make test` runs
# every test tier. Both set up what they need first (.venv, Debian packages), on a fresh machine.
#
# The one setting that chooses CPU or CUDA torch: TORCH_INDEX_URL.
#   empty (default): pip's configured indexes; on PyPI, torch==2.13.0 for Linux is the CUDA build
#                    (a machine with a local CPU wheel in its pip find-links gets that one)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   CPU-only build
# GPU=1 (venv, wheelhouse): also install/collect the pinned CUDA 13 wheel set (requirements/gpu.txt).
#   It reads no pip config files and no PIP_FIND_LINKS (a local CPU torch there would shadow the
#   CUDA build); point pip at a mirror with PIP_INDEX_URL if PyPI is not reachable.
# Python 3.11 or 3.12 (3.11 preferred when both exist): PYTHON=python3.12 picks one explicitly.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_FOUND := $(shell for p in python3.11 python3.12 python3; do \
    command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' 2>/dev/null \
    && { command -v $$p; break; }; done)
PYTHON ?= $(PYTHON_FOUND)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
TORCH_INDEX_URL ?=
GPU ?=
GPU_ENV := $(if $(GPU),env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null)
GPU_REQS := $(if $(GPU),-c requirements/gpu.txt -r requirements/gpu.txt)
PROMPT ?= What is a block?
WHEELHOUSE ?= wheelhouse
PYTEST ?= $(BIN)/python -m pytest
export PETALS_KIT_CACHE ?= $(CURDIR)/.cache

STAMP := $(VENV)/.installed
REQS := constraints.txt requirements/gpu.txt requirements/petals-stack.txt requirements/kit.txt requirements/dev.txt pyproject.toml

.PHONY: help venv demo chat test test-fast test-unit test-monitoring test-swarm test-bot test-lab \
        lint wheelhouse bench system-deps clean lock

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): $(REQS)
	@echo "== setup: python venv $(VENV) with the pinned Petals stack (constraints.txt)"
	@test -n "$(PYTHON)" || { echo "Python 3.11 or 3.12 is required (none found; set PYTHON=...)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else "Python 3.11 or 3.12 is required, got " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip setuptools wheel
	@echo "   torch 2.13.0 $(if $(TORCH_INDEX_URL),from $(TORCH_INDEX_URL),from the configured index)"
	@$(if $(GPU),echo "   GPU=1: the CUDA 13 wheel set of requirements/gpu.txt")
	@$(GPU_ENV) $(PIP) install -q -c constraints.txt $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) $(GPU_REQS) torch==2.13.0
	@echo "   the Petals stack (hivemind 1.1.12, transformers 4.34, ...)"
	@$(PIP) install -q -c constraints.txt -r requirements/petals-stack.txt
	@echo "   petals 2.2.0.post1 without its unsatisfiable pins (swarm/compat.py bridges hivemind)"
	@$(PIP) install -q --no-deps -c constraints.txt petals==2.2.0.post1
	@echo "   the kit's services and test tools"
	@$(PIP) install -q -c constraints.txt -r requirements/kit.txt -r requirements/dev.txt
	@$(PIP) install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
	    || $(PIP) install --no-deps --no-build-isolation -e .  # quiet unless it fails
	@$(BIN)/python -c 'import swarm.compat, petals; print("   petals", petals.__version__, "imports on hivemind", __import__("hivemind").__version__)' 2>/dev/null
	@touch $@

venv: $(STAMP)  ## create .venv with everything installed

system-deps:  ## Debian packages and npm tools the tests need (root)
	@echo "== setup: Debian packages for the monitoring tests and the lab"
	@bash scripts/monitoring-deps.sh
	@bash scripts/lab-deps.sh $(VENV)

demo: $(STAMP)  ## run a private swarm on 127.0.0.1 with the tiny model and answer PROMPT
	$(BIN)/petalctl demo --prompt "$(PROMPT)"

chat: $(STAMP)  ## like demo, but an interactive chat
	$(BIN)/petalctl demo

test: $(STAMP) system-deps  ## run every test tier (unit, monitoring, swarm, bot, lab)
	@bash scripts/run-tests.sh all

test-fast: $(STAMP)  ## run the unit tier only
	@bash scripts/run-tests.sh unit

test-unit test-monitoring test-swarm test-bot test-lab: $(STAMP) system-deps
	@bash scripts/run-tests.sh $(patsubst test-%,%,$@)

lint: $(STAMP)  ## ruff and mypy on the package code
	$(BIN)/ruff check swarm client monitoring bot petalctl tests bench
	$(BIN)/ruff format --check swarm client monitoring bot petalctl tests bench
	$(BIN)/mypy swarm client monitoring bot petalctl

wheelhouse: $(STAMP)  ## build ./wheelhouse (GPU=1: with the CUDA 13 set) to install offline
	@echo "== wheelhouse: wheels of the pinned set$(if $(GPU), and the CUDA 13 set,) for Python $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') into $(WHEELHOUSE)/"
	@mkdir -p $(WHEELHOUSE)
	@$(GPU_ENV) $(PIP) wheel -q -w $(WHEELHOUSE) -c constraints.txt $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) \
	    $(GPU_REQS) -r requirements/petals-stack.txt -r requirements/kit.txt pip setuptools wheel
	@$(PIP) wheel -q -w $(WHEELHOUSE) --no-deps petals==2.2.0.post1
	@$(PIP) wheel -q -w $(WHEELHOUSE) --no-deps --no-build-isolation . >/dev/null 2>&1 \
	    || $(PIP) wheel -w $(WHEELHOUSE) --no-deps --no-build-isolation .
	@cp constraints.txt requirements/petals-stack.txt requirements/kit.txt scripts/install-from-wheelhouse.sh $(WHEELHOUSE)/
	@$(if $(GPU),cp requirements/gpu.txt $(WHEELHOUSE)/,rm -f $(WHEELHOUSE)/gpu.txt)
	@echo "   $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels; install offline with: bash $(WHEELHOUSE)/install-from-wheelhouse.sh $(WHEELHOUSE) VENV"

bench: $(STAMP)  ## run the benchmarks in bench/ (figures printed and written to bench/results/)
	$(BIN)/python -m bench.swarm_throughput
	$(BIN)/python -m bench.monitoring_bench
	$(BIN)/python -m bench.gateway_bench

lock: $(STAMP)  ## rewrite constraints.txt from the installed venv (after a deliberate upgrade)
	@{ sed -n '1,3p' constraints.txt; echo "petals==2.2.0.post1"; \
	   $(PIP) freeze --exclude-editable | grep -v -E '^(petals==|petals-swarm-kit)' | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/'; } > constraints.new
	@mv constraints.new constraints.txt && echo "constraints.txt rewritten"

clean:  ## remove the venv, caches and build outputs
	rm -rf $(VENV) $(WHEELHOUSE) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache artifacts
