"""The llama.cpp that `deploy/install.sh` built runs on this CPU: where the CPU lists AMX and traps on it
(a virtual machine here did: SIGILL on the first reply, the model worker gone), the library holds no AMX
instruction. Runs the install script's own probe and check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.test_backends import package_gguf

INSTALL = Path(__file__).resolve().parents[2] / "deploy" / "install.sh"


def _shell(call: str) -> int:
    return subprocess.run(["bash", "-c", f'source "{INSTALL}" && {call}'], capture_output=True, timeout=120).returncode


def test_installed_llama_cpp_uses_no_instruction_this_cpu_traps_on() -> None:
    traps = _shell("amx_traps") == 0
    has_amx = _shell(f'llama_has_amx "{sys.prefix}"') == 0
    assert not (traps and has_amx), "llama.cpp was built with AMX on a CPU that traps on it: run make setup again"


def test_a_generation_runs_in_a_fresh_process() -> None:
    code = (
        "import sys; from llama_cpp import Llama;"
        "m = Llama(sys.argv[1], n_ctx=256, verbose=False);"
        "print(m('The capital of France is', max_tokens=4, temperature=0)['usage']['completion_tokens'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(package_gguf())], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "4", (done.returncode, done.stderr[-2000:])
