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
        with _Stage(f"loading {base} + {adapter_dir}") as stage:
            model = PeftModel.from_pretrained(load_causal_lm(base, dtype="float32"), adapter_dir)
            stage.done_line = f"loaded {base} + {adapter_dir}"
        model = _merge(model)
    elif (adapter_dir / "config.json").is_file():
        source = str(adapter_dir)
        with _Stage(f"loading {source}") as stage:
            model = load_causal_lm(source, dtype="float32")
            stage.done_line = f"loaded {source}"
    else:
        raise UserError(
            f"{adapter_dir}: neither adapter_config.json (LoRA) nor config.json (full fine-tuning) found; give the "
            "adapter/ directory that training wrote."
        )
    has_tokenizer = any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else base)
    model = model.to(_declared_dtype(source) if dtype == "auto" else resolve_dtype(dtype))
    replace = overwrite or output_dir.is_dir()  # past _check_output: an existing directory is empty or may go
    tensors = model.state_dict()
    size = sum(v.numel() * v.element_size() for v in tensors.values())
    with _Stage(f"writing {len(tensors)} tensors ({size / 2**20:,.1f} MiB) to {output_dir}") as stage:
        with atomic_directory(output_dir, replace=replace) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        stage.done_line = f"wrote {len(tensors)} tensors ({size / 2**20:,.1f} MiB) to {output_dir}"
    return output_dir


def _console():
    from rich.console import Console

    return Console(stderr=True)


class _Stage:
    """One step of the export on the console: a live spinner with the elapsed time on a terminal, and one line
    ``export: <what> in N s`` when it ends (what a log file keeps). The steps that call into a library at once
    (loading, writing) have no finer progress to show; the merge counts its layers (:func:`_merge`)."""

    def __init__(self, what: str, total: int | None = None, unit: str = ""):
        self.what, self.total, self.unit = what, total, unit
        self.done_line = what
        self.console = _console()

    def __enter__(self) -> _Stage:
        import time

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [SpinnerColumn(), TextColumn("export: {task.description}")]
        if self.total is not None:
            columns += [
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            ]
        self._progress = Progress(
            *columns, TimeElapsedColumn(), console=self.console, transient=True, disable=not self.console.is_terminal
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(self.what, total=self.total)
        self._started = time.monotonic()
        return self

    def advance(self) -> None:
        self._progress.advance(self._task)

    def __exit__(self, exc_type, *exc) -> None:
        import time

        self._progress.__exit__(exc_type, *exc)
        if exc_type is None:
            self.console.print(
                f"export: {self.done_line} in {time.monotonic() - self._started:.1f} s", highlight=False, soft_wrap=True
            )


def _merge(peft_model):
    """``merge_and_unload`` layer by layer, so the console counts the LoRA layers merged (PEFT's own bar is a
    tqdm line apart from ours): each tuner layer merges its adapter into its base weight, then ``unload`` puts
    the base layers back in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]
    with _Stage("merging LoRA layers", total=len(layers), unit="layers") as stage:
        for layer in layers:
            layer.merge()
            stage.advance()
        stage.done_line = f"merged {len(layers)}/{len(layers)} LoRA layers"
    return peft_model.unload()


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
