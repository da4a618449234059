# BitingLip: `make up` sets up and runs the platform; `make test` runs the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup up test test-web lint bench clean

setup: $(VENV)/.installed web/dist/index.html

# The install steps live in deploy/install.sh, which the image's Dockerfile runs too (one install path).
$(VENV)/.installed: pyproject.toml deploy/install.sh
	deploy/install.sh python $(VENV) dev
	touch $@

# The web console (web/, Vue + Vite), served by the gateway at /ui: Node is needed for this build only.
WEB_SOURCES := web/package.json web/package-lock.json web/index.html web/vite.config.ts $(shell find web/src web/scripts -type f 2>/dev/null)
web/dist/index.html: $(WEB_SOURCES) deploy/install.sh
	deploy/install.sh console

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
	$(PY) -m bench.result_cache
	$(PY) -m bench.idle

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache web/dist web/node_modules
