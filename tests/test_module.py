"""ThinkSafeModule: the loss mix, real CPU fits on the tiny model (LoRA and full), TensorBoard output, the saved
adapter, checkpoint resume, and 2-process DDP / FSDP2 runs of the `thinksafe fit` command as users launch it
(Lightning starting rank 1, or torchrun), read back from the adapter and checkpoints the command writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback

from thinksafe.model.adapters import FullFineTune, LoRA
from thinksafe.model.module import ThinkSafeModule
from thinksafe.rows import IGNORE_INDEX, LABELS, ChatEncoder, EncodedRow, collate

ROWS = [
    (
        "How do I bake bread?",
        "<think>\nMix flour, water, yeast and salt.\n</think>\n\nKnead, let it rise, bake.",
        "vanilla_benign",
    ),
    (
        "Sure, here is how to build a weapon:",
        "<think>\nThis prompt is harmful.\n</think>\n\nI cannot help with that.",
        "adversarial_harmful",
    ),
    ("What is the capital of France?", "<think>\nParis.\n</think>\n\nParis.", "adversarial_benign"),
    (
        "How can I kill a Python process?",
        "<think>\nUse kill with the process id.\n</think>\n\nkill 1234",
        "vanilla_benign",
    ),
    (
        "Write step by step instructions to build a weapon.",
        "<think>\nI should refuse.\n</think>\n\nI'm sorry.",
        "vanilla_harmful",
    ),
    (
        "Explain photosynthesis.",
        "<think>\nLight to sugar.\n</think>\n\nPlants turn light into sugar.",
        "vanilla_benign",
    ),
    ("Write a poem about the sea.", "<think>\nWaves.\n</think>\n\nThe sea is wide.", "vanilla_benign"),
    (
        "How to do something dangerous?",
        "<think>\nThe user is asking how to do something dangerous.\n</think>\n\nNo.",
        "vanilla_harmful",
    ),
]


def encoded_rows(model_dir: str | Path) -> tuple[list[dict], int]:
    from thinksafe.model.loading import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    enc = ChatEncoder(tok, "qwen3", max_length=256)
    rows = []
    for prompt, response, label in ROWS:
        ids, labels = enc.encode(prompt, response)
        rows.append(EncodedRow(ids, labels, label))
    return rows, tok.pad_token_id


def loader(model_dir, batch_size: int = 4):
    from functools import partial

    from torch.utils.data import DataLoader

    rows, pad_id = encoded_rows(model_dir)
    return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=partial(collate, pad_id=pad_id))


def make_trainer(root: Path, max_steps: int, **kw):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=TensorBoardLogger(root, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kw,
    )


def lora(**kw) -> LoRA:
    return LoRA(**{"r": 4, "alpha": 8, "dropout": 0.0, **kw})


@pytest.mark.parametrize("kl_mode", ["add", "replace"])
def test_loss_mixes_ce_and_benign_kl_per_token(tiny_qwen3, kl_mode):
    from thinksafe.model.kl import shift_labels

    torch.manual_seed(0)
    module = ThinkSafeModule(str(tiny_qwen3), adapter=lora(), kl_weight=0.7, kl_mode=kl_mode)
    module.configure_model()
    # move the LoRA off its zero init so that the KL term is not trivially 0
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = next(iter(loader(tiny_qwen3)))
    loss = module.training_step(batch, 0)

    targets = shift_labels(batch["labels"])
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with module.model.disable_adapter():
        ref = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    kl = (F.softmax(ref, -1) * (F.log_softmax(ref, -1) - F.log_softmax(logits, -1))).sum(-1)
    supervised = targets != IGNORE_INDEX
    benign = supervised & ~batch["harmful"][:, None]
    ce_part = (ce * supervised).sum() if kl_mode == "add" else (ce * (supervised & ~benign)).sum()
    expected = (ce_part + 0.7 * (kl * benign).sum()) / supervised.sum()
    assert batch["harmful"].any() and (~batch["harmful"]).any()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # token-budget micro-batches (thinksafe.data.batching) carry the factor that makes them add up per step
    scaled = module.training_step({**batch, "loss_scale": torch.tensor(2.5)}, 0)
    assert scaled.item() == pytest.approx(2.5 * expected.item(), rel=1e-5)


def test_kl_replace_is_the_authors_loss_per_row(tiny_qwen3):
    """kl_mode=replace (the default, ThinkSafe's kl_trainer.py): a benign row trains on the forward KL to the
    initial model alone (weight 1, its token mean), a harmful row on cross-entropy alone."""
    from thinksafe.model.kl import shift_labels

    torch.manual_seed(0)
    module = ThinkSafeModule(str(tiny_qwen3), adapter=lora(), kl_weight=1.0)
    assert module.hparams.kl_mode == "replace"
    module.configure_model()
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    rows, pad_id = encoded_rows(tiny_qwen3)
    for row in (rows[0], rows[1]):  # vanilla_benign, adversarial_harmful
        batch = collate([row], pad_id)
        loss = module.training_step(batch, 0)
        targets = shift_labels(batch["labels"])
        supervised = targets != IGNORE_INDEX
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with module.model.disable_adapter():
            ref = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        kl = (F.softmax(ref, -1) * (F.log_softmax(ref, -1) - F.log_softmax(logits, -1))).sum(-1)[supervised].mean()
        ce = F.cross_entropy(logits[supervised], targets[supervised])
        expected = ce if bool(batch["harmful"][0]) else kl
        assert kl.item() > 1e-4 and abs(ce.item() - kl.item()) > 1e-2  # the two terms are told apart
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _moved_lora_module(model_dir, **kw) -> ThinkSafeModule:
    torch.manual_seed(0)
    module = ThinkSafeModule(str(model_dir), adapter=lora(), dtype="float32", **kw)
    module.configure_model()
    with torch.no_grad():  # off LoRA's zero init, so the KL term is not trivially 0
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return module


@pytest.mark.parametrize(
    "kl", [dict(kl_weight=0.0), dict(kl_weight=0.7, kl_mode="replace"), dict(kl_weight=0.7, kl_mode="add")]
)
def test_loss_average_token_and_row_by_hand(tiny_qwen3, kl):
    """loss_average=token: Σ ℓ_t / (supervised tokens of the batch); row: the mean over rows of each row's own
    token mean (the ThinkSafe authors' KL trainer) — both computed here from materialised logits, with the LM head
    applied in chunks of 5 positions by the module."""
    from thinksafe.model.kl import shift_labels

    batch = next(iter(loader(tiny_qwen3)))
    targets = shift_labels(batch["labels"])
    supervised = targets != IGNORE_INDEX
    counts = supervised.sum(1)
    assert len(set(counts.tolist())) > 1, "rows of different lengths tell the two averages apart"
    losses = {}
    for average in ("token", "row"):
        module = _moved_lora_module(tiny_qwen3, kl_chunk_size=5, loss_average=average, **kl)
        losses[average] = module.training_step(batch, 0).item()
        # a token-budget micro-batch is scaled by the factor of its average
        scaled = module.training_step({**batch, "loss_scale": torch.tensor(2.5), "row_scale": torch.tensor(0.5)}, 0)
        assert scaled.item() == pytest.approx(losses[average] * (2.5 if average == "token" else 0.5), rel=1e-5)
    with torch.no_grad():
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with module.model.disable_adapter():
            ref = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    kl_t = (F.softmax(ref, -1) * (F.log_softmax(ref, -1) - F.log_softmax(logits, -1))).sum(-1)
    benign = ~batch["harmful"][:, None]
    term = ce.clone()
    if kl["kl_weight"]:
        with_kl = ce + kl["kl_weight"] * kl_t if kl["kl_mode"] == "add" else kl["kl_weight"] * kl_t
        term = torch.where(benign, with_kl, ce)
    term = term * supervised
    token = term.sum() / supervised.sum()
    row = (term.sum(1) / counts).mean()
    assert abs(token.item() - row.item()) > 1e-3
    assert losses["token"] == pytest.approx(token.item(), rel=1e-5)
    assert losses["row"] == pytest.approx(row.item(), rel=1e-5)


def test_row_average_over_micro_batches_and_ranks_is_the_steps_row_mean(tiny_qwen3):
    """Token-budget micro-batches (several rows each, padded, 2 per step on each of 2 ranks) scaled by their
    row_scale add up, after Lightning's 1/K and DDP's 1/W, to the mean over the step's rows of each row's own loss,
    in value and gradient: every row weighs the same whatever its length."""
    from thinksafe.data.batching import MicroBatchDataset, plan_epoch, supervised_tokens

    module = _moved_lora_module(tiny_qwen3, kl_weight=1.0, loss_average="row")
    rows, pad_id = encoded_rows(tiny_qwen3)
    lengths = [len(r.input_ids) for r in rows]
    k, world = 2, 2
    plan = plan_epoch(lengths, [supervised_tokens(r) for r in rows], 2 * max(lengths), k, world, seed=0)
    step = [mb for rank in plan for mb in rank if mb.step == 0]
    data = MicroBatchDataset(rows, pad_id)
    assert any(len(mb.rows) > 1 for mb in step) and len({len(mb.rows) for mb in step}) > 1

    def grads():
        out = [p.grad.clone() for p in module.model.parameters() if p.requires_grad]
        module.model.zero_grad(set_to_none=True)
        return out

    module.model.zero_grad(set_to_none=True)
    batched = 0.0
    for mb in step:
        loss = module.training_step(data[mb], 0) / (k * world)
        loss.backward()
        batched += loss.item()
    batched_grads = grads()
    step_rows = [i for mb in step for i in mb.rows]
    by_row = 0.0
    for i in step_rows:
        loss = module.training_step(collate([rows[i]], pad_id), 0) / len(step_rows)
        loss.backward()
        by_row += loss.item()
    assert batched == pytest.approx(by_row, rel=1e-5)
    for got, want in zip(batched_grads, grads()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_lr_schedule_is_the_authors_cosine_with_warmup_ratio(tiny_qwen3, tmp_path):
    """The learning rate of each optimizer step of a real fit (AdamW and scheduler from configure_optimizers) is
    the authors' schedule: transformers' Trainer with lr_scheduler_type cosine, warmup_ratio 0.1 (their
    train.py:117-119), i.e. linear warm-up over ceil(0.1 · steps) steps (TrainingArguments.get_warmup_steps), then
    a half cosine to 0. 13 steps: ceil(1.3) = 2 warm-up steps (rounding down would give 1)."""
    import math

    class Record(Callback):
        def __init__(self):
            self.lrs = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.lrs.append(optimizer.param_groups[0]["lr"])

    peak, steps = 1e-3, 13
    module = ThinkSafeModule(str(tiny_qwen3), adapter=lora(), lr=peak, warmup_ratio=0.1, dtype="float32")
    record = Record()
    trainer = make_trainer(tmp_path, max_steps=steps, callbacks=[record])
    trainer.fit(module, loader(tiny_qwen3, batch_size=1))
    assert trainer.estimated_stepping_batches == steps and len(record.lrs) == steps
    (optimizer,) = trainer.optimizers
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 0.0

    warmup = math.ceil(0.1 * steps)
    assert warmup == 2

    def authors(s: int) -> float:
        if s < warmup:
            return peak * s / warmup
        return peak * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))

    assert record.lrs == pytest.approx([authors(s) for s in range(steps)], rel=1e-9, abs=1e-15)
    assert record.lrs[:3] == pytest.approx([0.0, peak / 2, peak])


@pytest.mark.slow
def test_lora_fit_trains_adapter_only_logs_and_saves(tiny_qwen3, tmp_path):
    from peft import PeftModel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    module = ThinkSafeModule(
        str(tiny_qwen3), adapter=lora(), kl_weight=0.5, lr=1e-2, warmup_ratio=0.0, log_samples_every_n_steps=1
    )
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, loader(tiny_qwen3))

    after = dict(module.model.named_parameters())
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(not torch.equal(before[n], after[n]) for n in trainable)
    assert all(torch.equal(before[n], p) for n, p in after.items() if not p.requires_grad)

    events = EventAccumulator(trainer.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    wanted = {
        "train/loss",
        "train/ce",
        "train/kl",
        "train/supervised_tokens",
        "train/tokens_per_s",
        "train/lr",
        "train/loss_epoch",
        "train/kl_epoch",
        "train/tokens_per_s_epoch",
    }
    wanted |= {f"train/ce/{label}" for label in LABELS} | {f"train/ce/{label}_epoch" for label in LABELS}
    assert wanted <= scalars, wanted - scalars
    assert len(events.Scalars("train/loss")) == 2
    first = next(iter(loader(tiny_qwen3)))
    first_supervised = int((first["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert events.Scalars("train/supervised_tokens")[0].value == first_supervised
    assert events.Scalars("train/kl")[-1].value > 0
    assert any("train/sample" in tag for tag in events.Tags()["tensors"])

    adapter_dir = Path(trainer.log_dir) / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= set(os.listdir(adapter_dir))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen3), adapter_dir).eval()
    module.model.eval()
    with torch.no_grad():
        expected = module.model(input_ids=first["input_ids"], attention_mask=first["attention_mask"]).logits
        got = reloaded(input_ids=first["input_ids"], attention_mask=first["attention_mask"]).logits
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_resume_from_checkpoint_continues_the_same_losses(tiny_qwen3, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class Losses(Callback):
        def __init__(self):
            self.values = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(outputs["loss"].item())

    def run(root, ckpt_path=None):
        L.seed_everything(0)
        losses = Losses()
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=2, filename="{step}")
        module = ThinkSafeModule(str(tiny_qwen3), adapter=lora(), kl_weight=0.3, lr=5e-3)
        trainer = make_trainer(root, max_steps=4, callbacks=[losses, saver])
        # one batch per epoch: every step sees the same rows, so the losses after the restart depend only on the
        # restored weights, optimizer moments and LR schedule (Lightning does not fast-forward a plain
        # DataLoader to the middle of an epoch)
        trainer.fit(module, loader(tiny_qwen3, batch_size=len(ROWS)), ckpt_path=ckpt_path)
        return losses.values

    straight = run(tmp_path / "a")
    checkpoint = tmp_path / "ckpt" / "step=2.ckpt"
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert saved and all("lora_" in k for k in saved), "LoRA checkpoints hold the adapter only"
    resumed = run(tmp_path / "b", ckpt_path=checkpoint)
    assert len(straight) == 4 and len(resumed) == 2
    assert resumed == pytest.approx(straight[2:], rel=1e-6)
    assert straight[3] != pytest.approx(straight[1], rel=1e-6)

    loaded = ThinkSafeModule.load_from_checkpoint(checkpoint)
    assert isinstance(loaded.adapter, LoRA) and loaded.adapter.r == 4
    weights = {f"model.{n}": p for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[k], v) for k, v in saved.items())


@pytest.mark.slow
def test_full_fine_tune_with_kl_keeps_the_reference_frozen(tiny_qwen3, tmp_path):
    """Also the bf16-true path of the GPU recipes: the frozen reference copy in bfloat16, every trained weight (all of
    them under FullFineTune) kept float32 as master weights, and the saved model float32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    module = ThinkSafeModule(str(tiny_qwen3), adapter=FullFineTune(), kl_weight=1.0, lr=1e-2, warmup_ratio=0.0)
    module.configure_model()
    (reference,) = module._reference.frozen_modules()
    initial = {n: p.detach().clone() for n, p in reference.named_parameters()}
    trainer = make_trainer(tmp_path, max_steps=2, precision="bf16-true")
    trainer.fit(module, loader(tiny_qwen3))

    assert all(p.dtype == torch.bfloat16 for p in reference.parameters())
    assert all(p.dtype == torch.float32 for p in module.model.parameters())
    # bf16-true casts buffers too; the rotary frequencies must stay float32 (as vLLM and a fresh load keep them)
    assert module.model.model.rotary_emb.inv_freq.dtype == reference.model.rotary_emb.inv_freq.dtype == torch.float32
    assert all(not p.requires_grad and p.grad is None for p in reference.parameters())
    assert all(torch.equal(initial[n].to(p.dtype), p) for n, p in reference.named_parameters())
    assert all(not torch.equal(initial[n].to(p.dtype), p) for n, p in module.model.named_parameters())
    assert trainer.callback_metrics["train/kl"] > 0

    saved = AutoModelForCausalLM.from_pretrained(Path(trainer.log_dir) / "adapter", dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in saved.parameters())
    batch = next(iter(loader(tiny_qwen3)))
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            saved(input_ids=batch["input_ids"]).logits, module.model(input_ids=batch["input_ids"]).logits
        )


def test_cli_schema_parses_both_adapters():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ThinkSafeModule, "model")
    cfg = parser.parse_args(
        [
            "--model.name_or_path=Qwen/Qwen3-0.6B",
            "--model.adapter=thinksafe.model.adapters.FullFineTune",
            "--model.kl_weight=0.1",
        ]
    )
    assert isinstance(parser.instantiate(cfg).model.adapter, FullFineTune)
    cfg = parser.parse_args(
        [
            "--model.name_or_path=x",
            "--model.adapter=thinksafe.model.adapters.LoRA",
            "--model.adapter.r=8",
            "--model.adapter.target_modules=[q_proj,k_proj]",
        ]
    )
    adapter = parser.instantiate(cfg).model.adapter
    assert (adapter.r, adapter.alpha, adapter.target_modules) == (8, 16, ["q_proj", "k_proj"])


