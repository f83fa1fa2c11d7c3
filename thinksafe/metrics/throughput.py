"""Training throughput in TensorBoard with Lightning's own :class:`~lightning.pytorch.callbacks.ThroughputMonitor`,
told what a thinksafe batch holds.

ThroughputMonitor needs a function for the rows of a batch and one for its items; here an item is a real token
(the attention mask's ones: padding is not work a user asked for), and a filler micro-batch of the token-budget
sampler (``loss_scale`` 0, :mod:`thinksafe.data.batching`) counts as no rows and no tokens. The recipes list it
under ``trainer.callbacks``; it logs, every ``log_every_n_steps`` optimizer steps,

* ``train/samples``, ``train/lengths`` (tokens), ``train/batches``, ``train/time``: totals since training started;
* ``train/device/samples_per_sec``, ``train/device/items_per_sec`` (real tokens per second),
  ``train/device/batches_per_sec``: rolling means over the last ``window_size`` micro-batches, so they appear once
  that many have run (and ``train/samples_per_sec`` … summed over ranks when there are several).

FLOPs and MFU are left out: the module defines no ``flops_per_batch`` (Lightning would warn on every fit).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor


def _is_filler(batch: dict[str, Any]) -> bool:
    scale = batch.get("loss_scale") if isinstance(batch, dict) else None
    return scale is not None and float(scale) == 0


def batch_rows(batch: dict[str, Any]) -> int:
    """Rows (training examples) in a batch; a filler micro-batch has none."""
    return 0 if _is_filler(batch) else int(batch["input_ids"].shape[0])


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (unpadded) tokens in a batch, prompt and response; a filler micro-batch has none."""
    return 0 if _is_filler(batch) else int(batch["attention_mask"].sum())


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor counting rows and real tokens of thinksafe's batches.

    Args:
        window_size: micro-batches the per-second rates are averaged over (and how many run before the first
            rate is logged).
        separator: between the stage and the metric name in the logged keys (``train/device/items_per_sec``).
    """

    def __init__(self, window_size: int = 20, separator: str = "/"):
        super().__init__(batch_size_fn=batch_rows, length_fn=batch_tokens, window_size=window_size, separator=separator)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # ThroughputMonitor warns once per fit that FLOPs need a flops_per_batch attribute; without one it
        # simply logs no FLOPs, which is what we want (the warning would be noise in every run)
        self._module_has_flops = hasattr(pl_module, "flops_per_batch")
