# hpsearch: `make study` runs the default study, `make test` runs the tests.
# Both create .venv and install the project into it when needed.
# Another Python in its own venv: make test PYTHON=python3.12 VENV=.venv-3.12

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help study test bench gpu-check report dashboard install clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install hpsearch with its test tools (VENV=, PYTHON= for another)

study: $(STAMP) ## run the default study (50 trials on digits; ARGS="--trials 10" to change)
	$(PY) run_study.py $(ARGS)

test: $(STAMP) ## run the tests
	$(PY) -m pytest $(ARGS)

gpu-check: $(STAMP) ## the GPU path on this machine's GPU, one table (no GPU: says so)
	$(PY) -m hpsearch.bench.gpu_check

report: $(STAMP) ## write the default study's report under studies/reports/ (ARGS for more)
	$(PY) -m hpsearch.cli report $(ARGS)

dashboard: $(STAMP) ## open optuna-dashboard on studies/hpsearch.db at http://127.0.0.1:8080/
	$(PY) -m hpsearch.cli dashboard $(ARGS)

bench: $(STAMP) ## hpsearch against the canonical recipe: one trial and a study (ARGS="--repeats 3")
	$(PY) -m hpsearch.bench $(ARGS)

clean: ## remove the virtual environment and caches (studies/ keeps its stores)
	rm -rf $(VENV) .pytest_cache build *.egg-info
