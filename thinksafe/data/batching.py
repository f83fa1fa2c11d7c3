"""Micro-batches filled to a token budget, planned per optimizer step and per rank; and the gradient-checkpointing
choice that goes with the budget.

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
whole step, as if it had been one batch.
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Callable, Sequence
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
        raise ValueError(f"micro_batches_per_step and world_size must be ≥ 1, got {micro_batches_per_step}, {world_size}")
    rng = random.Random(f"thinksafe-batching:{seed}:{epoch}")
    batches, fillers = equalize_for_ranks(group_by_length(lengths, max_tokens, rng), world_size)
    groups = [list(range(g, g + world_size)) for g in range(0, len(batches), world_size)]
    rng.shuffle(groups)
    n = [0 if j in fillers else sum(supervised[i] for i in batches[j]) for j in range(len(batches))]
    per_rank: list[list[MicroBatch]] = [[] for _ in range(world_size)]
    for step, first in enumerate(range(0, len(groups), micro_batches_per_step)):
        step_groups = groups[first : first + micro_batches_per_step]
        total = sum(n[j] for group in step_groups for j in group)
        for group in step_groups:
            for rank, j in enumerate(group):
                scale = n[j] * micro_batches_per_step * world_size / total if total else 0.0
                per_rank[rank].append(MicroBatch(tuple(batches[j]), scale, step))
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
        max_tokens_per_batch=max_tokens, rows=len(lengths), tokens=sum(lengths), padded_tokens=padded,
        micro_batches_per_rank=len(plan[0]), micro_batches_per_step=micro_batches_per_step, world_size=len(plan),
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
            self._plans = {self.epoch: plan_epoch(
                self.lengths, self.supervised, self.max_tokens_per_batch, self.micro_batches_per_step,
                self.num_replicas, self.seed, self.epoch,
            )}
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
        return _fingerprint("token-budget", self.lengths, self.max_tokens_per_batch, self.micro_batches_per_step,
                            self.num_replicas, self.seed)


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
    (:func:`thinksafe.rows.collate`) plus ``loss_scale`` (a float32 scalar tensor)."""

    def __init__(self, rows: list[EncodedRow], pad_id: int):
        self.rows = rows
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, mb: MicroBatch) -> dict[str, torch.Tensor]:
        batch = collate([self.rows[i] for i in mb.rows], pad_id=self.pad_id)
        batch["loss_scale"] = torch.tensor(mb.loss_scale, dtype=torch.float32)
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
    sampler = TokenBudgetSampler(lengths, [supervised_tokens(r) for r in rows], max_tokens_per_batch,
                                 micro_batches_per_step, seed, rank, world_size)
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


@dataclass(frozen=True)
class CheckpointingChoice:
    """Whether decoder activations are recomputed in backward, and why."""

    enabled: bool
    reason: str
    max_tokens_per_batch: int
    probe_shape: tuple[int, int]
    """Rows × length of the worst-case micro-batch the choice was measured on."""
    peak_bytes: float | None
    """Peak memory of one training step on the probe, in the chosen setting (inf: out of memory)."""
    limit_bytes: float | None

    def describe(self) -> str:
        def gib(x: float | None) -> str:
            return "?" if x is None else ("out of memory" if math.isinf(x) else f"{x / 2**30:.1f} GiB")

        return (
            f"gradient checkpointing {'ON' if self.enabled else 'off'} for a token budget of "
            f"{self.max_tokens_per_batch} ({self.reason}; worst case {self.probe_shape[0]} × {self.probe_shape[1]} "
            f"tokens: peak {gib(self.peak_bytes)} of {gib(self.limit_bytes)} usable)"
        )


def set_gradient_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Turn activation recomputation of a transformers model (or a PEFT model around one) on or off."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if enabled:
        # non-reentrant: works with frozen inputs (LoRA) and under no_grad (the KL reference forward)
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


