"""Which weights an evaluation samples from: a model directory/hub id, or a LoRA adapter on its base.

A trained adapter directory (PEFT's ``adapter_config.json`` + weights) is served by vLLM as a LoRA adapter
without merging (``VLLMSampler.set_adapter``) when the sampler is the vLLM sampler and vLLM can load the
adapter (no DoRA, no ``modules_to_save``, rank ≤ 512); otherwise it is merged into its base model in a
temporary directory, which is deleted after the run, and the run says so. The choice is recorded as ``adapter_mode``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from thinksafe.errors import UserError
from thinksafe.sampling.vllm_sampler import VLLMSampler, read_adapter_config, vllm_lora_blocker

AdapterMode = Literal["none", "lora", "merged"]


@dataclass
class EvaluatedModel:
    """What the sampler loads (``path``) and, for native LoRA, the adapter it applies on top."""

    path: str
    adapter: str | None = None
    base: str | None = None
    mode: AdapterMode = "none"
    why: str = ""
    _tmp: str | None = field(default=None, repr=False)

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def resolve_model(model: str, adapter: str | None, sampler: Any, say=print) -> EvaluatedModel:
    """Decide how to sample from ``model`` (+ ``adapter``); merges when needed. Call :meth:`cleanup` after."""
    own = read_adapter_config(model)
    if own is not None:
        if adapter is not None:
            raise UserError(
                f"--model {model} is itself an adapter directory; give its base as --model, or drop --adapter."
            )
        adapter, base = model, own.get("base_model_name_or_path")
        if not base:
            raise UserError(
                f"{model}/adapter_config.json names no base_model_name_or_path; pass --model BASE --adapter {model}."
            )
        if not Path(base).exists() and base.count("/") != 1:
            raise UserError(
                f"{model}/adapter_config.json: its base model {base!r} is not on this machine; pass the base as "
                f"--model BASE --adapter {model}."
            )
        config = own
    elif adapter is not None:
        config = read_adapter_config(adapter)
        if config is None:
            raise UserError(f"--adapter {adapter}: no adapter_config.json there; give a PEFT adapter directory.")
        base = model
    else:
        return EvaluatedModel(model)

    from thinksafe.model.export import export_merged

    blocker = (
        "the sampler is not the vLLM sampler" if not isinstance(sampler, VLLMSampler) else vllm_lora_blocker(config)
    )
    if blocker is None:
        return EvaluatedModel(base, adapter=adapter, base=base, mode="lora", why="served by vLLM as a LoRA adapter")
    tmp = tempfile.mkdtemp(prefix="thinksafe-merged-")
    say(
        f"adapter {adapter}: {blocker}, so it is merged into {base} in the temporary directory {tmp} "
        "(deleted after the run)."
    )
    try:
        export_merged(adapter, tmp, base=base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return EvaluatedModel(tmp, adapter=adapter, base=base, mode="merged", why=f"merged: {blocker}", _tmp=tmp)
