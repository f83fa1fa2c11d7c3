"""GRPO, the online-RL baseline the ThinkSafe paper compares against, as a LightningModule a recipe selects:

    model:
      class_path: thinksafe.rl.GRPOModule
      init_args: {name_or_path: …, adapter: …, num_generations: 8, beta: 0.04, …}

The recipe's ``data`` section is the ThinkSafe one: its prompts (harmful and benign, sent WITHOUT the steering
prefix), its sampler, its guard and its reasoning format. No self-generated set is built: ``thinksafe fit``
hands the :class:`~thinksafe.data.datamodule.SafetyDataModule` to :meth:`GRPOModule.online_data`, which replaces
it by :class:`GRPOPrompts` (batches of prompt indices).

Each training step (one micro-batch of ``data.batch_size`` prompts):

1. the CURRENT policy samples ``num_generations`` completions per prompt — with
   :class:`~thinksafe.sampling.TransformersSampler` attached to the model in training (in-process), or with
   :class:`~thinksafe.sampling.VLLMSampler` serving the current adapter, saved to ``<log_dir>/policy`` and
   hot-loaded as a LoRA request before the step (no merge, no engine restart: give it ``max_lora_rank``);
2. reward = ``format_weight`` × think-format reward + guard P(safe) (:mod:`thinksafe.rl.rewards`);
3. group-normalised advantages, clipped surrogate and β·k3-KL to the initial model (:mod:`thinksafe.rl.loss`)
   over the completion tokens, which are encoded exactly like SFT rows (:class:`thinksafe.rows.ChatEncoder`).

``trainer.accumulate_grad_batches`` micro-batches make an optimizer step (the authors' effective batch of 64
completions is 8 prompts × 8 generations). Completions are re-tokenized from the sampler's text (the
:class:`~thinksafe.sampling.base.Sampler` protocol returns text), as the SFT rows are.

Cost: :attr:`GRPOModule.cost` counts generated tokens, guard calls, trained tokens and the seconds spent
sampling and judging inside training; :class:`thinksafe.cost.CostLog` writes them to ``cost.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from thinksafe.errors import UserError
from thinksafe.files import run_dir
from thinksafe.model.adapters import Adapter
from thinksafe.model.head_loss import final_hidden, output_weight
from thinksafe.model.kl import shift_labels
from thinksafe.model.module import ThinkSafeModule
from thinksafe.rl.loss import group_advantages, grpo_loss
from thinksafe.rl.rewards import GuardOn, guard_rewards, think_format_reward
from thinksafe.rows import IGNORE_INDEX, LABELS, collate
from thinksafe.sampling.base import SamplingConfig
from thinksafe.sampling.formats import resolve_format, restore_response
from thinksafe.sampling.hf_sampler import TransformersSampler
from thinksafe.sampling.vllm_sampler import VLLMSampler


@dataclass
class Rollout:
    """Completions of a batch of prompts and their rewards (groups of ``num_generations`` adjacent)."""

    prompts: list
    samples: list[list[tuple[str, Any]]]
    """per prompt: (response with its think block, :class:`~thinksafe.sampling.base.Completion`)"""
    rewards: torch.Tensor
    format_rewards: torch.Tensor
    guard_rewards: torch.Tensor
    guard_calls: int
    sample_seconds: float
    guard_seconds: float


class GRPOPrompts(L.LightningDataModule):
    """The prompts of a :class:`~thinksafe.data.datamodule.SafetyDataModule`, served as shuffled batches of
    prompt indices (``{"prompt_index": LongTensor}``), with its sampler, guard and encoder."""

    def __init__(self, safety_data):
        super().__init__()
        from thinksafe.data.prompts import load_prompts

        if safety_data.responses is not None:
            raise UserError("GRPO samples its own responses: remove data.responses from the recipe.")
        if getattr(safety_data, "rounds", 1) > 1:
            raise UserError("GRPO samples with the current weights at every step: remove data.rounds from the recipe.")
        if safety_data.guard is None:
            raise UserError("GRPO rewards responses with data.guard: name one in the recipe (as for ThinkSafe).")
        self.source = safety_data
        self.prompts = load_prompts(safety_data.prompts)
        self.sampler = safety_data.sampler
        self.guard = safety_data.guard
        self.batch_size = safety_data.batch_size
        self.seed = safety_data.seed
        self.sampling_seed = safety_data.sampling.seed
        self.in_distribution_rows = 0  # no fixed training set whose in-distribution score means anything
        self.recipe: dict[str, Any] | None = None

    def encoder(self):
        return self.source.encoder()

    def template(self) -> tuple[str, dict[str, Any]]:
        """(reasoning format, chat-template kwargs) the prompts are sampled with."""
        src = self.source
        return resolve_format(src._model(), src.reasoning_format, self.encoder().tokenizer, src.chat_template_kwargs)

    def dataset_name(self) -> str:
        return f"GRPO online ({len(self.prompts)} prompts)"

    def label_counts(self) -> dict[str, int]:
        return {lab: sum(p.label == lab for p in self.prompts) for lab in LABELS}

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            range(len(self.prompts)),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=lambda idx: {"prompt_index": torch.tensor(idx, dtype=torch.long)},
        )


class GRPOModule(ThinkSafeModule):
    """GRPO with the thinksafe model, adapter and guard classes (the paper's online-RL baseline).

    Args:
        name_or_path: base model: hub id, local directory or .gguf file.
        adapter: what to train: ``LoRA`` (default) or ``FullFineTune`` (in-process sampling only).
        num_generations: completions per prompt (the group size G).
        beta: weight of the k3 KL to the initial model (0: no reference forward).
        epsilon: lower clip bound ε of the ratio (and the upper one unless ``epsilon_high`` is set).
        epsilon_high: upper clip bound (None: ``epsilon``).
        temperature: sampling temperature; the log-probabilities are taken at it too, as TRL does.
        top_p: nucleus sampling.
        top_k: top-k sampling (0: off).
        max_completion_length: new tokens per completion.
        guard_on: "all" (the guard scores every response, as the authors' reward function does) or "harmful"
            (benign prompts are rewarded for format only).
        format_weight: weight of the think-format reward (the authors: 1, TRL's default reward weights).
        scale_rewards: divide advantages by the group's standard deviation (TRL's default "group").
        lr: peak learning rate of AdamW (linear warmup, cosine decay).
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the optimizer steps spent in warmup.
        gradient_checkpointing: recompute decoder activations in backward.
        dtype: weight dtype at load ("auto", "bfloat16", "float16", "float32").
        attn_implementation: transformers attention backend; None: default.
        logprob_chunk_size: completion positions per chunk of the LM head (recomputed in backward, so no
            full-vocabulary logits are kept for the whole batch).
    """

    def __init__(
        self,
        name_or_path: str,
        adapter: Adapter | None = None,
        num_generations: int = 8,
        beta: float = 0.04,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        max_completion_length: int = 16384,
        guard_on: GuardOn = "all",
        format_weight: float = 1.0,
        scale_rewards: bool = True,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        gradient_checkpointing: bool = False,
        dtype: str = "auto",
        attn_implementation: str | None = None,
        logprob_chunk_size: int = 1024,
    ):
        super().__init__(
            name_or_path,
            adapter,
            kl_weight=0.0,
            lr=lr,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            gradient_checkpointing=gradient_checkpointing,
            dtype=dtype,
            attn_implementation=attn_implementation,
        )
        # under LightningCLI the saved hyperparameters are the arguments given to this class alone; the parent's
        # methods read these
        for key, value in dict(
            kl_weight=0.0, kl_mode="replace", kl_chunk_size=256, log_samples_every_n_steps=0
        ).items():
            self.hparams.setdefault(key, value)
        if num_generations < 2:
            raise UserError(f"model.num_generations must be ≥ 2 (advantages compare a group), got {num_generations}.")
        if beta < 0:
            raise UserError(f"model.beta must be ≥ 0, got {beta}.")
        if not 0 < epsilon < 1:
            raise UserError(f"model.epsilon must be in (0, 1), got {epsilon}.")
        if temperature <= 0:
            raise UserError(f"model.temperature must be > 0 (GRPO needs different samples), got {temperature}.")
        if guard_on not in ("all", "harmful"):
            raise UserError(f"model.guard_on must be all or harmful, got {guard_on!r}.")
        if max_completion_length < 1 or logprob_chunk_size < 1:
            raise UserError("model.max_completion_length and model.logprob_chunk_size must be ≥ 1.")
        self.cost: dict[str, float] = dict(
            generated_tokens=0,
            completions=0,
            generation_seconds=0.0,
            guard_calls=0,
            guard_seconds=0.0,
            trained_tokens=0,
            steps=0,
        )
        self._eot_ids: list[int] | None = None

    # ------------------------------------------------------------------------------------------------- data
    @staticmethod
    def online_data(safety_data) -> GRPOPrompts:
        """What ``thinksafe fit`` trains on instead of the recipe's data module: its prompts, no data stage."""
        return GRPOPrompts(safety_data)

    def _data(self) -> GRPOPrompts:
        dm = self.trainer.datamodule
        if not isinstance(dm, GRPOPrompts):
            raise UserError(
                "GRPOModule trains on GRPOPrompts (thinksafe fit builds it from the recipe's data "
                "section); pass GRPOModule.online_data(datamodule) to Trainer.fit."
            )
        return dm

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.device_mesh is not None:
            raise UserError("GRPOModule runs on one device per process (no FSDP/ModelParallel strategy).")
        super().configure_model()
        if self.hparams.beta > 0:
            self._reference = self.adapter.reference(self.model)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        sampler = self._data().sampler
        if isinstance(sampler, TransformersSampler):
            sampler.attach(self.hparams.name_or_path, self.model, self.tokenizer)
        elif isinstance(sampler, VLLMSampler):
            if not self._has_frozen():
                raise UserError(
                    "GRPO with VLLMSampler serves the trained LoRA adapter; FullFineTune needs "
                    "data.sampler: thinksafe.sampling.TransformersSampler."
                )
            if sampler.max_lora_rank is None:
                raise UserError(
                    "GRPO with VLLMSampler: set data.sampler.init_args.max_lora_rank (≥ the adapter's "
                    "r) so the engine starts with LoRA on and follows the adapter without restarting."
                )
        else:
            raise UserError(
                f"GRPO samples with TransformersSampler or VLLMSampler; data.sampler is {type(sampler).__name__}."
            )
        eot = self._data().encoder().end_of_turn
        self._eot_ids = self.tokenizer(eot, add_special_tokens=False)["input_ids"] if eot else []

    def on_train_end(self) -> None:
        super().on_train_end()  # writes <log_dir>/adapter
        dm = self._data()
        dm.sampler.close()
        dm.guard.close()

    # ----------------------------------------------------------------------------------------------- sample
    def _sync_policy(self, sampler) -> None:
        """Make ``sampler`` sample from the weights as they are now."""
        if isinstance(sampler, VLLMSampler):
            sampler.follow(self, run_dir(self.trainer) / "policy")

    def rollout(self, indices: list[int], round_index: int, data: GRPOPrompts | None = None) -> Rollout:
        """Sample ``num_generations`` completions of the prompts ``indices`` with the current weights and reward
        them. ``round_index`` picks the seeds (the global step in training: a prompt drawn again samples afresh;
        the same indices and round give the same draws for the same weights). ``data``: the trainer's."""
        dm, hp = data or self._data(), self.hparams
        fmt, template_kwargs = dm.template()
        prompts = [dm.prompts[i] for i in indices]
        params = SamplingConfig(
            n=hp.num_generations,
            temperature=hp.temperature,
            top_p=hp.top_p,
            top_k=hp.top_k,
            max_tokens=hp.max_completion_length,
            seed=dm.sampling_seed,
        )
        seeds = [dm.sampling_seed * 1_000_003 + round_index * 100_003 + i for i in indices]
        started = time.perf_counter()
        self._sync_policy(dm.sampler)
        completions = dm.sampler.generate(
            model=hp.name_or_path,
            conversations=[[{"role": "user", "content": p.instruction}] for p in prompts],
            params=params,
            chat_template_kwargs=template_kwargs,
            seeds=seeds,
        )
        sampled = time.perf_counter()
        samples = [[(restore_response(c.text, fmt), c) for c in comps] for comps in completions]
        flat = [(p, response, c) for p, group in zip(prompts, samples) for response, c in group]
        format_r = [think_format_reward(response) for _, response, _ in flat]
        guard_r, calls = guard_rewards(
            dm.guard,
            [p.instruction for p, _, _ in flat],
            [r for _, r, _ in flat],
            [p.harmful for p, _, _ in flat],
            hp.guard_on,
        )
        rewards = torch.tensor([g + hp.format_weight * f for g, f in zip(guard_r, format_r)])
        return Rollout(
            prompts,
            samples,
            rewards,
            torch.tensor(format_r),
            torch.tensor(guard_r),
            calls,
            sampled - started,
            time.perf_counter() - sampled,
        )

    def _encode(self, prompts, samples) -> dict[str, torch.Tensor]:
        from thinksafe.rows import EncodedRow

        encoder = self._data().encoder()
        rows = []
        for p, group in zip(prompts, samples):
            for response, completion in group:
                enc = encoder.encode(p.instruction, response)
                if enc is None:
                    raise UserError(
                        f"{p.where}: the prompt leaves no room for a completion within "
                        f"data.max_length={encoder.max_length}; raise it to prompt + "
                        "model.max_completion_length."
                    )
                ids, labels = enc
                eot = self._eot_ids
                if completion.finish_reason == "length" and eot and ids[-len(eot) :] == eot:
                    ids, labels = ids[: -len(eot)], labels[: -len(eot)]  # a cut completion never ended its turn
                rows.append(EncodedRow(ids, labels, p.label))
        return collate(rows, encoder.pad_id)

    # ------------------------------------------------------------------------------------------------- loss
    def _token_logps(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log π(target) at every position where ``targets`` is not IGNORE_INDEX (0 elsewhere), ``[B, T]``."""
        temperature, chunk = self.hparams.temperature, self.hparams.logprob_chunk_size
        positions = (targets.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(-1)
        flat_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        flat_targets = targets.reshape(-1)[positions]

        def chunk_logps(h, w, t):
            logits = F.linear(h.to(w.dtype), w).float() / temperature
            return torch.gather(logits.log_softmax(-1), 1, t.unsqueeze(1)).squeeze(1)

        parts = []
        for start in range(0, positions.numel(), chunk):
            h, t = flat_hidden[start : start + chunk], flat_targets[start : start + chunk]
            # the chunk's logits are recomputed in backward rather than kept (vocab × positions floats each)
            parts.append(
                checkpoint(chunk_logps, h, weight, t, use_reentrant=False)
                if torch.is_grad_enabled()
                else chunk_logps(h, weight, t)
            )
        out = torch.zeros(targets.numel(), dtype=torch.float32, device=hidden.device)
        out = out.index_put((positions,), torch.cat(parts) if parts else out[:0])
        return out.view_as(targets)

    def grpo_step(self, batch: dict[str, torch.Tensor], rewards: torch.Tensor):
        """The loss of encoded completions (``batch`` from :func:`thinksafe.rows.collate`, groups adjacent) with
        their rewards; returns the :class:`~thinksafe.rl.loss.GRPOLoss` and the advantages."""
        hp = self.hparams
        ids, mask = batch["input_ids"], batch["attention_mask"]
        targets = shift_labels(batch["labels"])
        completion_mask = targets != IGNORE_INDEX
        logps = self._token_logps(final_hidden(self.model, ids, mask), output_weight(self.model), targets)
        ref_logps = None
        if self._reference is not None:
            with torch.no_grad():
                ref_hidden, ref_weight = self._reference.hidden_states(ids, mask)
                ref_logps = self._token_logps(ref_hidden, ref_weight, targets)
        advantages = group_advantages(rewards.to(logps.device, torch.float32), hp.num_generations, hp.scale_rewards)
        # one update per batch of samples (TRL's num_iterations=1, the authors'): the sampling policy is this one
        result = grpo_loss(
            logps, logps.detach(), advantages, completion_mask, ref_logps, hp.beta, hp.epsilon, hp.epsilon_high
        )
        return result, advantages

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        out = self.rollout(batch["prompt_index"].tolist(), self.global_step)
        encoded = {k: v.to(self.device) for k, v in self._encode(out.prompts, out.samples).items()}
        result, _ = self.grpo_step(encoded, out.rewards)

        completions = [c for group in out.samples for _, c in group]
        lengths = torch.tensor([c.num_tokens for c in completions], dtype=torch.float32)
        self.cost["generated_tokens"] += int(lengths.sum())
        self.cost["completions"] += len(completions)
        self.cost["generation_seconds"] += out.sample_seconds
        self.cost["guard_calls"] += out.guard_calls
        self.cost["guard_seconds"] += out.guard_seconds
        self.cost["trained_tokens"] += int(encoded["attention_mask"].sum())
        harmful = torch.tensor([p.harmful for p in out.prompts]).repeat_interleave(hp.num_generations)
        values = {
            "reward": out.rewards.mean(),
            "reward_std": out.rewards.view(-1, hp.num_generations).std(1).mean(),
            "reward_format": out.format_rewards.mean(),
            "reward_guard": out.guard_rewards.mean(),
            "kl": result.kl,
            "clip_fraction": result.clip_fraction,
            "loss": result.loss.detach(),
            "completion_length": lengths.mean(),
            "truncated": torch.tensor([c.finish_reason == "length" for c in completions], dtype=torch.float32).mean(),
            "sample_seconds": torch.tensor(out.sample_seconds),
        }
        if harmful.any():
            values["reward_guard_harmful"] = out.guard_rewards[harmful].mean()
        for name, value in values.items():
            self.log(
                f"grpo/{name}",
                float(value),  # plain numbers: Lightning puts them on the module's device
                on_step=True,
                on_epoch=True,
                prog_bar=name == "reward",
                batch_size=len(completions),
            )
        if self.trainer.lr_scheduler_configs:
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], on_step=True, on_epoch=False)
        return result.loss

    # the SFT module's per-batch token metrics do not apply
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.cost["steps"] = self.global_step

    def on_train_epoch_end(self) -> None:
        pass