def _host_rss(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_host_peak() -> bool:
    # glibc keeps freed memory mapped; give it back first so the peak measures this step, not an earlier one
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset VmHWM (peak resident set) to the current RSS
        return True
    except OSError:
        return False


def usable_memory(device: torch.device) -> float | None:
    """Bytes this process can hold on ``device``: free memory plus what it holds already (None: unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free + torch.cuda.memory_reserved(device))
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    rss = _host_rss("VmRSS")
    return float(available + (rss or 0))


LossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def peak_step_memory(module: Any, batch: dict[str, torch.Tensor], step: LossFn | None = None) -> float | None:
    """Peak memory (bytes) of one forward + backward of ``step(batch)`` (default: ``module.training_step(batch,
    0)``): allocated CUDA memory, or the process's resident set on the CPU; inf when it runs out of memory, None
    when it cannot be measured. Gradients of ``module`` are cleared afterwards; no optimizer step is taken."""
    device = batch["input_ids"].device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif not _reset_host_peak():
        return None
    try:
        _forward_backward(step or (lambda b: module.training_step(b, 0)), batch)
        peak: float | None = None
    except torch.OutOfMemoryError:
        peak = math.inf
    for p in module.parameters():
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if peak is None:
            peak = float(torch.cuda.max_memory_allocated(device))
        torch.cuda.empty_cache()
    elif peak is None:
        hwm = _host_rss("VmHWM")
        peak = None if hwm is None else float(hwm)
    return peak


def _forward_backward(step: LossFn, batch: dict[str, torch.Tensor]) -> None:
    # its own frame, so an out-of-memory error frees the activations when it leaves
    step(batch).backward()


def choose_gradient_checkpointing(
    module: Any,
    probe: dict[str, torch.Tensor],
    max_tokens_per_batch: int,
    forced: bool = False,
    memory_fraction: float = 0.9,
    limit_bytes: float | None = None,
    step: LossFn | None = None,
    agree: Callable[[bool], bool] | None = None,
) -> CheckpointingChoice:
    """Checkpointing only where the budget does not fit without it (or where the recipe forces it).

    Runs the real training step of ``module`` (a :class:`~thinksafe.model.module.ThinkSafeModule` with its model
    configured, on its device) on ``probe`` (:func:`worst_case_batch`, on the same device), first without
    checkpointing, then with it if needed, and leaves the model in the chosen setting. ``step``: the loss
    function to run instead of ``module.training_step(batch, 0)`` (for a caller inside a Lightning hook where
    ``training_step`` may not log). Usable memory:
    ``limit_bytes``, else ``memory_fraction`` of what :func:`usable_memory` finds. ``agree``: turns this rank's
    "it fits" into the answer of all ranks (every rank must fit; under DDP/FSDP each rank runs the same probes, so
    none waits in a collective the others skip). Raises :class:`UserError` when the budget does not fit even with
    checkpointing.
    """
    model = module.model
    shape = tuple(probe["input_ids"].shape)
    device = probe["input_ids"].device
    limit = limit_bytes if limit_bytes is not None else _fraction(usable_memory(device), memory_fraction)

    def choice(enabled: bool, reason: str, peak: float | None) -> CheckpointingChoice:
        return CheckpointingChoice(enabled, reason, max_tokens_per_batch, shape, peak, limit)

    def fits(peak: float | None) -> bool:
        local = peak is None or limit is None or peak <= limit
        return agree(local) if agree is not None else local

    if not forced:
        set_gradient_checkpointing(model, False)
        peak = peak_step_memory(module, probe, step)
        if fits(peak):
            return choice(False, "fits without it" if peak is not None else "memory not measurable here", peak)
    set_gradient_checkpointing(model, True)
    peak_on = peak_step_memory(module, probe, step)
    if fits(peak_on):
        return choice(True, "forced by the recipe" if forced else "does not fit without it", peak_on)
    suggestion = 0 if math.isinf(peak_on) else int(max_tokens_per_batch * limit / peak_on) // 256 * 256
    raise UserError(
        f"data.max_tokens_per_batch={max_tokens_per_batch} does not fit in {device.type} memory even with gradient "
        f"checkpointing: one training step on the worst-case micro-batch ({shape[0]} × {shape[1]} tokens) peaks at "
        f"{'more than is free' if math.isinf(peak_on) else f'{peak_on / 2**30:.1f} GiB'} of {limit / 2**30:.1f} GiB "
        f"usable. Lower data.max_tokens_per_batch"
        + (f" (to about {suggestion})" if suggestion else "")
        + " or data.max_length."
    )


def _fraction(value: float | None, fraction: float) -> float | None:
    return None if value is None else value * fraction
