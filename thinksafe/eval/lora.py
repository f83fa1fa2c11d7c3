"""Which weights an evaluation samples from: a model directory/hub id, or a LoRA adapter on its base.

A trained adapter directory (PEFT's ``adapter_config.json`` + weights) is served by vLLM as a LoRA adapter
without merging when the sampler is the vLLM sampler and vLLM can load the adapter (no DoRA, no
``modules_to_save``, rank ≤ 512); otherwise it is merged into its base model in a temporary directory,
which is deleted after the run, and the run says so. The choice is recorded as ``adapter_mode``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from thinksafe.errors import UserError
from thinksafe.sampling.base import Completion, Message, SamplingConfig
from thinksafe.sampling.engine import EngineProcess
from thinksafe.sampling.vllm_sampler import VLLMSampler

AdapterMode = Literal["none", "lora", "merged"]
_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def read_adapter_config(path: str | Path) -> dict[str, Any] | None:
    """The PEFT config of an adapter directory; None when ``path`` is not one."""
    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg}:{e.lineno}: malformed adapter config ({e.msg}).") from None


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


def vllm_lora_blocker(config: dict[str, Any]) -> str | None:
    """Why vLLM cannot serve this adapter unmerged, or None when it can."""
    if config.get("peft_type", "LORA") != "LORA":
        return f"peft_type {config.get('peft_type')} is not LoRA"
    if config.get("use_dora"):
        return "DoRA adapters are not supported by vLLM"
    if config.get("modules_to_save"):
        return f"modules_to_save {config['modules_to_save']} are not supported by vLLM"
    if int(config.get("r", 8)) > _VLLM_RANKS[-1]:
        return f"rank {config.get('r')} is above vLLM's maximum {_VLLM_RANKS[-1]}"
    return None


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


class _ThroughAdapter:
    """The engine's ``LLM`` with every chat request sent through one LoRA adapter, so that the vLLM sampler's
    own request building (per-sample seeds, sampling parameters) is reused unchanged."""

    def __init__(self, llm, adapter: str):
        from vllm.lora.request import LoRARequest

        self._llm = llm
        self._request = LoRARequest("evaluated", 1, adapter)

    def chat(self, *args, **kwargs):
        return self._llm.chat(*args, lora_request=self._request, **kwargs)


def _chat_with_adapter(llm, adapter: str, *args):
    """Runs in the engine process."""
    from thinksafe.sampling.vllm_sampler import _chat

    return _chat(_ThroughAdapter(llm, adapter), *args)


class VLLMLoRASampler:
    """The vLLM sampler's engine settings, started with LoRA enabled, applying one adapter to every request."""

    def __init__(self, base: VLLMSampler, adapter: str, rank: int):
        self.base = base
        self.adapter = adapter
        self.max_lora_rank = next(r for r in _VLLM_RANKS if r >= rank)
        self._engine: EngineProcess | None = None

    def generate(
        self,
        model: str,
        conversations: list[list[Message]],
        params: SamplingConfig,
        chat_template_kwargs: dict[str, Any] | None = None,
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        if not conversations:
            return []
        if seeds is None:
            seeds = [params.seed + i for i in range(len(conversations))]
        kwargs = {
            **self.base.engine_kwargs(model),
            "enable_lora": True,
            "max_loras": 1,
            "max_lora_rank": self.max_lora_rank,
        }
        if self._engine is not None and self._engine.engine_kwargs != kwargs:
            self.close()
        if self._engine is None:
            self._engine = EngineProcess(kwargs, what="vLLM sampler (LoRA)")
        raw = self._engine.run(
            _chat_with_adapter, self.adapter, conversations, params.as_dict(), list(seeds), chat_template_kwargs
        )
        return [[Completion(t, r, k) for t, r, k in per_prompt] for per_prompt in raw]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
