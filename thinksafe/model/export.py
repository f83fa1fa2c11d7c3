"""Export a trained adapter as one standalone model directory that transformers and vLLM load unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from thinksafe.errors import UserError
from thinksafe.files import atomic_directory
from thinksafe.model.loading import load_causal_lm, load_tokenizer, resolve_dtype


def _declared_dtype(name_or_path: str):
    """The dtype a checkpoint's config declares (float32 when it declares none)."""
    import torch
    from transformers import AutoConfig

    try:
        declared = getattr(AutoConfig.from_pretrained(name_or_path), "dtype", None)
    except (OSError, ValueError):  # a .gguf base has no config.json to read
        declared = None
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else torch.float32


def export_merged(
    adapter_dir: str | Path,
    output_dir: str | Path,
    base: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Merge the LoRA adapter in ``adapter_dir`` into its base model and write model + tokenizer to ``output_dir``.

    ``adapter_dir`` is what training wrote to ``<log_dir>/adapter/``: a PEFT adapter, or a whole model (full
    fine-tuning), which is re-saved as is. The merge runs in float32 and the result is cast to ``dtype``.

    Args:
        adapter_dir: directory holding ``adapter_config.json`` + ``adapter_model.safetensors`` (or a full model).
        output_dir: where the merged model and tokenizer go: a new or empty directory. It is written under a
            temporary name and renamed when complete, so it never holds half a model. Never the adapter's or the
            base model's directory (nor one inside or around them).
        base: base model to merge into; None: the ``base_model_name_or_path`` recorded in the adapter config.
        dtype: dtype of the written weights: "auto" (the base model's own), "bfloat16", "float16", "float32".
        overwrite: replace a non-empty ``output_dir`` (the old one is removed only after the new one is in place).
    """
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not adapter_dir.is_dir():
        raise UserError(f"{adapter_dir}: no such directory; give the adapter/ directory that training wrote.")
    _check_output(output_dir, adapter_dir, "the adapter's directory", overwrite)
    adapter_config = adapter_dir / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        recorded = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        base = base or recorded
        if not base:
            raise UserError(f"{adapter_config}: it records no base_model_name_or_path; pass the base model explicitly.")
        if Path(base).exists():
            _check_output(output_dir, Path(base), "the base model's directory", overwrite)
        source = base
        model = PeftModel.from_pretrained(load_causal_lm(base, dtype="float32"), adapter_dir).merge_and_unload()
    elif (adapter_dir / "config.json").is_file():
        source = str(adapter_dir)
        model = load_causal_lm(source, dtype="float32")
    else:
        raise UserError(
            f"{adapter_dir}: neither adapter_config.json (LoRA) nor config.json (full fine-tuning) found; give the "
            "adapter/ directory that training wrote."
        )
    has_tokenizer = any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else base)
    model = model.to(_declared_dtype(source) if dtype == "auto" else resolve_dtype(dtype))
    replace = overwrite or output_dir.is_dir()  # past _check_output: an existing directory is empty or may go
    with atomic_directory(output_dir, replace=replace) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return output_dir


def _check_output(output_dir: Path, protected: Path, what: str, overwrite: bool) -> None:
    """Refuse an output that would write into (or replace, or sit inside) ``protected``, or that is in the way."""
    out, other = output_dir.resolve(), protected.resolve()
    if out == other or other in out.parents or out in other.parents:
        raise UserError(
            f"{output_dir}: the output directory is {what} ({protected}) or holds it or lies inside it; exporting "
            "there would overwrite the files it is made from. Give a new directory."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"{output_dir}: it is a file; the output must be a new (or empty) directory.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UserError(
            f"{output_dir}: the directory is not empty; nothing was written. Give a new directory, or pass "
            "--overwrite=true to replace its contents (the old directory is removed once the new one is complete)."
        )
