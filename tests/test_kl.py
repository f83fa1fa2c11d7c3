"""ForwardKL on its own: against a naive full-vocabulary reference, and on a tiny model with a fresh LoRA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from thinksafe.rows import IGNORE_INDEX
from thinksafe.model.kl import ForwardKL, shift_labels, token_cross_entropy


def naive_kl(logits, ref_logits, labels):
    mask = labels != IGNORE_INDEX
    p_ref = F.softmax(ref_logits.float(), -1)
    kl = (p_ref * (F.log_softmax(ref_logits.float(), -1) - F.log_softmax(logits.float(), -1))).sum(-1)
    return kl[mask]


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g, requires_grad=True)
    ref = torch.randn(3, 7, 50, generator=g)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[0, :3] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX
    return logits, ref, labels


def test_zero_for_identical_logits(tensors):
    logits, _, labels = tensors
    assert ForwardKL(chunk_size=4)(logits, logits.detach().clone(), labels).abs().item() < 1e-6


def test_matches_naive_reference_and_its_gradient(tensors):
    logits, ref, labels = tensors
    expected = naive_kl(logits, ref, labels)
    (g_naive,) = torch.autograd.grad(expected.mean(), logits)

    kl = ForwardKL(chunk_size=4)  # smaller than the 15 supervised positions: several checkpointed chunks
    per_token = kl.per_token(logits, ref, labels)
    torch.testing.assert_close(per_token, expected)
    (g_chunked,) = torch.autograd.grad(kl(logits, ref, labels), logits)
    torch.testing.assert_close(g_chunked, g_naive)
    assert (per_token > 0).all()
    assert kl(logits, ref, labels, reduction="sum").item() == pytest.approx(expected.sum().item(), rel=1e-5)


def test_reference_on_some_rows_only(tensors):
    logits, ref, labels = tensors
    rows = torch.tensor([0, 2])
    only = labels.clone()
    only[1] = IGNORE_INDEX
    kl = ForwardKL(chunk_size=5)
    torch.testing.assert_close(kl.per_token(logits, ref[rows], only, ref_rows=rows), naive_kl(logits, ref, only))
    with pytest.raises(ValueError, match="ref_rows"):
        kl.per_token(logits, ref[rows], labels, ref_rows=rows)


def test_no_supervised_position_gives_zero_with_a_gradient(tensors):
    logits, ref, labels = tensors
    value = ForwardKL()(logits, ref, torch.full_like(labels, IGNORE_INDEX))
    value.backward()
    assert value.item() == 0.0 and logits.grad is not None


def test_token_cross_entropy_matches_torch():

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 40, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (2, 6), generator=g)
    targets[0, :2] = IGNORE_INDEX
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    expected = expected[targets.flatten() != IGNORE_INDEX]
    got = token_cross_entropy(logits, targets, chunk_size=3)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), logits)[0], torch.autograd.grad(expected.sum(), logits)[0])


def test_fresh_lora_starts_at_zero_and_moves_after_an_update(tiny_qwen3):
    from thinksafe.model.adapters import LoRA
    from thinksafe.model.loading import load_causal_lm

    torch.manual_seed(0)
    adapter = LoRA(r=4, alpha=8, dropout=0.0)
    model = adapter.apply(load_causal_lm(str(tiny_qwen3)).train())
    reference = adapter.reference(model)
    input_ids = torch.randint(5, 500, (2, 12))
    mask = torch.ones_like(input_ids)
    labels = shift_labels(input_ids)
    kl = ForwardKL(chunk_size=8)

    assert kl(model(input_ids=input_ids, attention_mask=mask).logits, reference.logits(input_ids, mask), labels) == 0

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    loss = F.cross_entropy(model(input_ids=input_ids).logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    opt.step()
    after = kl(model(input_ids=input_ids, attention_mask=mask).logits, reference.logits(input_ids, mask), labels)
    assert after.item() > 1e-6
