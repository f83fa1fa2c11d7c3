"""Micro-batches filled to a token budget, planned per optimizer step and per rank, and the worst-case micro-batch
of a budget (the gradient-checkpointing choice measured on it is :mod:`thinksafe.model.memory`'s).

Why not a fixed batch size: reasoning traces are long-tailed, so a batch size that fits the longest rows leaves
the accelerator idle on the rest, and random batches of mixed lengths are mostly padding. Measured on an H200
(Qwen3-0.6B shape, LoRA, 4096-token rows): batch 1 with gradient checkpointing, the published recipe, trains at
11.7K tokens/s; 4 × 4096 without checkpointing at 46.9K. Packing several rows into one with restarting
``position_ids`` is NOT done: under sdpa it runs at 16.3K tokens/s in 70 GiB, since attention then spans the
whole packed row.

The plan of one epoch (:func:`plan_epoch`), the same on every rank:

1. rows sorted by length (ties broken at random, per epoch) are cut greedily into micro-batches whose padded
   size, rows × longest row, stays within ``max_tokens_per_batch``;
2. the micro-batch count is made a multiple of the world size by halving the micro-batches with the most rows,
   so no row is dropped or repeated (a filler with ``loss_scale`` 0 only when no micro-batch can be halved);
3. every ``world_size`` consecutive micro-batches (similar lengths, so similar cost: ranks wait less for each
   other) form a group, dealt one per rank; groups are shuffled with ``(seed, epoch)``;
4. on every rank, each ``micro_batches_per_step`` consecutive micro-batches make one optimizer step.

Each micro-batch carries ``loss_scale = n · K · W / N``: ``n`` its supervised tokens, ``N`` those of its whole
optimizer step over all ranks, ``K`` micro-batches per step and ``W`` ranks. A loss that is the micro-batch's
token mean, multiplied by it, gives after Lightning's ``1/K`` and DDP's ``1/W`` exactly the token mean of the
whole step, as if it had been one batch. It also carries ``row_scale = r · K · W / R`` (``r`` its rows, ``R``
those of the step over all ranks): the same for a loss that is the micro-batch's mean of per-row means, giving the
step's row mean (``model.loss_average: row``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from thinksafe.errors import UserError
from thinksafe.rows import IGNORE_INDEX, EncodedRow, collate


# --------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of a plan, what the sampler hands the :class:`MicroBatchDataset`."""

    rows: tuple[int, ...]
    """Indices into the row list."""
    loss_scale: float
    """``n · K · W / N`` (see the module docstring); 0 for a filler."""
    step: int
    """Optimizer step of the epoch it belongs to."""
    row_scale: float = 0.0
    """``r · K · W / R`` (see the module docstring); 0 for a filler."""


def supervised_tokens(row: EncodedRow) -> int:
    """Positions with a loss once labels are shifted for a causal LM (the first label never has one)."""
    return sum(1 for label in row.labels[1:] if label != IGNORE_INDEX)


