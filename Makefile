# petals-swarm-kit: `make demo` runs a private swarm on 127.0.0.1 and answers; `make test` runs
# every test tier. Both set up what they need first (.venv, Debian packages), on a fresh machine.
#
# The one setting that chooses CPU or CUDA torch: TORCH_INDEX_URL.
#   empty (default): pip's configured indexes; on PyPI, torch==2.13.0 for Linux is the CUDA build
#                    (a machine with a local CPU wheel in its pip find-links gets that one)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   CPU-only build
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
TORCH_INDEX_URL ?=
PROMPT ?= What is a block?
WHEELHOUSE ?= wheelhouse
PYTEST ?= $(BIN)/python -m pytest
export PETALS_KIT_CACHE ?= $(CURDIR)/.cache

STAMP := $(VENV)/.installed
REQS := constraints.txt requirements/petals-stack.txt requirements/kit.txt requirements/dev.txt pyproject.toml

.PHONY: help venv demo chat test test-fast test-unit test-monitoring test-swarm test-bot test-lab \
        lint wheelhouse bench system-deps clean lock

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): $(REQS)
	@echo "== setup: python venv $(VENV) with the pinned Petals stack (constraints.txt)"
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, got " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip setuptools wheel
	@echo "   torch 2.13.0 $(if $(TORCH_INDEX_URL),from $(TORCH_INDEX_URL),from the configured index)"
	@$(PIP) install -q -c constraints.txt $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch==2.13.0
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

wheelhouse: $(STAMP)  ## build ./wheelhouse: every wheel needed to install offline (--no-index)
	@echo "== wheelhouse: wheels of the pinned set into $(WHEELHOUSE)/"
	@mkdir -p $(WHEELHOUSE)
	@$(PIP) wheel -q -w $(WHEELHOUSE) -c constraints.txt $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) \
	    -r requirements/petals-stack.txt -r requirements/kit.txt pip setuptools wheel
	@$(PIP) wheel -q -w $(WHEELHOUSE) --no-deps petals==2.2.0.post1
	@$(PIP) wheel -q -w $(WHEELHOUSE) --no-deps --no-build-isolation . >/dev/null 2>&1 \
	    || $(PIP) wheel -w $(WHEELHOUSE) --no-deps --no-build-isolation .
	@cp constraints.txt requirements/petals-stack.txt requirements/kit.txt scripts/install-from-wheelhouse.sh $(WHEELHOUSE)/
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
