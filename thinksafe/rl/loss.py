"""The GRPO objective (Shao et al. 2024, DeepSeekMath), as TRL's ``GRPOTrainer`` computes it with
``loss_type="grpo"`` — the trainer ThinkSafe's authors ran their GRPO baseline with (``grpo_train.py``).

Written here rather than taken from TRL: TRL's loss lives inside its ``Trainer`` subclass (generation, reward
calls, accelerate and its own vLLM server protocol in one class), which cannot drive a LightningModule. The
formulas, for ``G`` completions per prompt, reward ``r_i``, token log-probabilities ``log π`` (current policy),
``log π_old`` (the policy that sampled) and ``log π_ref`` (the initial model)::

    A_i      = (r_i − mean_group(r)) / (std_group(r) + 1e-4)          std with Bessel's correction, as TRL
    ρ_t      = exp(log π_t − log π_old,t)
    kl_t     = exp(log π_ref,t − log π_t) − (log π_ref,t − log π_t) − 1     (Schulman's k3 estimator, ≥ 0)
    ℓ_t      = −min(ρ_t A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_i) + β kl_t
    loss     = mean over completions of ( Σ_t mask_t ℓ_t / Σ_t mask_t )

With one policy update per batch of samples (TRL's default ``num_iterations=1``, the authors' setting)
``log π_old`` is ``log π`` detached: ρ = 1, the clip never binds, and the gradient is the policy gradient
``−A_i ∇log π_t`` plus the KL term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """Group-normalised advantages of ``rewards`` ``[P·G]`` (the ``G`` completions of a prompt are adjacent)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        # a group of one has no spread: its advantage is 0 (TRL's nanstd gives NaN, then nan_to_num 0)
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        advantages = advantages / (std + 1e-4)
    return advantages.reshape(-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π: ``exp(d) − d − 1`` with ``d = log π_ref − log π``."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


@dataclass
class GRPOLoss:
    loss: torch.Tensor
    """The objective to back-propagate (a scalar)."""
    kl: torch.Tensor
    """Mean per-token k3 KL over completion tokens (detached; 0 when β = 0 and no reference is given)."""
    clip_fraction: torch.Tensor
    """Share of completion tokens whose ratio the clip bound (detached)."""


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
) -> GRPOLoss:
    """The GRPO loss of completions ``[B, T]`` (``mask`` 1 on completion tokens) with advantages ``[B]``.

    ``ref_logps`` is required when ``beta > 0``."""
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, clipped * adv)
    tokens = mask.sum().clamp(min=1.0)
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        kl_mean = (kl * mask).sum().detach() / tokens
    else:
        kl, kl_mean = None, logps.new_zeros(())
    if beta != 0.0:
        if kl is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logps")
        per_token = per_token + beta * kl
    loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    was_clipped = ((ratio * adv) > (clipped * adv)).to(logps.dtype)  # min() took the clipped term
    return GRPOLoss(loss, kl_mean, ((was_clipped * mask).sum() / tokens).detach())