def group_by_length(lengths: Sequence[int], max_tokens: int, rng: random.Random) -> list[list[int]]:
    """Row indices cut into micro-batches of at most ``max_tokens`` padded tokens, shortest rows first.

    Greedy over rows sorted by length: each row joins the current micro-batch unless that would take it over the
    budget; sorted, the row joining is the longest, so the padded size is ``count × its length``.
    """
    tiebreak = [rng.random() for _ in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], tiebreak[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if lengths[i] > max_tokens:
            raise UserError(
                f"data.max_tokens_per_batch={max_tokens} is smaller than a training row of {lengths[i]} tokens; "
                "raise it to at least data.max_length, or lower data.max_length."
            )
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def equalize_for_ranks(batches: list[list[int]], world_size: int) -> tuple[list[list[int]], set[int]]:
    """Make the count a multiple of ``world_size`` so every rank runs the same number of micro-batches (a rank
    with one more would wait forever in its extra all-reduce).

    The micro-batch with the most rows is halved (in place, so neighbours keep similar lengths) until the count
    fits. Only if every micro-batch holds a single row are the shortest repeated as fillers; their positions are
    returned, to be given ``loss_scale`` 0.
    """
    batches = [list(b) for b in batches]
    missing = (-len(batches)) % world_size
    while missing:
        widest = max(range(len(batches)), key=lambda j: len(batches[j]))
        rows = batches[widest]
        if len(rows) < 2:
            break
        batches[widest : widest + 1] = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
        missing -= 1
    fillers = set()
    for j in range(missing):
        fillers.add(len(batches))
        batches.append(list(batches[j % len(batches)]))
    return batches, fillers


def plan_epoch(
    lengths: Sequence[int],
    supervised: Sequence[int],
    max_tokens: int,
    micro_batches_per_step: int = 1,
    world_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
) -> list[list[MicroBatch]]:
    """The micro-batches of every rank for one epoch (``[rank][i]``), as the module docstring describes.
    Deterministic in ``(lengths, max_tokens, world_size, seed, epoch)``; every rank gets the same count."""
    if not lengths:
        raise UserError("no training rows to batch.")
    if micro_batches_per_step < 1 or world_size < 1:
        raise ValueError(
            f"micro_batches_per_step and world_size must be ≥ 1, got {micro_batches_per_step}, {world_size}"
        )
    rng = random.Random(f"thinksafe-batching:{seed}:{epoch}")
    batches, fillers = equalize_for_ranks(group_by_length(lengths, max_tokens, rng), world_size)
    groups = [list(range(g, g + world_size)) for g in range(0, len(batches), world_size)]
    rng.shuffle(groups)
    n = [0 if j in fillers else sum(supervised[i] for i in batches[j]) for j in range(len(batches))]
    r = [0 if j in fillers else len(batches[j]) for j in range(len(batches))]
    per_rank: list[list[MicroBatch]] = [[] for _ in range(world_size)]
    for step, first in enumerate(range(0, len(groups), micro_batches_per_step)):
        step_groups = groups[first : first + micro_batches_per_step]
        total = sum(n[j] for group in step_groups for j in group)
        total_rows = sum(r[j] for group in step_groups for j in group)
        factor = micro_batches_per_step * world_size
        for group in step_groups:
            for rank, j in enumerate(group):
                scale = n[j] * factor / total if total else 0.0
                row_scale = r[j] * factor / total_rows if total_rows else 0.0
                per_rank[rank].append(MicroBatch(tuple(batches[j]), scale, step, row_scale))
    return per_rank


def micro_batches_per_step_for(
    micro_batches_per_rank: int,
    rows: int,
    tokens: int,
    rows_per_step: int | None = None,
    tokens_per_step: int | None = None,
) -> int:
    """The accumulation ``K`` that gives the number of optimizer steps a target implies: ``rows / rows_per_step``
    or ``tokens / tokens_per_step`` (as close as a fixed accumulation gets), so learning-rate schedules see the
    same number of steps whatever the budget."""
    if rows_per_step is not None and tokens_per_step is not None:
        raise UserError("set data.rows_per_step or data.tokens_per_step, not both.")
    if rows_per_step is not None:
        steps = math.ceil(rows / rows_per_step)
    elif tokens_per_step is not None:
        steps = math.ceil(tokens / tokens_per_step)
    else:
        return 1
    return max(1, round(micro_batches_per_rank / steps))


@dataclass(frozen=True)
class PlanSummary:
    """What a plan does with the data (for the log and the benchmarks)."""

    max_tokens_per_batch: int
    rows: int
    tokens: int
    """Non-padding tokens of all rows."""
    padded_tokens: int
    """Tokens the micro-batches occupy, padding included."""
    micro_batches_per_rank: int
    micro_batches_per_step: int
    world_size: int

    @property
    def padding_share(self) -> float:
        return 1 - self.tokens / self.padded_tokens

    @property
    def steps(self) -> int:
        return math.ceil(self.micro_batches_per_rank / self.micro_batches_per_step)

    def describe(self) -> str:
        return (
            f"token budget {self.max_tokens_per_batch} tokens per micro-batch (padding counted): {self.rows} rows "
            f"→ {self.micro_batches_per_rank} micro-batches per rank × {self.world_size} rank(s), "
            f"{self.micro_batches_per_step} per optimizer step → {self.steps} steps per epoch "
            f"(~{self.rows / self.steps:.1f} rows, ~{self.tokens / self.steps:.0f} tokens each), "
            f"padding {100 * self.padding_share:.1f}%"
        )


def summarize(
    plan: list[list[MicroBatch]], lengths: Sequence[int], max_tokens: int, micro_batches_per_step: int
) -> PlanSummary:
    padded = sum(len(mb.rows) * max(lengths[i] for i in mb.rows) for rank in plan for mb in rank)
    return PlanSummary(
        max_tokens_per_batch=max_tokens,
        rows=len(lengths),
        tokens=sum(lengths),
        padded_tokens=padded,
        micro_batches_per_rank=len(plan[0]),
        micro_batches_per_step=micro_batches_per_step,
        world_size=len(plan),
    )


# ---------------------------------------------------------------------------------------- sampler and loader
class TokenBudgetSampler(DistributedSampler):
    """Yields this rank's :class:`MicroBatch` es of the current epoch (call :meth:`set_epoch`; Lightning does).

    It is a ``DistributedSampler`` so that Lightning, which wraps any other sampler in its own distributed one
    under DDP/FSDP, leaves the plan alone: ranks are already dealt their micro-batches here.

    Args:
        lengths: tokens of each row.
        supervised: supervised tokens of each row (:func:`supervised_tokens`).
        max_tokens_per_batch: padded tokens per micro-batch at most.
        micro_batches_per_step: micro-batches per rank per optimizer step (``trainer.accumulate_grad_batches``).
        seed: shuffling seed (the epoch is mixed in).
        rank: this process's rank.
        world_size: number of ranks.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        supervised: Sequence[int],
        max_tokens_per_batch: int,
        micro_batches_per_step: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(list(lengths), num_replicas=world_size, rank=rank, shuffle=False, seed=seed)
        self.lengths = list(lengths)
        self.supervised = list(supervised)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.micro_batches_per_step = micro_batches_per_step
        self.skip = 0
        """Micro-batches of the next pass to leave out (set by :class:`ResumableLoader` when a run resumes)."""
        self._plans: dict[int, list[list[MicroBatch]]] = {}

    def plan(self) -> list[list[MicroBatch]]:
        """Every rank's micro-batches for the current epoch."""
        if self.epoch not in self._plans:
            self._plans = {
                self.epoch: plan_epoch(
                    self.lengths,
                    self.supervised,
                    self.max_tokens_per_batch,
                    self.micro_batches_per_step,
                    self.num_replicas,
                    self.seed,
                    self.epoch,
                )
            }
        return self._plans[self.epoch]

    def summary(self) -> PlanSummary:
        return summarize(self.plan(), self.lengths, self.max_tokens_per_batch, self.micro_batches_per_step)

    def __iter__(self):
        # a generator: the plan is read at the first batch, after Lightning's set_epoch (it creates the iterator
        # of a resumed run before setting the epoch)
        skip, self.skip = self.skip, 0
        yield from self.plan()[self.rank][skip:]

    def __len__(self) -> int:
        return len(self.plan()[self.rank])

    def fingerprint(self) -> str:
        """What the plans depend on besides the epoch: a checkpoint's position means nothing under another."""
        return _fingerprint(
            "token-budget",
            self.lengths,
            self.max_tokens_per_batch,
            self.micro_batches_per_step,
            self.num_replicas,
            self.seed,
        )


class RowShuffleSampler(DistributedSampler):
    """Row indices in a shuffled order that depends on ``(seed, epoch)`` only, for fixed-size batches.

    On one rank the order is exactly that of ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    over the same epochs (what thinksafe used before, so earlier runs' numbers stand), but computed from the
    epoch instead of carried in a generator that a resumed run would re-seed. On several ranks it is
    ``DistributedSampler``'s own order (what Lightning substituted before). A ``DistributedSampler`` itself, so
    Lightning leaves it in place.
    """

    def __init__(self, rows: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(range(rows), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.rows = rows
        self.skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        if self.num_replicas > 1:
            yield from list(super().__iter__())[skip:]
            return
        # per pass, the DataLoader's iterator drew its workers' base seed from the generator, then RandomSampler
        # two permutations (the second for a remainder of length 0)
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):
            torch.empty((), dtype=torch.int64).random_(generator=g)
            torch.randperm(self.rows, generator=g)
            torch.randperm(self.rows, generator=g)
        torch.empty((), dtype=torch.int64).random_(generator=g)
        yield from torch.randperm(self.rows, generator=g).tolist()[skip:]

    def fingerprint(self) -> str:
        return _fingerprint("rows", [self.rows], self.num_replicas, self.seed)


def _fingerprint(*parts: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning checkpoints and restores.

    Lightning saves the ``state_dict`` of a loader that has one with the fit loop's state and hands it back to
    ``load_state_dict`` when a run resumes (``--ckpt_path``), before the loader is iterated. The state is the
    epoch, how many batches of it were served, and the fingerprint of the sampler's plan; the sampler's order is a
    function of ``(seed, epoch)``, so the resumed run serves the rest of the same epoch, batch for batch, and
    Lightning's own count (restored too) ends the epoch where the uninterrupted run did. Counted here, in the
    main process, as batches are handed out (a sampler is read ahead by workers). The sampler is a
    :class:`TokenBudgetSampler` (its items are micro-batches) or a :class:`RowShuffleSampler` with ``batch_size``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        # each iterator draws its workers' base seed from this generator; from the global one (the default) the
        # draw would shift what dropout reads, and a resumed run creates its iterator mid-epoch, where the
        # uninterrupted run drew nothing
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume: dict[str, Any] | None = None

    def _items_per_batch(self) -> int:
        return 1 if self.batch_size is None else self.batch_size

    def state_dict(self) -> dict[str, Any]:
        return dict(epoch=self.sampler.epoch, served=self._served, fingerprint=self.sampler.fingerprint())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.sampler.fingerprint():
            raise UserError(
                "the checkpoint's data order was planned for other training rows or batching settings (data.*, "
                "trainer.devices or the seed changed since it was written), so the run cannot continue where it "
                "stopped. Resume with the settings it was made with, or start over without --ckpt_path."
            )
        self._resume = dict(state)
        self.sampler.set_epoch(state["epoch"])  # in case the sampler is read before Lightning sets the epoch

    def __iter__(self):
        resume, self._resume = self._resume, None
        served = resume["served"] if resume is not None and resume["epoch"] == self.sampler.epoch else 0
        self.sampler.skip = served * self._items_per_batch()
        self._served = served
        for batch in super().__iter__():
            self._served += 1
            yield batch


class MicroBatchDataset(Dataset):
    """Encoded rows, indexed by :class:`MicroBatch`: ``dataset[mb]`` is the collated micro-batch
    (:func:`thinksafe.rows.collate`) plus ``loss_scale`` and ``row_scale`` (float32 scalar tensors)."""

    def __init__(self, rows: list[EncodedRow], pad_id: int):
        self.rows = rows
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, mb: MicroBatch) -> dict[str, torch.Tensor]:
        batch = collate([self.rows[i] for i in mb.rows], pad_id=self.pad_id)
        batch["loss_scale"] = torch.tensor(mb.loss_scale, dtype=torch.float32)
        batch["row_scale"] = torch.tensor(mb.row_scale, dtype=torch.float32)
        return batch


def token_budget_loader(
    rows: list[EncodedRow],
    pad_id: int,
    max_tokens_per_batch: int,
    micro_batches_per_step: int = 1,
    rows_per_step: int | None = None,
    tokens_per_step: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader of token-budget micro-batches over encoded rows (:class:`~thinksafe.rows.EncodedRow`); its ``sampler`` is the :class:`TokenBudgetSampler`. With ``rows_per_step`` or
    ``tokens_per_step``, ``micro_batches_per_step`` is derived from that target
    (:func:`micro_batches_per_step_for`) and can be read back from ``loader.sampler``."""
    lengths = [len(r.input_ids) for r in rows]
    sampler = TokenBudgetSampler(
        lengths,
        [supervised_tokens(r) for r in rows],
        max_tokens_per_batch,
        micro_batches_per_step,
        seed,
        rank,
        world_size,
    )
    if rows_per_step is not None or tokens_per_step is not None:
        # the micro-batch count depends on lengths only, not on the accumulation: plan once to learn it
        sampler.micro_batches_per_step = micro_batches_per_step_for(
            len(sampler), len(rows), sum(lengths), rows_per_step, tokens_per_step
        )
        sampler._plans.clear()
    # batch_size=None: the sampler's items are whole micro-batches, collated by the dataset
    return ResumableLoader(MicroBatchDataset(rows, pad_id), batch_size=None, sampler=sampler, num_workers=num_workers)


# ------------------------------------------------------------------------------- gradient checkpointing policy
def worst_case_batch(rows: list[EncodedRow], max_tokens_per_batch: int, pad_id: int) -> dict[str, torch.Tensor]:
    """The micro-batch a plan can make that needs the most memory: copies of one row of length ``L``, as many as
    fit the budget, ``L`` chosen to fill it most (longest on ties: attention grows with length)."""
    by_length = {len(r.input_ids): r for r in rows}
    length = max(by_length, key=lambda n: ((max_tokens_per_batch // n) * n, n))
    count = max(1, max_tokens_per_batch // length)
    return collate([by_length[length]] * count, pad_id=pad_id)
