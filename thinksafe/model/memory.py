"""How much memory one training step takes, and whether gradient checkpointing is needed for it.

Measured, not estimated: :func:`choose_gradient_checkpointing` runs the real training step of the module on the
worst-case micro-batch of the training set (:func:`thinksafe.data.batching.worst_case_batch`), first without
checkpointing, then with it if needed. It lives with the model (it needs the module and its device, never the
data set): the DataModule hands over the probe batch (``SafetyDataModule.memory_probe``).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from thinksafe.errors import UserError


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
