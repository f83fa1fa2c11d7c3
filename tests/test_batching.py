"""Token-budget micro-batching: every row exactly once, the budget kept, equal micro-batch counts per rank,
determinism, the loss and gradient of a planned step equal to the unbatched ones (real tiny model), the
DataModule wiring into a real Lightning fit, and the gradient-checkpointing policy."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from thinksafe.data.batching import (
    MicroBatchDataset,
    TokenBudgetSampler,
    equalize_for_ranks,
    micro_batches_per_step_for,
    plan_epoch,
    summarize,
    supervised_tokens,
    token_budget_loader,
    worst_case_batch,
)
from thinksafe.errors import UserError
from thinksafe.model.memory import choose_gradient_checkpointing, set_gradient_checkpointing
from thinksafe.rows import IGNORE_INDEX, ChatEncoder, EncodedRow, collate


def trace_lengths(n: int, longest: int, seed: int = 0) -> list[int]:
    """Long-tailed lengths like reasoning traces."""
    rng = random.Random(seed)
    return [min(longest, 16 + int(rng.lognormvariate(4.0, 0.9))) for _ in range(n)]


def every_row(plan) -> list[int]:
    return sorted(i for rank in plan for mb in rank if mb.loss_scale > 0 for i in mb.rows)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("budget", [512, 2048])
def test_plan_keeps_every_row_once_within_budget_and_equal_per_rank(world_size, budget):
    lengths = trace_lengths(203, longest=512)
    plan = plan_epoch(
        lengths, [n - 8 for n in lengths], budget, micro_batches_per_step=3, world_size=world_size, seed=1, epoch=0
    )
    assert len(plan) == world_size
    assert len({len(rank) for rank in plan}) == 1, "ranks must run the same number of micro-batches"
    assert every_row(plan) == list(range(len(lengths)))
    for rank in plan:
        for mb in rank:
            assert len(mb.rows) * max(lengths[i] for i in mb.rows) <= budget
    # every rank's micro-batch j belongs to the same optimizer step
    assert [[mb.step for mb in rank] for rank in plan] == [[mb.step for mb in plan[0]]] * world_size


def test_grouping_by_length_cuts_padding_against_random_batches():
    lengths = trace_lengths(400, longest=1024)
    plan = plan_epoch(lengths, lengths, 2048, seed=0)
    rows_per_batch = len(lengths) / len(plan[0])
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    size = round(rows_per_batch)
    random_padded = sum(
        len(order[i : i + size]) * max(lengths[j] for j in order[i : i + size]) for i in range(0, len(order), size)
    )
    assert summarize(plan, lengths, 2048, 1).padding_share < 0.5 * (1 - sum(lengths) / random_padded)


def test_ranks_get_equal_counts_even_when_no_micro_batch_can_be_halved():
    lengths = [900, 950, 1000, 990, 980]  # each row needs a micro-batch of its own: 5 for 2 ranks
    plan = plan_epoch(lengths, lengths, 1024, world_size=2)
    assert [len(rank) for rank in plan] == [3, 3]
    assert every_row(plan) == [0, 1, 2, 3, 4], "the filler is the only repeat and carries no loss"
    fillers = [mb for rank in plan for mb in rank if mb.loss_scale == 0]
    assert len(fillers) == 1


def test_halving_keeps_neighbours_in_length_order():
    batches, fillers = equalize_for_ranks([[0], [1, 2, 3, 4], [5, 6]], world_size=4)
    assert batches == [[0], [1, 2], [3, 4], [5, 6]] and not fillers


def test_plan_is_deterministic_and_reshuffled_per_epoch():
    lengths = trace_lengths(150, longest=512)
    sup = [n // 2 for n in lengths]
    a = plan_epoch(lengths, sup, 1024, 2, world_size=2, seed=3, epoch=0)
    assert a == plan_epoch(lengths, sup, 1024, 2, world_size=2, seed=3, epoch=0)
    b = plan_epoch(lengths, sup, 1024, 2, world_size=2, seed=3, epoch=1)
    assert [mb.rows for mb in a[0]] != [mb.rows for mb in b[0]]
    assert len(a[0]) == len(b[0]), "the micro-batch count (the epoch length Lightning sees) must not change"
    sampler = TokenBudgetSampler(lengths, sup, 1024, 2, seed=3, rank=1, world_size=2)
    assert list(sampler) == a[1]
    sampler.set_epoch(1)
    assert list(sampler) == b[1]


def test_step_targets_set_the_accumulation():
    # 100 micro-batches per rank; 1000 rows in steps of 32 rows → 32 steps → 3 micro-batches per step
    assert micro_batches_per_step_for(100, rows=1000, tokens=10**6, rows_per_step=32) == 3
    assert micro_batches_per_step_for(100, rows=1000, tokens=10**6, tokens_per_step=20_000) == 2
    assert micro_batches_per_step_for(100, rows=1000, tokens=10**6, rows_per_step=5000) == 100
    assert micro_batches_per_step_for(10, rows=1000, tokens=10**6, rows_per_step=8) == 1
    with pytest.raises(UserError):
        micro_batches_per_step_for(10, rows=10, tokens=10, rows_per_step=1, tokens_per_step=1)


def test_a_row_longer_than_the_budget_is_a_user_error():
    with pytest.raises(UserError, match="max_tokens_per_batch=100"):
        plan_epoch([50, 120], [40, 100], 100)


# ------------------------------------------------------------------------------------- with the real model
def trace_rows(model_dir: Path, n: int = 14) -> tuple[list[dict], int]:
    from thinksafe.model.loading import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    enc = ChatEncoder(tok, "qwen3", max_length=200)
    rng = random.Random(0)
    labels = ["vanilla_benign", "vanilla_harmful", "adversarial_benign", "adversarial_harmful"]
    rows = []
    for i in range(n):
        reasoning = " ".join(
            rng.choice(["First", "compute", "the", "sum.", "Then", "divide", "by", "two."])
            for _ in range(rng.choice([3, 8, 20, 45]))
        )
        ids, lab = enc.encode(f"How do I bake bread {i}?", f"<think>\n{reasoning}\n</think>\n\nThe answer is {i}.")
        rows.append(EncodedRow(ids, lab, labels[i % 4]))
    return rows, tok.pad_token_id


@pytest.fixture(scope="module")
def module(tiny_qwen3):
    from thinksafe.model.adapters import LoRA
    from thinksafe.model.module import ThinkSafeModule

    torch.manual_seed(0)
    m = ThinkSafeModule(str(tiny_qwen3), adapter=LoRA(r=4, alpha=8, dropout=0.0), dtype="float32", kl_weight=0.5)
    m.configure_model()
    m.train()
    with torch.no_grad():  # LoRA B starts at 0, which leaves A without a gradient; give both one
        for name, p in m.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return m


def trainable_grads(module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.requires_grad]


def zero_grads(module) -> None:
    for p in module.parameters():
        p.grad = None


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_planned_step_has_the_unbatched_loss_and_gradient(module, tiny_qwen3, world_size):
    """Micro-batches (padded, several per step, split over ranks) with loss_scale reproduce the token-mean loss
    and gradient of the step's rows taken one at a time without padding (KL on benign rows included)."""
    rows, pad_id = trace_rows(tiny_qwen3)
    lengths = [len(r.input_ids) for r in rows]
    k = 2
    plan = plan_epoch(lengths, [supervised_tokens(r) for r in rows], 2 * max(lengths), k, world_size, seed=0)
    data = MicroBatchDataset(rows, pad_id)
    step = [mb for rank in plan for mb in rank if mb.step == 0]
    assert len(step) == k * world_size and any(len(mb.rows) > 1 for mb in step)
    assert any(len(set(lengths[i] for i in mb.rows)) > 1 for mb in step), "some micro-batch must hold padding"

    # as Lightning runs it: the step's loss (the module applies loss_scale) / K, DDP averaging the ranks' gradients
    zero_grads(module)
    batched = 0.0
    for mb in step:
        loss = module.training_step(data[mb], 0) / (k * world_size)
        loss.backward()
        batched += loss.item()
    batched_grads = trainable_grads(module)

    zero_grads(module)
    step_rows = [i for mb in step for i in mb.rows]
    total = sum(supervised_tokens(rows[i]) for i in step_rows)
    unbatched = 0.0
    for i in step_rows:
        loss = module.training_step(collate([rows[i]], pad_id), 0) * supervised_tokens(rows[i]) / total
        loss.backward()
        unbatched += loss.item()
    assert batched == pytest.approx(unbatched, rel=1e-5)
    for got, want in zip(batched_grads, trainable_grads(module)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    zero_grads(module)


def test_loader_serves_collated_micro_batches_with_their_scale(tiny_qwen3):
    rows, pad_id = trace_rows(tiny_qwen3)
    loader = token_budget_loader(rows, pad_id, max_tokens_per_batch=256, rows_per_step=4)
    assert isinstance(loader.sampler, DistributedSampler), "Lightning must not wrap the plan in its own sampler"
    seen = []
    for batch in loader:
        assert batch["input_ids"].numel() <= 256
        assert set(batch) == {
            "input_ids",
            "attention_mask",
            "labels",
            "harmful",
            "label_index",
            "loss_scale",
            "row_scale",
        }
        seen += [tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
    assert sorted(seen) == sorted(tuple(r.input_ids) for r in rows)


def test_worst_case_batch_fills_the_budget(tiny_qwen3):
    rows, pad_id = trace_rows(tiny_qwen3)
    longest = max(len(r.input_ids) for r in rows)
    probe = worst_case_batch(rows, 3 * longest, pad_id)
    assert tuple(probe["input_ids"].shape) == (3, longest)
    assert (probe["labels"] != IGNORE_INDEX).any()


@pytest.mark.slow
def test_checkpointing_only_when_the_budget_does_not_fit(module, tiny_qwen3):
    rows, pad_id = trace_rows(tiny_qwen3)
    probe = worst_case_batch(rows, 1024, pad_id)
    base = module.model.get_base_model()

    choice = choose_gradient_checkpointing(module, probe, 1024)
    assert not choice.enabled and not base.is_gradient_checkpointing
    assert "1024" in choice.describe() and "off" in choice.describe()
    assert all(p.grad is None for p in module.parameters()), "the probe must leave no gradient behind"

    forced = choose_gradient_checkpointing(module, probe, 1024, forced=True)
    assert forced.enabled and base.is_gradient_checkpointing and "forced" in forced.reason

    with pytest.raises(UserError, match="data.max_tokens_per_batch=1024 does not fit"):
        choose_gradient_checkpointing(module, probe, 1024, limit_bytes=1)

    # the choice changes memory, not results
    results = []
    for enabled in (True, False):
        zero_grads(module)
        set_gradient_checkpointing(module.model, enabled)
        loss = module.training_step(probe, 0)
        loss.backward()
        results.append((loss.item(), trainable_grads(module)))
    zero_grads(module)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------- DataModule wiring
def test_datamodule_rejects_inconsistent_batching_options():
    from thinksafe.data.datamodule import SafetyDataModule

    with pytest.raises(UserError, match="max_tokens_per_batch"):
        SafetyDataModule(responses="x.jsonl", rows_per_step=8)
    with pytest.raises(UserError, match="not both"):
        SafetyDataModule(responses="x.jsonl", max_tokens_per_batch=4096, rows_per_step=8, tokens_per_step=4096)
    with pytest.raises(UserError, match="≥ 1"):
        SafetyDataModule(responses="x.jsonl", max_tokens_per_batch=0)


def write_responses(path: Path, n: int = 24) -> Path:
    labels = ["vanilla_benign", "vanilla_harmful", "adversarial_benign", "adversarial_harmful"]
    with path.open("w") as f:
        for i in range(n):
            reasoning = "First compute the sum. " * (1 + (i * 7) % 13)
            f.write(
                json.dumps(
                    {
                        "instruction": f"How do I bake bread {i}?",
                        "label": labels[i % 4],
                        "response": f"<think>\n{reasoning}\n</think>\n\nBake it.",
                    }
                )
                + "\n"
            )
    return path


def budget_datamodule(responses: Path, model_dir: str):
    from thinksafe.data.datamodule import SafetyDataModule

    return SafetyDataModule(
        responses=str(responses),
        model_name_or_path=model_dir,
        max_length=256,
        max_tokens_per_batch=200,
        rows_per_step=12,
    )


@pytest.mark.slow
def test_fit_with_a_token_budget_plans_the_steps(tiny_qwen3, tmp_path):
    import lightning as L

    from thinksafe.model.adapters import LoRA
    from thinksafe.model.module import ThinkSafeModule

    dm = budget_datamodule(write_responses(tmp_path / "responses.jsonl"), str(tiny_qwen3))
    model = ThinkSafeModule(str(tiny_qwen3), adapter=LoRA(r=4, alpha=8, dropout=0.0), lr=1e-3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    sampler = trainer.train_dataloader.sampler
    assert isinstance(sampler, TokenBudgetSampler)
    per_epoch = len(sampler)
    assert trainer.accumulate_grad_batches == sampler.micro_batches_per_step > 1
    assert trainer.global_step == 2 * -(-per_epoch // trainer.accumulate_grad_batches)
    # 24 rows in steps of ~12 rows: 2 steps per epoch, as a batch size of 12 would give
    assert -(-per_epoch // trainer.accumulate_grad_batches) == pytest.approx(2, abs=1)
    assert sampler.epoch == 1, "Lightning reshuffles the plan each epoch through set_epoch"


@pytest.mark.slow
def test_two_process_ddp_splits_the_plan_without_loss_or_repeat(tiny_qwen3, tmp_path):
    """Real DDP on 2 CPU processes: Lightning keeps the plan's sampler, each rank runs the same number of
    micro-batches (of different sizes), together they see every row once per epoch, and the adapters agree."""
    responses = write_responses(tmp_path / "responses.jsonl", n=26)
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(tiny_qwen3), str(responses)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sampler"] == ranks[1]["sampler"] == "TokenBudgetSampler"
    assert len(ranks[0]["rows"]) == len(ranks[1]["rows"]) > 1
    assert ranks[0]["global_step"] == ranks[1]["global_step"] > 0
    seen = [tuple(row) for r in ranks for batch in r["rows"] for row in batch]
    assert len(seen) == len(set(seen)) == 26
    assert ranks[0]["sums"] == ranks[1]["sums"]


def _ddp_fit(out: str, model_dir: str, responses: str) -> None:
    """Run by test_two_process_ddp_splits_the_plan_without_loss_or_repeat; Lightning re-launches it for rank 1."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from thinksafe.model.adapters import LoRA
    from thinksafe.model.module import ThinkSafeModule

    class Rows(Callback):
        def __init__(self):
            self.rows = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.rows.append([ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"])])

    L.seed_everything(0)
    rows = Rows()
    module = ThinkSafeModule(model_dir, adapter=LoRA(r=4, alpha=8, dropout=0.0), lr=1e-2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        default_root_dir=out,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[rows],
    )
    trainer.fit(module, budget_datamodule(Path(responses), model_dir))
    sums = {n: float(p.detach().sum()) for n, p in module.model.named_parameters() if p.requires_grad}
    result = dict(
        rows=rows.rows,
        global_step=trainer.global_step,
        sums=sums,
        sampler=type(trainer.train_dataloader.sampler).__name__,
    )
    (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _ddp_fit(*sys.argv[1:4])


@pytest.mark.slow
@pytest.mark.parametrize("needed", [False, True])
def test_auto_checkpointing_is_decided_when_fit_starts_and_logged(tiny_qwen3, tmp_path, monkeypatch, caplog, needed):
    """`model.gradient_checkpointing: auto` in a real fit: the worst-case micro-batch of the data module's budget
    is probed on the device, the model is left in the chosen setting, and the choice goes to the loggers. The
    memory readings are replaced (a CPU process's peak cannot be steered in a test); the decision path is real."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import thinksafe.model.memory as memory
    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.model.adapters import LoRA
    from thinksafe.model.module import ThinkSafeModule

    real_peak, probed = memory.peak_step_memory, []

    def peak(module, batch, step=None):
        real_peak(module, batch, step)  # the real forward and backward of the probe
        on = module.model.get_base_model().is_gradient_checkpointing
        probed.append((tuple(batch["input_ids"].shape), on))
        return 1e9 if on or not needed else 3e9

    monkeypatch.setattr(memory, "peak_step_memory", peak)
    monkeypatch.setattr(memory, "usable_memory", lambda device: 2e9 / 0.9)
    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        "".join(
            json.dumps(
                dict(
                    instruction=f"How do I bake bread {i}?",
                    label=label,
                    response=f"<think>\nStep {i}.\n</think>\n\nLike this {i}.",
                )
            )
            + "\n"
            for i, label in enumerate(["vanilla_benign", "vanilla_harmful"] * 4)
        )
    )
    dm = SafetyDataModule(
        responses=str(responses),
        model_name_or_path=str(tiny_qwen3),
        reasoning_format="qwen3",
        max_length=128,
        max_tokens_per_batch=256,
        in_distribution_rows=0,
    )
    module = ThinkSafeModule(str(tiny_qwen3), adapter=LoRA(r=4, alpha=8, dropout=0.0), gradient_checkpointing="auto")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=TensorBoardLogger(tmp_path, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=dm)

    assert probed[0][1] is False and len(probed) == (2 if needed else 1)
    assert probed[0][0][0] * probed[0][0][1] <= 256
    assert module.model.get_base_model().is_gradient_checkpointing is needed
    assert f"gradient checkpointing {'ON' if needed else 'off'} for a token budget of 256" in caplog.text
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    assert [e.value for e in events.Scalars("train/gradient_checkpointing")] == [float(needed)]
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for k, i in enumerate(order):
            r[i] = float(k)
        return r

    a, b = ranks(xs), ranks(ys)
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5


@pytest.mark.parametrize("micro_batches_per_step,world_size", [(1, 1), (4, 1), (2, 2)])
def test_optimizer_steps_do_not_follow_row_length_across_the_epoch(micro_batches_per_step, world_size):
    """Micro-batches are grouped by length, but the order of optimizer steps must not be: a schedule that met
    short rows first and long ones last (or the reverse) would tie the learning rate to length. The rank
    correlation between step index and the step's mean row length is near zero (its spread under a random
    order is ~1/sqrt(steps) ≈ 0.03-0.05 here), while the micro-batches themselves are length-sorted (≈ 1)."""
    from thinksafe.data.batching import group_by_length

    for seed in range(3):
        lengths = trace_lengths(60_000, 2048, seed=seed)
        plan = plan_epoch(lengths, lengths, 4096, micro_batches_per_step, world_size, seed=seed, epoch=0)
        rows_of_step: dict[int, list[int]] = {}
        for rank in plan:
            for mb in rank:
                rows_of_step.setdefault(mb.step, []).extend(lengths[i] for i in mb.rows)
        steps = sorted(rows_of_step)
        assert len(steps) > 250
        mean_length = [sum(rows_of_step[s]) / len(rows_of_step[s]) for s in steps]
        assert abs(_spearman(steps, mean_length)) < 0.2, (seed, _spearman(steps, mean_length))
        grouped = group_by_length(lengths, 4096, random.Random(seed))
        assert _spearman(list(range(len(grouped))), [max(lengths[i] for i in b) for b in grouped]) > 0.95
