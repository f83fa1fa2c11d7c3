"""Cross-entropy and forward KL computed from the decoder's final hidden states, through the LM head, chunk by chunk.

A real vocabulary (Qwen3: 151,936 tokens) makes the logits the largest tensor of a training step: B × T × V values
for every position, prompt and padding included, plus their gradient and float32 upcasts. Here the model runs
without its LM head (``logits_to_keep`` empty; the decoder's output is read with a forward hook, so PEFT, DDP and
FSDP2 wrappers run their hooks as usual), the supervised positions are gathered, and :class:`_HeadLoss` applies
the head ``chunk_size`` positions at a time.

:class:`_HeadLoss` computes the gradient while it computes the loss (as Liger-Kernel's fused linear
cross-entropy does): per chunk, ``g = ∂loss/∂logits`` is formed in place of the probabilities, turned into the
hidden states' and head weight's gradients, and dropped; backward only scales them by the incoming gradient. So
at most one chunk of logits is ever alive, and the head's matmuls run once each (3 per chunk, as with materialised
logits) instead of being recomputed in backward. Pure torch, so it runs on the CPU as on CUDA; Liger's kernel
would fuse the softmax too but does not take a KL target or per-token weights.

Per supervised position ``t`` with logits ``z_t``, ``p = softmax(z_t)``, target ``y_t`` and, with a reference,
``q = softmax(z_ref_t)``::

    loss = Σ_t ce_weight_t · (−log p[y_t])  +  kl_weight_t · Σ_v q_v (log q_v − log p_v)
    ∂loss/∂z_t = (ce_weight_t + kl_weight_t) · p − ce_weight_t · onehot(y_t) − kl_weight_t · q
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from thinksafe.errors import UserError


def output_weight(model: nn.Module) -> torch.Tensor:
    """The LM head's weight (``[vocab, hidden]``; the embedding matrix when tied). Refuses heads this loss cannot
    apply itself: an adapted (LoRA) head or one with a bias."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if hasattr(head, "base_layer"):  # a PEFT tuner layer
        raise UserError(
            "model.adapter.target_modules adapts the LM head (lm_head): thinksafe applies the head itself, chunk by "
            "chunk, at supervised positions only, and supports a frozen or fully trained head. Remove lm_head "
            "from model.adapter.target_modules, or train every weight with FullFineTune."
        )
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise UserError(f"thinksafe needs a bias-free linear LM head; {type(base).__name__} has {head!r}.")
    return head.weight


def final_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's final (normed) hidden states ``[batch, length, hidden]``, from a forward of the whole model
    that computes no logits. The root model is called (not its decoder) so wrappers' forward hooks run."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    captured: list[torch.Tensor] = []
    handle = base.get_decoder().register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
        )
    finally:
        handle.remove()
    return captured[-1]


class _HeadLoss(torch.autograd.Function):
    """(Σ weighted CE + KL, per-position CE, per-position KL) of ``hidden @ weight.T``; see the module docstring.
    The gradient flows to ``hidden`` and ``weight``; the reference gets none."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ce_weight, ref_hidden, ref_weight, kl_weight, chunk_size):
        n = hidden.shape[0]
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
        kl = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h, y, w_ce = hidden[start:end], targets[start:end], ce_weight[start:end]
            logp = F.log_softmax(F.linear(h, weight).float(), dim=-1)
            ce_chunk = -logp.gather(1, y[:, None]).squeeze(1)
            ce[start:end] = ce_chunk
            total += (w_ce * ce_chunk).sum()
            q = None
            if ref_hidden is not None:
                w_kl = kl_weight[start:end]
                ref_logp = F.log_softmax(F.linear(ref_hidden[start:end], ref_weight).float(), dim=-1)
                q = ref_logp.exp()
                kl_chunk = torch.linalg.vecdot(q, ref_logp.sub_(logp))
                del ref_logp
                kl[start:end] = kl_chunk
                total += (w_kl * kl_chunk).sum()
            g = None
            if need_hidden or need_weight:  # in place of the log-probabilities: at most 3 chunks alive (with KL)
                w_all = w_ce if q is None else w_ce + w_kl
                g = logp.exp_().mul_(w_all[:, None])
                g[torch.arange(end - start, device=g.device), y] -= w_ce
                if q is not None:
                    g.sub_(q.mul_(w_kl[:, None]))
            del logp, q
            if g is not None:
                g = g.to(hidden.dtype)
                if need_hidden:
                    grad_hidden[start:end] = g @ weight
                if need_weight:
                    grad_weight += (g.T @ h).float()
                del g
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(ce, kl)
        return total, ce, kl

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kl):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None


def head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    kl_weight: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ce, kl)`` over ``N`` selected positions: ``hidden`` ``[N, hidden]`` (the student's final hidden
    states there), ``targets`` ``[N]``, per-position weights ``ce_weight`` / ``kl_weight`` ``[N]``, the
    reference's hidden states at the same positions with its head weight (or None: no KL). ``loss`` is the
    weighted sum (float32 scalar, differentiable w.r.t. ``hidden`` and ``weight``); ``ce`` and ``kl`` are the
    per-position values (float32, no gradient; ``kl`` is 0 without a reference)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    if ref_hidden is not None:
        if ref_weight is None or kl_weight is None or ref_hidden.shape != hidden.shape:
            raise ValueError("a reference needs ref_weight, kl_weight and hidden states shaped like hidden")
        ref_hidden, ref_weight = ref_hidden.detach(), ref_weight.detach()
    floats = dict(dtype=torch.float32, device=hidden.device)
    return _HeadLoss.apply(
        hidden,
        weight,
        targets,
        ce_weight.to(**floats),
        ref_hidden,
        ref_weight,
        None if kl_weight is None else kl_weight.to(**floats),
        chunk_size,
    )