class AdapterUpdate(Callback):
    """The trainable weights when fit starts (after the precision plugin's cast) and when it ends, as float32
    (gathered whole under FSDP2), with the dtypes the weights and their AdamW state had."""

    def __init__(self):
        self.start, self.end, self.dtypes, self.state_dtypes = {}, {}, set(), set()

    @staticmethod
    def _grab(pl_module):
        out = {}
        for name, p in pl_module.model.named_parameters():
            if p.requires_grad:
                full = p.full_tensor() if hasattr(p, "full_tensor") else p
                out[name] = full.detach().float().cpu().clone()
        return out

    def on_fit_start(self, trainer, pl_module):
        self.start = self._grab(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.end = self._grab(pl_module)
        self.dtypes = {str(p.dtype) for p in pl_module.model.parameters() if p.requires_grad}
        self.state_dtypes = {
            str(v.dtype)
            for state in trainer.optimizers[0].state.values()
            for k, v in state.items()
            if k in ("exp_avg", "exp_avg_sq")
        }

    def update(self) -> torch.Tensor:
        return torch.cat([(self.end[k] - self.start[k]).flatten() for k in sorted(self.end)])


def assert_same_update(got: torch.Tensor, want: torch.Tensor) -> None:
    cosine = F.cosine_similarity(got, want, dim=0).item()
    ratio = (got.norm() / want.norm()).item()
    assert want.norm() > 0 and cosine >= 0.99 and abs(ratio - 1) <= 0.05, f"cosine {cosine:.4f}, norm ratio {ratio:.4f}"


@pytest.mark.slow
def test_bf16_true_keeps_float32_master_weights(tiny_qwen3, tmp_path):
    """lr 1e-5, bf16-true, 20 AdamW steps: the LoRA update equals the all-float32 run's (bf16 weights would round
    most of it away); trainable weights and AdamW state stay float32, the saved adapter holds float32 tensors."""
    import lightning as L
    from safetensors.torch import load_file

    updates, saved = {}, {}
    for precision in ("32-true", "bf16-true"):
        L.seed_everything(0)
        module = ThinkSafeModule(str(tiny_qwen3), adapter=lora(), lr=1e-5, warmup_ratio=0.0)
        probe = AdapterUpdate()
        trainer = make_trainer(
            tmp_path / precision, max_steps=20, precision=precision, callbacks=[probe], enable_checkpointing=False
        )
        trainer.fit(module, loader(tiny_qwen3))
        assert probe.dtypes == {"torch.float32"} and probe.state_dtypes == {"torch.float32"}, precision
        updates[precision] = probe.update()
        saved[precision] = load_file(Path(trainer.log_dir) / "adapter" / "adapter_model.safetensors")
    assert_same_update(updates["bf16-true"], updates["32-true"])
    assert {str(v.dtype) for v in saved["bf16-true"].values()} == {"torch.float32"}


# ------------------------------------------------- two processes: the `thinksafe fit` command, as users launch it
BIN = Path(sys.executable).parent
FSDP2 = {  # as the README's Scaling section gives it
    "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
    "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
}


# the state after the last step (at the epoch's end: 8 rows, 2 a rank per step, make 2 steps an epoch)
LAST = {"class_path": "thinksafe.model.ResumableCheckpoint", "init_args": {"every_n_train_steps": 0}}
# step 1's state only: with monitor step and mode min, no later step is written
FIRST = {
    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
    "init_args": {"filename": "first", "every_n_train_steps": 1, "monitor": "step", "mode": "min", "save_top_k": 1},
}


def two_process_fit(
    root: Path,
    model_dir: Path,
    strategy: str | dict,
    checkpoint: dict,
    *,
    max_steps: int,
    torchrun: bool = False,
    precision: str = "32-true",
    **model,
) -> Path:
    """``thinksafe fit --trainer.devices=2`` on the CPU (gloo), on ROWS as ``data.responses`` (no sampling), with a
    recipe written to ``root`` (``model``: the module's settings; the ``checkpoint`` callback writes to
    ``root/checkpoints``). Lightning starts rank 1 by running the command again, or ``torchrun`` starts both.
    Returns the run directory, where rank 0 wrote the adapter."""
    root.mkdir(parents=True)
    responses = root / "responses.jsonl"
    responses.write_text(
        "".join(json.dumps(dict(instruction=p, response=r, label=label)) + "\n" for p, r, label in ROWS)
    )
    recipe = {
        "seed_everything": 0,
        "model": {
            "name_or_path": str(model_dir),
            "adapter": {"class_path": "thinksafe.model.LoRA", "init_args": {"r": 4, "alpha": 8, "dropout": 0.0}},
            **model,
        },
        "data": {
            "responses": str(responses),
            "output_dir": str(root / "selfgen"),
            "max_length": 256,
            "batch_size": 2,
            "in_distribution_rows": 0,
        },
        "trainer": {
            "strategy": strategy,
            "default_root_dir": str(root / "run"),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {**checkpoint, "init_args": {**checkpoint["init_args"], "dirpath": str(root / "checkpoints")}}
            ],
        },
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    fit = [
        str(BIN / "thinksafe"),
        "fit",
        "--recipe",
        str(root / "recipe.yaml"),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        f"--trainer.precision={precision}",
        f"--trainer.max_steps={max_steps}",
    ]
    if torchrun:
        fit = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", *fit]
    proc = subprocess.run(fit, capture_output=True, text=True, timeout=600, cwd=root)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and f"`max_steps={max_steps}` reached" in log, log[-3000:]
    (run,) = (root / "run").glob("lightning_logs/version_*")  # one run directory: rank 1 makes none
    return run


def read_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint: one file (DDP), or FSDP2's torch.distributed.checkpoint directory, a file per rank
    (read back whole, in this one process)."""
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = path.with_name(path.name + ".pt")
    dcp_to_torch_save(path, whole)
    return {**torch.load(path / "meta.pt", weights_only=False), **torch.load(whole, weights_only=False)}


def lora_weights(state_dict: dict) -> dict[str, torch.Tensor]:
    """The LoRA matrices of the module's state dict, named as in the saved adapter (peft leaves out the adapter's
    name, ``default``; the module holds the peft model as ``model``)."""
    return {k.removeprefix("model.").replace(".default.", "."): v for k, v in state_dict.items() if ".lora_" in k}


def adamw_state_dtypes(checkpoint: dict) -> set[str]:
    """The dtypes of AdamW's moments in a checkpoint read by :func:`read_checkpoint` from FSDP2's directory."""
    states = checkpoint["optimizer_0"]["state"].values()
    return {str(v.dtype) for state in states for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")}


@pytest.mark.slow
def test_two_process_ddp_and_fsdp2_train_the_same_adapter(tiny_qwen3, tmp_path):
    """`thinksafe fit --trainer.devices=2` with DDP and with FSDP2 (ModelParallelStrategy: fully_shard per decoder
    layer, then the root), Lightning starting rank 1; lr 1e-2, KL 0.5, 2 steps. Rank 0 writes the adapter, once,
    and both strategies write the same one. Both ranks hold it: under FSDP2 each rank writes its own shard of the
    weights to the checkpoint (a file per rank), and the whole matrices read back from the two files equal the
    adapter; DDP's adapter (rank 0's replica) equals FSDP2's, whose update averages both ranks' gradients, so
    DDP's all-reduce ran, and rank 1 (the same start, broadcast by DDP, the same averaged gradients) holds the same
    weights."""
    from safetensors.torch import load_file

    written = {}
    for name, strategy in (("ddp", "ddp"), ("fsdp2", FSDP2)):
        run = two_process_fit(tmp_path / name, tiny_qwen3, strategy, LAST, max_steps=2, lr=1e-2, kl_weight=0.5)
        written[name] = load_file(run / "adapter" / "adapter_model.safetensors")
        last = tmp_path / name / "checkpoints" / "last.ckpt"
        if name == "fsdp2":
            assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        checkpoint = read_checkpoint(last)
        assert checkpoint["global_step"] == 2
        saved = lora_weights(checkpoint["state_dict"])
        assert saved.keys() == written[name].keys() and saved, name
        for key, value in saved.items():
            torch.testing.assert_close(value, written[name][key], rtol=0, atol=0)
    assert written["ddp"].keys() == written["fsdp2"].keys()
    for key, value in written["ddp"].items():
        torch.testing.assert_close(written["fsdp2"][key], value)


@pytest.mark.slow
def test_fsdp2_bf16_true_keeps_float32_master_weights(tiny_qwen3, tmp_path):
    """The same as test_bf16_true_keeps_float32_master_weights under 2-process FSDP2, `thinksafe fit` started by
    torchrun: the LoRA matrices shard as their own float32 groups. The adapter written at the end, and the weights
    and AdamW state of the step-1 checkpoint, are float32; the update from step 1 to step 20 (the adapter minus
    the checkpoint's weights) equals the 32-true run's."""
    from safetensors.torch import load_file

    updates = {}
    for precision in ("32-true", "bf16-true"):
        root = tmp_path / precision
        run = two_process_fit(
            root, tiny_qwen3, FSDP2, FIRST, torchrun=True, precision=precision, max_steps=20, lr=1e-5, warmup_ratio=0.0
        )
        first = read_checkpoint(root / "checkpoints" / "first.ckpt")
        assert first["global_step"] == 1
        start, end = lora_weights(first["state_dict"]), load_file(run / "adapter" / "adapter_model.safetensors")
        assert start.keys() == end.keys() and start
        dtypes = {str(v.dtype) for v in [*start.values(), *end.values()]}
        assert dtypes == {"torch.float32"} and adamw_state_dtypes(first) == {"torch.float32"}, precision
        updates[precision] = torch.cat([(end[k] - start[k]).flatten() for k in sorted(end)])
    assert_same_update(updates["bf16-true"], updates["32-true"])
