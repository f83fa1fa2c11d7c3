"""Token-level forward KL to the initial model, and cross-entropy, over supervised positions in bounded memory.

Both are the same computation: cross-entropy is the forward KL to a one-hot target. :class:`_ChunkedKL` takes the
selected positions ``chunk_size`` at a time, upcasts one chunk to float32, and writes the analytic gradient
(``softmax(z) − q``) into a single buffer in backward, so neither pass ever holds more than one chunk of
full-vocabulary float32 values and no per-chunk autograd graph is kept.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from thinksafe.rows import IGNORE_INDEX


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with a causal LM's logits: position ``t`` holds the token predicted there (``t + 1``)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


class _ChunkedKL(torch.autograd.Function):
    """``KL(q ‖ softmax(flat[idx]))`` per selected row, float32; ``q`` is ``softmax(ref_flat[ref_idx])`` or,
    given ``targets``, one-hot (the cross-entropy). Gradient flows to ``flat`` only."""

    @staticmethod
    def forward(ctx, flat, idx, chunk_size, ref_flat, ref_idx, targets):
        out = torch.empty(idx.numel(), dtype=torch.float32, device=flat.device)
        for start in range(0, idx.numel(), chunk_size):
            end = start + chunk_size
            logp = F.log_softmax(flat.index_select(0, idx[start:end]).float(), dim=-1)
            if targets is not None:
                out[start:end] = -logp.gather(1, targets[start:end, None]).squeeze(1)
            else:
                ref_logp = F.log_softmax(ref_flat.index_select(0, ref_idx[start:end]).float(), dim=-1)
                out[start:end] = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        ctx.save_for_backward(flat, idx, ref_flat, ref_idx, targets)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        flat, idx, ref_flat, ref_idx, targets = ctx.saved_tensors
        grad = torch.zeros_like(flat)
        for start in range(0, idx.numel(), ctx.chunk_size):
            end = start + ctx.chunk_size
            rows = idx[start:end]
            g = F.softmax(flat.index_select(0, rows).float(), dim=-1)
            if targets is not None:
                g[torch.arange(rows.numel(), device=g.device), targets[start:end]] -= 1
            else:
                g -= F.softmax(ref_flat.index_select(0, ref_idx[start:end]).float(), dim=-1)
            grad.index_copy_(0, rows, (g * grad_out[start:end, None]).to(grad.dtype))
        return grad, None, None, None, None, None


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Cross-entropy at each position where ``targets != -100`` (row-major order, float32, shape [N]), computed
    ``chunk_size`` positions at a time. ``targets`` are aligned with ``logits`` (see :func:`shift_labels`)."""
    vocab = logits.shape[-1]
    flat, flat_targets = logits.reshape(-1, vocab), targets.reshape(-1)
    positions = (flat_targets != IGNORE_INDEX).nonzero().squeeze(-1)
    return _ChunkedKL.apply(flat, positions, chunk_size, None, None, flat_targets[positions])


class ForwardKL(nn.Module):
    """``KL(initial ‖ current) = Σ_v p_init(v) (log p_init(v) − log p_cur(v))`` per supervised position.

    ``logits[b, t]`` and ``ref_logits[b, t]`` are scored at positions where ``labels[b, t] != -100``: pass them
    aligned; for a causal LM, the model's logits as they are with :func:`shift_labels` of the labels (slicing
    the logits instead would copy them). Supervised positions are taken ``chunk_size`` at a time in float32,
    forward and backward, so no full-batch float32 copy of either logit tensor is ever made. The reference
    logits get no gradient.

    Args:
        chunk_size: supervised positions per chunk.
    """

    def __init__(self, chunk_size: int = 1024):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
        self.chunk_size = chunk_size

    def per_token(
        self,
        logits: torch.Tensor,
        ref_logits: torch.Tensor,
        labels: torch.Tensor,
        ref_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """KL at each supervised position, in row-major order of ``labels != -100`` (float32, shape [N]).

        ``ref_rows``: when the reference was run on some batch rows only, their indices into ``logits``' first
        dimension (``ref_logits[i]`` belongs to row ``ref_rows[i]``); every other row must be all -100.
        """
        rows = logits.shape[0] if ref_rows is None else ref_rows.numel()
        if ref_logits.shape != (rows, *logits.shape[1:]) or logits.shape[:-1] != labels.shape:
            raise ValueError(
                f"shape mismatch: logits {tuple(logits.shape)}, ref_logits {tuple(ref_logits.shape)}, "
                f"labels {tuple(labels.shape)}"
            )
        batch, length, vocab = logits.shape
        positions = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(-1)
        ref_positions = positions
        if ref_rows is not None:
            slot = torch.full((batch,), -1, dtype=torch.long, device=labels.device)
            slot[ref_rows] = torch.arange(ref_rows.numel(), device=labels.device)
            row_slot = slot[positions // length]
            if bool((row_slot < 0).any()):
                raise ValueError("labels supervise a row that ref_rows does not hold")
            ref_positions = row_slot * length + positions % length
        return _ChunkedKL.apply(
            logits.reshape(-1, vocab),
            positions,
            self.chunk_size,
            ref_logits.detach().reshape(-1, vocab),
            ref_positions,
            None,
        )

    def forward(
        self,
        logits: torch.Tensor,
        ref_logits: torch.Tensor,
        labels: torch.Tensor,
        reduction: Literal["mean", "sum"] = "mean",
        ref_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean (or sum) of the per-position KL; 0 (with a gradient path) when no position is supervised."""
        kl = self.per_token(logits, ref_logits, labels, ref_rows)
        if kl.numel() == 0:
            return logits.sum() * 0.0
        return kl.mean() if reduction == "mean" else kl.sum()
