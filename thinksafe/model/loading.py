"""Load tokenizers and causal LMs from a hub id, a local directory, or a local .gguf file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinksafe.errors import UserError


def _split_gguf(name_or_path: str) -> tuple[str, dict[str, Any]]:
    p = Path(name_or_path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"model.name_or_path: no such GGUF file {p}.")
        return str(p.parent), {"gguf_file": p.name}
    return name_or_path, {}


def resolve_dtype(dtype: str, device: str = "cpu"):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return {
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
            "float32": torch.float32,
            "fp32": torch.float32,
        }[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32.") from None


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path, extra = _split_gguf(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, **extra)
    except OSError as e:
        raise UserError(
            f"model.name_or_path: cannot load a tokenizer from {name_or_path!r} ({e}). Give a local directory "
            "with tokenizer files, a .gguf file, or a hub id reachable from this machine."
        ) from None


def load_causal_lm(name_or_path: str, dtype: str = "auto", device: str = "cpu", attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    path, extra = _split_gguf(name_or_path)
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device), **extra)
    except OSError as e:
        raise UserError(
            f"model.name_or_path: cannot load a model from {name_or_path!r} ({e}). Give a local directory with "
            "config.json and weights, a .gguf file, or a hub id reachable from this machine."
        ) from None
    return model.to(device)


def hf_dir_for(name_or_path: str) -> str:
    """A path vLLM can load: hub ids and directories as they are; a .gguf file is converted once into a
    plain transformers directory (dequantised) under the user's cache, since vLLM's CPU build does not run
    GGUF kernels."""
    import hashlib
    import os

    p = Path(name_or_path)
    if p.suffix != ".gguf":
        return name_or_path
    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "thinksafe" / "gguf" / f"{p.stem}-{key}"
    done = cache / ".complete"
    if done.is_file():
        return str(cache)
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(name_or_path)
    quantized = load_causal_lm(name_or_path, dtype="float32")
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised already; the copy is plain
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    cache.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cache)
    tok.save_pretrained(cache)
    done.touch()  # written last: its existence means the conversion completed
    return str(cache)
