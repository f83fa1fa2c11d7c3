"""The LightningModule: supervised fine-tuning on self-generated responses, with optional forward-KL on benign rows.

Loss of a micro-batch, with ``S`` its supervised positions (labels != -100, after the causal shift), ``S_b``
those in benign rows (``batch["harmful"]`` False), ``ce_t`` the token cross-entropy and ``kl_t`` the token
``KL(initial ‖ current)``::

    loss = ( Σ_{t∈S∖S_b} ce_t  +  kl_weight · Σ_{t∈S_b} kl_t ) / |S|          (kl_mode="replace", the default)
    loss = ( Σ_{t∈S} ce_t  +  kl_weight · Σ_{t∈S_b} kl_t ) / |S|              (kl_mode="add")

i.e. a token-level mean in which harmful rows get cross-entropy and benign rows get the forward KL to the initial
model instead of cross-entropy (``replace``: what ThinkSafe's released trainer does, ``trainers/kl_trainer.py``)
or on top of it (``add``). With ``kl_weight=0`` it is plain SFT on every row, ``kl_mode`` is not read and no
reference forward runs.

That is ``loss_average="token"`` (the default). With ``loss_average="row"`` each of the ``R`` rows first averages
its own tokens, ``S_r`` its supervised positions and ``ℓ_t`` the token term above (``ce_t``, ``kl_weight · kl_t``
or their sum)::

    loss = (1/R) Σ_r (1/|S_r|) Σ_{t∈S_r} ℓ_t                                  (loss_average="row")

How the ThinkSafe authors' trainers average (transformers 4.55 / TRL 0.21, pinned in their requirements.txt): the
plain SFT runs go through ``Trainer``'s ``num_items_in_batch`` path (the summed cross-entropy of the accumulated
micro-batches over their supervised-token count, gathered across GPUs): a token mean over the optimizer step,
``token``. Their KL trainer returns each micro-batch's own mean (one row each at their per-device batch 1) and
ignores ``num_items_in_batch``: rows weighted equally, ``row``.

A batch may carry ``loss_scale`` and ``row_scale`` (:mod:`thinksafe.data.batching`): the returned loss is then
multiplied by the one of its ``loss_average``, so that token-budget micro-batches of different sizes add up to the
token (row) mean of the whole optimizer step. Logged values stay the micro-batch's own means; micro-batches with
``loss_scale`` 0 (fillers) are not logged.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from thinksafe.distributed import destroy_process_group_at_exit
from thinksafe.errors import UserError
from thinksafe.files import run_dir
from thinksafe.model.adapters import Adapter, LoRA, Reference
from thinksafe.model.head_loss import final_hidden, head_loss, output_weight
from thinksafe.model.kl import shift_labels
from thinksafe.model.training_metrics import TrainingMetrics
from thinksafe.rows import IGNORE_INDEX, LABELS


def shard_decoder_layers(model: torch.nn.Module, mesh) -> None:
    """FSDP2: ``fully_shard`` each decoder layer, then the root (embeddings, norm and a tied LM head shard with
    the root; FSDP1 with a layer wrap policy crashes on tied embeddings).

    FSDP2 all-gathers one dtype per group, and trainable weights stay float32 beside a bf16 frozen base
    (:func:`trainable_modules`): those modules (the LoRA A/B matrices) are sharded first, each as its own float32
    group, so the layer's group holds the frozen weights only."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_classes = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise UserError(
            f"cannot shard {type(base).__name__}: it names no decoder-layer class (_no_split_modules). Use the "
            "single-device or DDP strategy for this model."
        )
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    if frozen:  # with nothing frozen (FullFineTune) every group is float32 already
        for module in trainable_modules(model):
            fully_shard(module, mesh=mesh)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def trainable_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose own parameters all train (LoRA's A/B linears; every module under FullFineTune)."""
    out = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and all(p.requires_grad for p in own):
            out.append(module)
    return out


def keep_master_weights(model: torch.nn.Module) -> None:
    """Trainable parameters back to float32 (in place: optimizers and DDP buckets keep pointing at them). AdamW
    at lr 1e-5 on bfloat16 weights rounds most updates away (spacing ~1e-4 near LoRA-A's 0.03)."""
    for module in trainable_modules(model):
        if any(p.dtype != torch.float32 for p in module.parameters(recurse=False)):
            module.to(torch.float32)


def _float_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().cpu().clone() for name, b in model.named_buffers() if b.is_floating_point()}


