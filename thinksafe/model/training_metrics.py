"""Training metrics as one torchmetrics ``Metric``, so epoch values are reduced across DDP/FSDP ranks.

Every rank updates the same fixed-size state on every batch, whatever labels its batch holds: the epoch-end
reduction then runs the same collectives on all ranks (logging one metric per label only where a rank saw
that label would leave the other ranks waiting in a mismatched collective).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from thinksafe.rows import LABELS

_FIXED = ("loss", "steps", "ce", "tokens", "kl", "kl_tokens", "processed_tokens")


class TrainingMetrics(Metric):
    """Loss, its parts, the cross-entropy of each prompt label, supervised tokens and throughput.

    :meth:`pack` turns one batch's sums into a vector (on the batch's device, no host sync); :meth:`update`
    adds it to the state; :meth:`summarize` names the values of one batch and :meth:`compute` those of the
    whole epoch, reduced over ranks. Names: ``loss``, ``ce`` (mean over supervised tokens), ``kl`` (mean over
    supervised tokens of benign rows), ``ce/<label>`` for each of ``rows.LABELS``, ``supervised_tokens``
    and ``tokens_per_s`` (non-padding tokens through forward and backward per second of wall time; over the
    epoch, all ranks' tokens over the slowest rank's time). A value with no token behind it is left out rather
    than reported as NaN.
    """

    full_state_update = False

    def __init__(self, labels: tuple[str, ...] = LABELS, **kwargs):
        super().__init__(**kwargs)
        self.labels = tuple(labels)
        size = len(_FIXED) + 2 * len(self.labels)
        self.add_state("sums", default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("seconds", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="max")

    @staticmethod
    def pack(
        loss: torch.Tensor,
        ce_sum: torch.Tensor,
        tokens: int,
        kl_sum: torch.Tensor | None,
        kl_tokens: int,
        label_ce_sum: torch.Tensor,
        label_tokens: torch.Tensor,
        processed_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """One batch's sums as a float64 vector on ``loss``' device."""
        device = loss.device
        fixed = torch.stack(
            [
                loss.detach().double(),
                torch.ones((), dtype=torch.float64, device=device),
                ce_sum.detach().double(),
                torch.tensor(float(tokens), dtype=torch.float64, device=device),
                (
                    kl_sum.detach() if kl_sum is not None else torch.zeros((), dtype=torch.float64, device=device)
                ).double(),
                torch.tensor(float(kl_tokens), dtype=torch.float64, device=device),
                processed_tokens.detach().double(),
            ]
        )
        return torch.cat([fixed, label_ce_sum.detach().double(), label_tokens.double()])

    def update(self, packed: torch.Tensor, seconds: float) -> None:
        self.sums += packed.to(self.sums.device)
        self.seconds += seconds

    def summarize(self, packed: torch.Tensor, seconds: float) -> dict[str, float]:
        """Named values of one batch (or of any packed sums)."""
        v = dict(zip(_FIXED, packed[: len(_FIXED)].tolist()))
        n = len(self.labels)
        label_ce = packed[len(_FIXED) : len(_FIXED) + n].tolist()
        label_tokens = packed[len(_FIXED) + n :].tolist()
        out = {"loss": v["loss"] / max(v["steps"], 1.0), "supervised_tokens": v["tokens"]}
        if v["tokens"] > 0:
            out["ce"] = v["ce"] / v["tokens"]
        if v["kl_tokens"] > 0:
            out["kl"] = v["kl"] / v["kl_tokens"]
        for name, ce, k in zip(self.labels, label_ce, label_tokens):
            if k > 0:
                out[f"ce/{name}"] = ce / k
        if seconds > 0:
            out["tokens_per_s"] = v["processed_tokens"] / seconds
        return out

    def compute(self) -> dict[str, float]:
        return self.summarize(self.sums, float(self.seconds))
