"""A transformers ``generate`` sampler for machines without vLLM (slow: chosen explicitly, never a fallback)."""

from __future__ import annotations

from typing import Any

from thinksafe.sampling.base import Completion, Message, SamplingConfig


class TransformersSampler:
    """Samples with ``model.generate`` in this process.

    Args:
        batch_size: conversations per generate call (each expands to ``n`` sequences).
        device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", …
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "bfloat16", "float16", "float32".
    """

    def __init__(self, batch_size: int = 8, device: str = "auto", dtype: str = "auto"):
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self._loaded: tuple[str, Any, Any] | None = None

    def attach(self, name: str, model, tokenizer) -> None:
        """Sample from an in-memory model under ``name`` (the one being trained, for probes) instead of
        loading ``name`` from disk; :meth:`close` drops the reference."""
        self._loaded = (name, model, tokenizer)

    def _load(self, model: str):
        if self._loaded is not None and self._loaded[0] == model:
            return self._loaded[1], self._loaded[2]
        import torch

        from thinksafe.model.loading import load_causal_lm, load_tokenizer

        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        tok = load_tokenizer(model)
        lm = load_causal_lm(model, dtype=self.dtype, device=device).eval()
        self._loaded = (model, lm, tok)
        return lm, tok

    def generate(
        self,
        model: str,
        conversations: list[list[Message]],
        params: SamplingConfig,
        chat_template_kwargs: dict[str, Any] | None = None,
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        """Batches share one torch generator, seeded from the batch's first seed: unlike vLLM, samples
        depend on how conversations are batched. The model runs in eval mode and the tokenizer's padding
        side is left as they were found (an attached training model keeps training)."""
        lm, tok = self._load(model)
        was_training, side, pad = lm.training, tok.padding_side, tok.pad_token
        lm.eval()
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        try:
            return self._generate(lm, tok, conversations, params, chat_template_kwargs, seeds)
        finally:
            lm.train(was_training)
            tok.padding_side, tok.pad_token = side, pad

    def _generate(self, lm, tok, conversations, params, chat_template_kwargs, seeds) -> list[list[Completion]]:
        import torch
        from tqdm.auto import tqdm

        stop_ids = _stop_token_ids(lm, tok)
        device = next(lm.parameters()).device
        out: list[list[Completion]] = []
        for start in tqdm(range(0, len(conversations), self.batch_size), desc="sampling (transformers)", leave=False):
            batch = conversations[start : start + self.batch_size]
            torch.manual_seed(seeds[start] if seeds else params.seed + start)
            texts = [
                tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {}))
                for c in batch
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                gen = lm.generate(
                    **enc,
                    do_sample=params.temperature > 0,
                    temperature=params.temperature if params.temperature > 0 else None,
                    top_p=params.top_p if params.temperature > 0 else None,
                    top_k=params.top_k if params.temperature > 0 and params.top_k > 0 else None,
                    max_new_tokens=params.max_tokens,
                    num_return_sequences=params.n,
                    eos_token_id=stop_ids,
                    pad_token_id=tok.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for i in range(len(batch)):
                comps = []
                for j in range(params.n):
                    ids = new[i * params.n + j].tolist()
                    cut = next((k for k, t in enumerate(ids) if t in stop_ids), None)
                    kept = ids if cut is None else ids[:cut]
                    comps.append(
                        Completion(
                            tok.decode(kept, skip_special_tokens=True), "length" if cut is None else "stop", len(kept)
                        )
                    )
                out.append(comps)
        return out

    def close(self) -> None:
        self._loaded = None
        import gc

        gc.collect()


def _stop_token_ids(lm, tok) -> list[int]:
    ids = set()
    eos = lm.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return sorted(ids)