def _restore_buffer_dtypes(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back float buffers that a whole-module cast changed. ``bf16-true`` casts every buffer, and a rotary
    ``inv_freq`` rounded to bfloat16 scrambles positions in long sequences (vLLM keeps it in float32)."""
    for name, original in saved.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        current = getattr(owner, attr)
        if current.dtype != original.dtype:
            setattr(owner, attr, original.to(current.device))


class ThinkSafeModule(LightningModule):
    """Fine-tunes a causal LM on (prompt, response) rows encoded by :class:`thinksafe.rows.ChatEncoder`.

    Batches come from :func:`thinksafe.rows.collate`. The model is built in :meth:`configure_model` (so
    strategies can shard it) and exposed as ``self.model`` (a transformers/PEFT model) with ``self.tokenizer``.
    At the end of fit, rank 0 writes the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) or,
    for :class:`~thinksafe.model.adapters.FullFineTune`, the whole model, plus the tokenizer, to
    ``<trainer.log_dir>/adapter/``.

    Args:
        name_or_path: base model: hub id, local directory or .gguf file.
        adapter: what to train: ``LoRA`` (default: r=32, alpha=16, dropout=0.05) or ``FullFineTune``.
        kl_weight: weight of the forward KL to the initial model on benign rows (0: plain SFT).
        kl_chunk_size: supervised positions per chunk of the LM head in the loss (bounds the full-vocabulary
            memory of the cross-entropy and KL: no more than one chunk of logits is alive at a time; 256 positions
            of Qwen3's 151,936-token vocabulary are 156 MB per float32 copy, 3 of them at most).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (on every trainable weight).
        warmup_ratio: share of the optimizer steps spent in linear warmup before the cosine decay to 0.
        gradient_checkpointing: recompute decoder activations in backward (less memory, 30–150% slower). "auto":
            only when the worst-case micro-batch of the training set (``data.max_tokens_per_batch``, else
            ``data.batch_size`` copies of the longest row) does not fit in memory without it — measured with one
            real training step when fit starts, and logged (:func:`thinksafe.model.memory.choose_gradient_checkpointing`).
        dtype: weight dtype at load: "auto" (bf16 on CUDA, fp32 on CPU), "bfloat16", "float16", "float32".
        attn_implementation: transformers attention backend ("sdpa", "flash_attention_2", "eager"); None: default.
        log_samples_every_n_steps: every N optimizer steps, write one decoded row (prompt, target and the
            model's teacher-forced argmax) to TensorBoard as text; 0: never.
        kl_mode: with ``kl_weight > 0``, what benign rows train on: "replace" (the KL term alone, as ThinkSafe's
            released trainer does) or "add" (cross-entropy plus the KL term).
        loss_average: how an optimizer step's loss averages its tokens: "token" (every supervised token of the
            step weighs the same: the ThinkSafe authors' plain SFT runs) or "row" (each row's own token mean, rows
            weighted equally: the authors' KL trainer). See the module docstring.
    """

    def __init__(
        self,
        name_or_path: str,
        adapter: Adapter | None = None,
        kl_weight: float = 0.0,
        kl_chunk_size: int = 256,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        gradient_checkpointing: bool | Literal["auto"] = False,
        dtype: str = "auto",
        attn_implementation: str | None = None,
        log_samples_every_n_steps: int = 0,
        kl_mode: Literal["replace", "add"] = "replace",
        loss_average: Literal["token", "row"] = "token",
    ):
        super().__init__()
        if isinstance(adapter, dict):  # from a checkpoint's hyperparameters (see below)
            adapter = Adapter.from_config(adapter)
        adapter = adapter if adapter is not None else LoRA()
        if kl_weight < 0:
            raise UserError(f"model.kl_weight must be ≥ 0, got {kl_weight}.")
        if kl_mode not in ("replace", "add"):
            raise UserError(f"model.kl_mode must be replace or add, got {kl_mode!r}.")
        if loss_average not in ("token", "row"):
            raise UserError(f"model.loss_average must be token or row, got {loss_average!r}.")
        if not 0 <= warmup_ratio < 1:
            raise UserError(f"model.warmup_ratio must be in [0, 1), got {warmup_ratio}.")
        if lr <= 0:
            raise UserError(f"model.lr must be > 0, got {lr}.")
        if gradient_checkpointing not in (True, False, "auto"):
            raise UserError(
                f"model.gradient_checkpointing must be true, false or auto, got {gradient_checkpointing!r}."
            )
        if log_samples_every_n_steps < 0:
            raise UserError(f"model.log_samples_every_n_steps must be ≥ 0, got {log_samples_every_n_steps}.")
        # the adapter is stored as plain data: Lightning reads checkpoints back with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["adapter"])
        self.hparams["adapter"] = adapter.as_config()
        self.adapter = adapter
        if kl_chunk_size < 1:
            raise UserError(f"model.kl_chunk_size must be ≥ 1, got {kl_chunk_size}.")
        self.train_metrics = TrainingMetrics()
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self._reference: Reference | None = None
        self._loaded_buffers: dict[str, torch.Tensor] = {}
        self._compute_dtype: torch.dtype | None = None
        self._batch_started = 0.0
        self._batch_sums: torch.Tensor | None = None
        self._last_sample_step = -1
        # LoRA checkpoints hold the trainable weights only (see on_save_checkpoint); on_load_checkpoint checks keys
        self.strict_loading = False

    # ----------------------------------------------------------------------------------------------- model
    def _target_device(self) -> torch.device:
        if self._trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from thinksafe.model.loading import load_causal_lm, load_tokenizer

        hp = self.hparams
        target = self._target_device()
        dtype = hp.dtype if hp.dtype != "auto" else ("bfloat16" if target.type == "cuda" else "float32")
        mesh = self.device_mesh
        if mesh is not None and "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
            raise UserError(
                "trainer.strategy: thinksafe shards with FSDP2 only; give ModelParallelStrategy "
                "data_parallel_size=<number of devices> and tensor_parallel_size=1."
            )
        self.tokenizer = load_tokenizer(hp.name_or_path)
        # sharded models load on CPU: fully_shard moves each rank's shard to its device
        model = load_causal_lm(
            hp.name_or_path,
            dtype=dtype,
            device="cpu" if mesh is not None else str(target),
            attn_implementation=hp.attn_implementation,
        )
        model.train()  # from_pretrained returns eval mode, which would silence LoRA dropout
        self._loaded_buffers = _float_buffers(model)
        if hp.gradient_checkpointing is True:  # "auto" is decided when fit starts, on the device
            # non-reentrant: works with frozen inputs (LoRA) and under no_grad (the reference forward)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = self.adapter.apply(model)
        # float32 master weights for what trains, computed in the loaded half dtype under autocast (see to())
        self._compute_dtype = model.dtype if model.dtype in (torch.bfloat16, torch.float16) else None
        keep_master_weights(model)
        reference = self.adapter.reference(model) if hp.kl_weight > 0 else None
        if mesh is not None:
            dp_mesh = mesh["data_parallel"] if "data_parallel" in mesh.mesh_dim_names else mesh
            for m in [model, *(reference.frozen_modules() if reference else [])]:
                shard_decoder_layers(m, dp_mesh)
        self.model = model
        self._reference = reference

    def to(self, *args: Any, **kwargs: Any) -> ThinkSafeModule:
        """Casts (``precision: bf16-true`` casts the whole module before the optimizer and DDP see it) set the
        compute dtype only: trainable weights, hence their gradients and AdamW state, stay float32, and the
        forward runs under autocast to the cast's dtype."""
        device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
        if dtype is None or not dtype.is_floating_point or self.model is None:
            return super().to(*args, **kwargs)
        if device is not None:
            super().to(device=device)
        # cast module by module, leaving the trainable ones out: never a round trip through bfloat16, and no
        # swap of the parameters FSDP2 and the optimizer hold
        trainable = {id(m) for m in trainable_modules(self.model)}
        for module in self.model.modules():
            if id(module) not in trainable:
                module._apply(lambda t: t.to(dtype) if t.is_floating_point() else t, recurse=False)
        for child in self.children():  # the metrics
            if child is not self.model:
                child.to(dtype)
        self._dtype = dtype  # what LightningModule.to records
        self._compute_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else None
        return self

    def _autocast(self):
        from contextlib import nullcontext

        if self._compute_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self._compute_dtype)

    def setup(self, stage: str) -> None:
        # every rank resolves the run directory here, together: later rank-0-only callers must not broadcast
        run_dir(self.trainer)
        destroy_process_group_at_exit()

    def on_fit_start(self) -> None:
        # after the precision plugin's cast (bf16-true), before the first step
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        _restore_buffer_dtypes(base, self._loaded_buffers)
        if self._reference is not None:
            self._place_reference()
        if self.hparams.gradient_checkpointing == "auto":
            self._choose_checkpointing()

    def _place_reference(self) -> None:
        from torch.distributed.tensor import DTensor

        dtype = self._compute_dtype or next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        for m in self._reference.frozen_modules():
            if not any(isinstance(p, DTensor) for p in m.parameters()):
                m.to(device=self.device, dtype=dtype)
            _restore_buffer_dtypes(m, self._loaded_buffers)

    def _choose_checkpointing(self) -> None:
        """``gradient_checkpointing: auto``: probe the worst-case micro-batch of the training set on every rank."""
        from lightning.pytorch.utilities import rank_zero_info

        from thinksafe.model.memory import choose_gradient_checkpointing

        dm = getattr(self.trainer, "datamodule", None)
        if not hasattr(dm, "memory_probe"):
            rank_zero_info(
                "thinksafe: gradient_checkpointing=auto needs the SafetyDataModule's rows to measure; "
                "checkpointing stays off."
            )
            return
        budget, probe = dm.memory_probe()
        probe = {k: v.to(self.device) for k, v in probe.items()}
        strategy = self.trainer.strategy
        choice = choose_gradient_checkpointing(
            self,
            probe,
            budget,
            step=lambda batch: self._loss(batch)[0],
            agree=lambda fits: bool(strategy.reduce_boolean_decision(fits, all=True)),
        )
        rank_zero_info(f"thinksafe: {choice.describe()}")
        for logger in self.loggers:
            logger.log_metrics(
                {"train/gradient_checkpointing": float(choice.enabled), "train/max_tokens_per_batch": float(budget)},
                step=0,
            )

    # ------------------------------------------------------------------------------------------------ loss
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        scaled, hidden = self._loss(batch)
        if self._trainer is not None and self.trainer.lr_scheduler_configs:
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], on_step=True, on_epoch=False)
        self._log_sample(batch, hidden)
        return scaled

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            return self._autocast_loss(batch)

    def _autocast_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to back-propagate, the decoder's final hidden states); keeps the step's metric sums for
        ``on_train_batch_end``. No full logits are made: the LM head runs at supervised positions only, in
        chunks (:mod:`thinksafe.model.head_loss`), for the model and for the reference alike."""
        hp = self.hparams
        input_ids, attention_mask, harmful = batch["input_ids"], batch["attention_mask"], batch["harmful"]
        hidden = final_hidden(self.model, input_ids, attention_mask)
        weight = output_weight(self.model)
        targets = shift_labels(batch["labels"])
        length = targets.shape[1]
        positions = (targets.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(-1)  # row-major
        n = positions.numel()
        if n == 0:
            raise ValueError("a training batch holds no supervised token; ChatEncoder drops such rows")
        rows = positions // length  # batch row of each supervised position
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        token_targets = targets.reshape(-1)[positions]
        harmful_token = harmful[rows]
        replace = hp.kl_weight > 0 and hp.kl_mode == "replace"
        # each supervised token's share of the micro-batch's loss: 1/n (token mean) or 1/(|S_r| · rows) (row mean)
        if hp.get("loss_average", "token") == "row":
            row_tokens = torch.bincount(rows, minlength=harmful.numel())
            share = 1.0 / (row_tokens[rows].float() * (row_tokens > 0).sum())  # no host sync
            scale_key = "row_scale"
        else:
            share = torch.full((n,), 1.0 / n, device=positions.device)
            scale_key = "loss_scale"
        ce_weight = share * harmful_token.float() if replace else share

        ce = torch.empty(n, dtype=torch.float32, device=positions.device)
        kl_sum, n_kl = None, 0
        if hp.kl_weight > 0:
            benign = (~harmful).nonzero().squeeze(-1)
            on_kl = (~harmful_token).nonzero().squeeze(-1)  # the positions in benign rows
            # under FSDP2 every forward all-gathers across ranks, so a rank without benign rows still runs one
            if benign.numel() or self.device_mesh is not None:
                ref_rows = benign if benign.numel() else benign.new_zeros(1)
                ref_hidden, ref_weight = self._reference.hidden_states(input_ids[ref_rows], attention_mask[ref_rows])
                slot = torch.full((harmful.numel(),), -1, dtype=torch.long, device=positions.device)
                slot[ref_rows] = torch.arange(ref_rows.numel(), device=positions.device)
                kl_positions = positions[on_kl]
                ref_positions = slot[rows[on_kl]] * length + kl_positions % length
                loss_kl, ce[on_kl], kl = head_loss(
                    flat_hidden.index_select(0, kl_positions),
                    weight,
                    token_targets[on_kl],
                    ce_weight[on_kl],
                    ref_hidden.reshape(-1, ref_hidden.shape[-1]).index_select(0, ref_positions),
                    ref_weight,
                    hp.kl_weight * share[on_kl],
                    hp.kl_chunk_size,
                )
                del ref_hidden
                kl_sum, n_kl = kl.sum(), kl.numel()
            plain = harmful_token.nonzero().squeeze(-1)
        else:
            plain = torch.arange(n, device=positions.device)
        loss_plain, ce[plain], _ = head_loss(
            flat_hidden.index_select(0, positions[plain]),
            weight,
            token_targets[plain],
            ce_weight[plain],
            chunk_size=hp.kl_chunk_size,
        )
        loss = loss_plain if kl_sum is None else loss_plain + loss_kl
        scaled = loss * batch[scale_key] if scale_key in batch else loss

        label_of_token = batch["label_index"][rows]
        self._batch_sums = self.train_metrics.pack(
            loss,
            ce.sum(),
            n,
            kl_sum,
            n_kl,
            # explicit dtypes: under bf16-true precision the default dtype is bfloat16
            label_ce_sum=torch.zeros(len(LABELS), dtype=ce.dtype, device=ce.device).index_add_(
                0, label_of_token, ce.detach()
            ),
            label_tokens=torch.bincount(label_of_token, minlength=len(LABELS)),
            processed_tokens=attention_mask.sum(),
        )
        return scaled, hidden

    # --------------------------------------------------------------------------------------------- logging
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # measured here, after backward and the optimizer step; step values are this rank's own
        seconds = time.perf_counter() - self._batch_started
        if "loss_scale" in batch and float(batch["loss_scale"]) == 0:
            return  # a filler that only keeps ranks in step
        self.train_metrics.update(self._batch_sums, seconds)
        for name, value in self.train_metrics.summarize(self._batch_sums.cpu(), seconds).items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name == "loss")

    def on_train_epoch_end(self) -> None:
        # compute() reduces the state over ranks: every rank gets (and logs) the same values; sync_dist then
        # averages equal numbers, and keeps Lightning from warning that epoch values are not synced
        values = self.train_metrics.compute()
        self.train_metrics.reset()
        for name, value in values.items():
            self.log(f"train/{name}_epoch", value, on_step=False, on_epoch=True, sync_dist=True)

    def _log_sample(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> None:
        every = self.hparams.log_samples_every_n_steps
        step = self.global_step
        if not every or step % every or step == self._last_sample_step or self._trainer is None:
            return
        self._last_sample_step = step
        experiment = getattr(self.logger, "experiment", None)
        if not self.trainer.is_global_zero or not hasattr(experiment, "add_text"):
            return
        ids, mask, labels = batch["input_ids"][0], batch["attention_mask"][0].bool(), batch["labels"][0]
        supervised = (labels != IGNORE_INDEX) & mask
        positions = supervised.nonzero().squeeze(-1)
        # the LM head at row 0's supervised positions only, a chunk at a time: no full-vocabulary logits
        weight, chunk = output_weight(self.model).detach(), self.hparams.kl_chunk_size
        with torch.no_grad():
            before = hidden[0].detach().index_select(0, (positions - 1).clamp_min(0))
            before = before.to(weight.dtype)
            predicted = torch.cat(
                [F.linear(before[i : i + chunk], weight).argmax(-1) for i in range(0, before.shape[0], chunk)]
                or [positions[:0]]
            )

        def block(token_ids: torch.Tensor) -> str:
            text = self.tokenizer.decode(token_ids.tolist(), skip_special_tokens=False)
            return "\n".join("    " + line for line in text.splitlines())

        text = (
            f"**label**: {LABELS[int(batch['label_index'][0])]}\n\n**prompt**\n\n{block(ids[mask & ~supervised])}\n\n"
            f"**target**\n\n{block(ids[supervised])}\n\n**teacher-forced argmax**\n\n{block(predicted)}"
        )
        experiment.add_text("train/sample", text, global_step=step)

    # ---------------------------------------------------------------------------- TensorBoard (E9, issue #14)
    def configure_callbacks(self) -> list:
        from lightning.pytorch.callbacks import LearningRateMonitor

        # LearningRateMonitor refuses a trainer without a logger
        return [LearningRateMonitor(logging_interval="step")] if self._trainer is not None and self.loggers else []

    def on_before_optimizer_step(self, optimizer) -> None:
        from lightning.pytorch.utilities import grad_norm

        # once per optimizer step, on the accumulated (unscaled) gradients
        if self.device_mesh is not None:  # FSDP2's DTensor gradients: grad_norm stacks per-rank local norms
            from torch.distributed.tensor import DTensor

            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            total = torch.nn.utils.get_total_norm(grads) if grads else None
            total = total.full_tensor() if isinstance(total, DTensor) else total
        else:
            total = grad_norm(self.model, norm_type=2).get("grad_2.0_norm_total")
        if total is not None:
            self.log("train/grad_norm", total, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_cosine_schedule_with_warmup

        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserError("model.adapter left no trainable parameter.")
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        # warm-up steps rounded up, as transformers' Trainer does for the authors' warmup_ratio (get_warmup_steps)
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------ checkpoints/export
    def _trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def _has_frozen(self) -> bool:
        return any(not p.requires_grad for p in self.model.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a LoRA checkpoint needs the adapter only: the frozen base is reloaded from name_or_path. Sharded
        # (ModelParallel) checkpoints stay whole: torch.distributed.checkpoint loads every key it is asked for.
        if self.device_mesh is None and self._has_frozen():
            keep = self._trainable_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("state_dict")
        if saved is None:  # sharded checkpoint: the strategy loads the weights itself
            return
        expected = self._trainable_keys() if self._has_frozen() else set(self.state_dict())
        missing = sorted(expected - saved.keys())
        unexpected = sorted(saved.keys() - set(self.state_dict()))
        if missing or unexpected:
            raise UserError(
                f"the checkpoint does not match this model/adapter (missing {missing[:3]}…, unexpected "
                f"{unexpected[:3]}…). Resume with the same model.name_or_path and model.adapter it was made with."
            )

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """What :meth:`save_trained` writes: the trainable weights (LoRA) or every weight (full fine-tuning),
        gathered whole. Collective under ModelParallelStrategy: call it on every rank; only global rank 0 gets
        the tensors (moved to CPU)."""
        from torch.distributed.tensor import DTensor

        keep_all = not self._has_frozen()
        trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
        rank0 = self._trainer is None or self.trainer.is_global_zero
        out = {}
        for name, value in self.model.state_dict().items():
            if keep_all or name in trainable:
                full = value.full_tensor() if isinstance(value, DTensor) else value
                if rank0:
                    out[name] = full.detach().cpu()
        return out

    def save_trained(self, directory: str | Path) -> Path:
        """Write the adapter (or full model) and the tokenizer to ``directory`` from global rank 0; every rank must
        call it (the weights are gathered across ranks first)."""
        directory = Path(directory)
        state = self.trained_state_dict()
        if self._trainer is None or self.trainer.is_global_zero:
            from thinksafe.files import atomic_directory
            from thinksafe.model.model_card import write_model_card

            # written whole under a temporary name, then renamed: a kill mid-save leaves the old adapter or none
            with atomic_directory(directory, replace=True) as tmp:
                self.model.save_pretrained(tmp, state_dict=state)
                self.tokenizer.save_pretrained(tmp)
                write_model_card(tmp, self)  # portable base_model_name_or_path and a model card (E9)
        if self._trainer is not None:
            self.trainer.strategy.barrier("thinksafe-save-adapter")
        return directory

    def on_train_end(self) -> None:
        self.save_trained(run_dir(self.trainer) / "adapter")
