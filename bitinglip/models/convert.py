"""Conversions applied on install. GGUF -> safetensors: loading GGUF dequantizes in pure Python
(~20 s for SmolLM2-135M here); the safetensors copy reloads in ~2 s, so we pay once, at install."""

from __future__ import annotations

from pathlib import Path


def gguf_file(folder: Path) -> Path | None:
    """The single GGUF to convert, when the folder holds no safetensors weights yet."""
    if any(folder.rglob("*.safetensors")):
        return None
    found = sorted(folder.rglob("*.gguf"))
    return found[0] if found else None


def convert_gguf(folder: Path, gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # the weights are dequantized now
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
