"""ForwardKL on logits against a naive full-vocabulary reference; the chunked LM-head loss (thinksafe.model.head_loss)
against materialised logits, alone and inside ThinkSafeModule (tied and untied heads, with and without KL); and a
tiny model with a fresh LoRA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from thinksafe.model.kl import ForwardKL, shift_labels, token_cross_entropy
from thinksafe.rows import IGNORE_INDEX


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
    torch.testing.assert_close(
        torch.autograd.grad(got.sum(), logits)[0], torch.autograd.grad(expected.sum(), logits)[0]
    )


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

    assert (
        kl(model(input_ids=input_ids, attention_mask=mask).logits, reference_logits(reference, input_ids, mask), labels)
        == 0
    )

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    loss = F.cross_entropy(model(input_ids=input_ids).logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    opt.step()
    after = kl(
        model(input_ids=input_ids, attention_mask=mask).logits, reference_logits(reference, input_ids, mask), labels
    )
    assert after.item() > 1e-6


def reference_logits(reference, input_ids, mask):
    hidden, weight = reference.hidden_states(input_ids, mask)
    return F.linear(hidden, weight)


# ------------------------------------------------------------------------------- chunked LM head vs logits
@pytest.mark.parametrize("with_kl", [False, True])
def test_head_loss_equals_materialised_logits_with_gradients(with_kl):
    from thinksafe.model.head_loss import head_loss

    g = torch.Generator().manual_seed(0)
    n, hidden_size, vocab = 23, 16, 97
    hidden = torch.randn(n, hidden_size, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, hidden_size, generator=g)).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    ce_weight = (torch.rand(n, generator=g) > 0.3).float()
    ref_hidden = torch.randn(n, hidden_size, generator=g)
    ref_weight = 0.3 * torch.randn(vocab, hidden_size, generator=g)
    kl_weight = 0.7 * (torch.rand(n, generator=g) > 0.5).float()

    kw = dict(ref_hidden=ref_hidden, ref_weight=ref_weight, kl_weight=kl_weight) if with_kl else {}
    loss, ce, kl = head_loss(hidden, weight, targets, ce_weight, chunk_size=5, **kw)  # 5 chunks, the last partial
    logits = hidden @ weight.T
    expected_ce = F.cross_entropy(logits, targets, reduction="none")
    expected = (ce_weight * expected_ce).sum()
    if with_kl:
        expected_kl = naive_kl(logits, ref_hidden @ ref_weight.T, targets)
        expected = expected + (kl_weight * expected_kl).sum()
        torch.testing.assert_close(kl, expected_kl.detach())
    torch.testing.assert_close(ce, expected_ce.detach())
    torch.testing.assert_close(loss, expected)
    got = torch.autograd.grad(3.0 * loss, [hidden, weight])
    want = torch.autograd.grad(3.0 * expected, [hidden, weight])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def untied_copy(model_dir, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight) * 0.05)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def random_batch(vocab: int):
    from thinksafe.rows import EncodedRow, collate

    g = torch.Generator().manual_seed(1)
    rows = []
    for length, prompt, label in [(19, 6, "vanilla_benign"), (12, 4, "vanilla_harmful"), (16, 9, "adversarial_benign")]:
        ids = torch.randint(10, vocab, (length,), generator=g).tolist()
        rows.append(EncodedRow(ids, [IGNORE_INDEX] * prompt + ids[prompt:], label))
    return collate(rows, pad_id=0)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("kl_weight", [0.0, 0.7], ids=["ce", "ce+kl"])
@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_module_loss_equals_materialised_logits(tiny_qwen3, tmp_path, tied, kl_weight, adapter):
    """The training loss and the gradient of every trainable weight (LoRA A/B, or all weights with the head and
    the tied embedding) equal the computation on full logits."""
    from thinksafe.model.adapters import FullFineTune, LoRA
    from thinksafe.model.module import ThinkSafeModule

    model_dir = tiny_qwen3 if tied else untied_copy(tiny_qwen3, tmp_path)
    torch.manual_seed(0)
    module = ThinkSafeModule(
        str(model_dir),
        adapter=LoRA(r=4, alpha=8, dropout=0.0) if adapter == "lora" else FullFineTune(),
        kl_weight=kl_weight,
        kl_chunk_size=5,
        kl_mode="add",
    )
    module.configure_model()
    model = module.model
    with torch.no_grad():  # off the initial model, so that the KL and its gradient are not trivially 0
        for name, p in model.named_parameters():
            if "lora_B" in name or adapter == "full":
                p.add_(torch.randn_like(p) * 0.05)
    batch = random_batch(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]

    loss = module._loss(batch)[0]
    got = torch.autograd.grad(loss, params)

    targets = shift_labels(batch["labels"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    supervised = targets != IGNORE_INDEX
    expected = (ce * supervised).sum()
    if kl_weight:
        ref = reference_logits(module._reference, batch["input_ids"], batch["attention_mask"])
        kl = (F.softmax(ref, -1) * (F.log_softmax(ref, -1) - F.log_softmax(logits, -1))).sum(-1)
        expected = expected + kl_weight * (kl * (supervised & ~batch["harmful"][:, None])).sum()
    expected = expected / supervised.sum()
    want = torch.autograd.grad(expected, params)
    torch.testing.assert_close(loss, expected)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
