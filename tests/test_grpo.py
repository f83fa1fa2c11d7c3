"""GRPO (thinksafe.rl): the loss against a hand computation, the rewards, the module's log-probabilities against
the model's own logits, and a short real fit on the testbed that raises the mean reward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from thinksafe.guards.base import GuardVerdict
from thinksafe.rl.loss import group_advantages, grpo_loss, k3_kl
from thinksafe.rl.rewards import guard_rewards, safe_probability, think_format_reward

REPO = Path(__file__).resolve().parents[1]

# a fixed batch: 2 prompts × G=2 completions, 3 completion positions, the last one padding in rows 1 and 3
REWARDS = [1.0, 0.0, 0.5, 0.5]
LOGPS = [[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0], [-2.0, -0.1, -0.7], [-0.9, -0.4, 0.0]]
OLD = [[-1.5, -1.7, -0.5], [-0.6, -0.8, 0.0], [-2.0, -0.3, -0.9], [-0.9, -0.4, 0.0]]
REF = [[-1.3, -2.0, -0.2], [-0.3, -1.5, 0.0], [-1.0, -0.1, -0.7], [-1.9, -0.2, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]]


def _hand_advantages() -> list[float]:
    out = []
    for g in range(2):
        group = REWARDS[2 * g : 2 * g + 2]
        mean = sum(group) / 2
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (2 - 1))  # Bessel, as torch.std / TRL's nanstd
        out += [(r - mean) / (std + 1e-4) for r in group]
    return out


def _hand_loss(beta: float, eps: float) -> float:
    adv = _hand_advantages()
    per_row = []
    for i in range(4):
        total, n = 0.0, 0
        for t in range(3):
            if not MASK[i][t]:
                continue
            ratio = math.exp(LOGPS[i][t] - OLD[i][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            d = REF[i][t] - LOGPS[i][t]
            total += -min(ratio * adv[i], clipped * adv[i]) + beta * (math.exp(d) - d - 1)
            n += 1
        per_row.append(total / n)
    return sum(per_row) / 4


def test_group_advantages_are_normalised_per_group():
    adv = group_advantages(torch.tensor(REWARDS), 2)
    assert adv.tolist() == pytest.approx(_hand_advantages(), abs=1e-6)
    # a group with equal rewards has no advantage (its std is 0: only the 1e-4 guards the division)
    assert adv[2:].tolist() == [0.0, 0.0]
    assert group_advantages(torch.tensor(REWARDS), 2, scale=False).tolist() == pytest.approx([0.5, -0.5, 0, 0])


@pytest.mark.parametrize(("beta", "eps"), [(0.0, 0.2), (0.04, 0.2), (0.5, 0.1)])
def test_clipped_surrogate_and_k3_kl_equal_a_hand_computation(beta, eps):
    logps = torch.tensor(LOGPS, requires_grad=True)
    out = grpo_loss(
        logps,
        torch.tensor(OLD),
        group_advantages(torch.tensor(REWARDS), 2),
        torch.tensor(MASK),
        torch.tensor(REF),
        beta=beta,
        epsilon_low=eps,
    )
    assert float(out.loss.detach()) == pytest.approx(_hand_loss(beta, eps), rel=1e-5)
    kl = [
        math.exp(REF[i][t] - LOGPS[i][t]) - (REF[i][t] - LOGPS[i][t]) - 1
        for i in range(4)
        for t in range(3)
        if MASK[i][t]
    ]
    assert float(out.kl) == pytest.approx(sum(kl) / len(kl), rel=1e-5)
    out.loss.backward()
    assert logps.grad[1, 2] == 0 and logps.grad[3, 2] == 0  # padding gets no gradient


def test_the_clip_binds_where_the_ratio_leaves_the_trust_region():
    # the min takes the clipped term where the ratio moved past the bound in the advantage's direction: row 0,
    # token 0 (ratio e^0.5 > 1.2, A > 0) and row 1, token 1 (ratio e^-0.4 < 0.8, A < 0); row 1, token 0 (ratio
    # e^0.3 > 1.2 but A < 0) and row 0, token 1 (ratio e^-0.3 < 0.8 but A > 0) keep the unclipped, smaller term
    out = grpo_loss(
        torch.tensor(LOGPS),
        torch.tensor(OLD),
        group_advantages(torch.tensor(REWARDS), 2),
        torch.tensor(MASK),
        epsilon_low=0.2,
    )
    adv = _hand_advantages()
    clipped = 0
    for i in range(4):
        for t in range(3):
            if MASK[i][t]:
                ratio = math.exp(LOGPS[i][t] - OLD[i][t])
                c = min(max(ratio, 0.8), 1.2)
                clipped += ratio * adv[i] > c * adv[i]
    assert clipped == 2
    assert float(out.clip_fraction) == pytest.approx(clipped / sum(map(sum, MASK)))


def test_on_policy_gradient_is_the_advantage_weighted_policy_gradient():
    # old = current (one update per batch of samples): ratio 1, the gradient is −A_i / (|o_i| · B) per token
    logps = torch.tensor(LOGPS, requires_grad=True)
    grpo_loss(logps, logps.detach(), group_advantages(torch.tensor(REWARDS), 2), torch.tensor(MASK)).loss.backward()
    adv = _hand_advantages()
    for i in range(4):
        n = sum(MASK[i])
        for t in range(3):
            assert float(logps.grad[i, t]) == pytest.approx(-adv[i] / n / 4 if MASK[i][t] else 0.0, abs=1e-6)


def test_k3_is_zero_at_the_reference_and_positive_elsewhere():
    x = torch.tensor([-1.0, -2.0, -0.1])
    assert k3_kl(x, x).tolist() == [0.0, 0.0, 0.0]
    assert (k3_kl(x, x - 0.5) > 0).all()


def test_format_reward_is_the_authors_rule():
    assert think_format_reward("<think>\nx\n</think>\n\nanswer") == 1.0
    assert think_format_reward("<think>\nx\n</think>") == 1.0  # the authors check the tags only
    assert think_format_reward("answer") == 0.0
    assert think_format_reward("<think>\nx") == 0.0
    assert think_format_reward("</think> a <think>") == 0.0
    assert think_format_reward("<think>a</think><think>b</think>") == 0.0


def test_guard_reward_is_p_safe():
    assert safe_probability(GuardVerdict("safe", 0.2)) == pytest.approx(0.8)  # Llama-Guard: 1 − P(unsafe)
    assert safe_probability(GuardVerdict("unsafe", 0.9)) == pytest.approx(0.1)
    assert safe_probability(GuardVerdict("safe")) == 1.0  # a verdict without a score
    assert safe_probability(GuardVerdict("unsafe")) == 0.0
    assert safe_probability(GuardVerdict("error", None, "unclosed think block")) == 0.0


def test_guard_rewards_on_harmful_prompts_only():
    from thinksafe.guards import OfflineJudge

    prompts = ["How do I poison my cousin?", "What is 2 + 3?"]
    responses = ["<think>\nharm\n</think>\n\nI'm sorry, I can't help with that.", "<think>\nadd\n</think>\n\n5"]
    rewards, calls = guard_rewards(OfflineJudge(), prompts, responses, [True, False], on="harmful")
    assert calls == 1 and rewards == [1.0, 0.0]
    rewards, calls = guard_rewards(OfflineJudge(), prompts, responses, [True, False], on="all")
    assert calls == 2 and rewards[0] == 1.0


def _data(prompts: Path, model: str, out: Path, sampler=None, batch_size: int = 4):
    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.guards import OfflineJudge
    from thinksafe.sampling import TransformersSampler

    return SafetyDataModule(
        prompts=str(prompts),
        output_dir=str(out / "unused"),
        sampler=sampler or TransformersSampler(batch_size=64),
        guard=OfflineJudge(),
        batch_size=batch_size,
        max_length=512,
        model_name_or_path=model,
        in_distribution_rows=0,
    )


def test_token_logprobs_equal_the_models_logits(tiny_qwen3, tmp_path):
    """The chunked, recomputed head gives log_softmax(logits / T) of the model at completion positions, with the
    same gradient."""
    from lightning.pytorch import Trainer

    from thinksafe.model import LoRA
    from thinksafe.model.kl import shift_labels
    from thinksafe.rl import GRPOModule
    from thinksafe.rows import IGNORE_INDEX, EncodedRow, collate

    module = GRPOModule(
        str(tiny_qwen3),
        adapter=LoRA(r=4, alpha=8, dropout=0.0),
        temperature=0.7,
        logprob_chunk_size=5,
        num_generations=2,
    )
    module.configure_model()
    with torch.no_grad():  # a non-zero adapter, so the LoRA path is part of the gradient
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    rows = [
        EncodedRow([5, 6, 7, 8, 9, 10], [IGNORE_INDEX] * 3 + [8, 9, 10], "vanilla_harmful"),
        EncodedRow([5, 6, 11, 12], [IGNORE_INDEX] * 2 + [11, 12], "vanilla_benign"),
    ]
    batch = collate(rows, pad_id=0)
    targets = shift_labels(batch["labels"])
    from thinksafe.model.head_loss import final_hidden, output_weight

    hidden = final_hidden(module.model, batch["input_ids"], batch["attention_mask"])
    ours = module._token_logps(hidden, output_weight(module.model), targets)
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    full = torch.gather((logits / 0.7).log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    full = full * (targets != IGNORE_INDEX)
    assert torch.allclose(ours, full, atol=1e-5)
    params = [p for p in module.model.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(ours.sum(), params, retain_graph=True)
    g_full = torch.autograd.grad(full.sum(), params)
    for a, b in zip(g_ours, g_full):
        assert torch.allclose(a, b, atol=1e-5)
    del Trainer


@pytest.mark.slow
def test_short_testbed_fit_raises_mean_reward(tmp_path):
    """Real GRPO on the shipped testbed model (CPU, in-process sampling, offline judge). At the authors'
    temperature the testbed model never refuses an unsteered harmful request, so every reward of a group is equal
    and nothing is learned (see README); at temperature 2 its completions break the think format about half of the
    time, the format reward varies within groups, and GRPO must raise it: the mean reward of the same prompts,
    same seeds, is higher after a few steps than before."""
    from lightning.pytorch import Trainer, seed_everything

    from thinksafe.model import LoRA
    from thinksafe.rl import GRPOModule

    # seeded: the LoRA init and the training rollouts otherwise take the global RNG as earlier tests left it. At 24
    # steps the gain (same prompts, same rollout seeds: 0.547 before) ranged 0.05-0.27 over seeds 0-4 and test
    # orders, twice under the 0.1 asserted; at 36 steps 0.16-0.25
    seed_everything(0)
    rows = [json.loads(line) for line in (REPO / "data/testbed/prompts.jsonl").read_text().splitlines()]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [r for r in rows if "harmful" in r["label"]][:8]))
    module = GRPOModule(
        str(REPO / "data/testbed/model"),
        adapter=LoRA(r=16, alpha=32, dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"]),
        num_generations=8,
        beta=0.04,
        temperature=2.0,
        max_completion_length=96,
        lr=2e-3,
        warmup_ratio=0.0,
    )
    dm = GRPOModule.online_data(_data(prompts, str(REPO / "data/testbed/model"), tmp_path))
    trainer = Trainer(
        accelerator="cpu",
        max_steps=36,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )

    def mean_reward() -> float:
        return float(
            torch.cat(
                [module.rollout(list(range(i, i + 4)), round_index=10_000, data=dm).rewards for i in (0, 4)]
            ).mean()
        )

    module.configure_model()
    dm.sampler.attach(module.hparams.name_or_path, module.model, module.tokenizer)
    before = mean_reward()
    trainer.fit(module, datamodule=dm)
    dm.sampler.attach(module.hparams.name_or_path, module.model, module.tokenizer)  # closed when training ended
    after = mean_reward()
    print(f"mean reward before {before:.3f} after {after:.3f}")
    assert module.cost["completions"] == 36 * 4 * 8 and module.cost["generated_tokens"] > 0
    assert module.cost["guard_calls"] == module.cost["completions"]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert after > before + 0.1, (before, after)
