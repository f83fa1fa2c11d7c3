"""SafetyProbes in a real 2-step CPU fit of a tiny model, through a plain LightningModule of our own."""

import csv
import dataclasses

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from thinksafe.errors import UserError
from thinksafe.eval.probes import SafetyProbes
from thinksafe.model.loading import load_causal_lm, load_tokenizer


class TinyLM(pl.LightningModule):
    """The two attributes the callback relies on: ``model`` (a transformers causal LM) and ``tokenizer``."""

    def __init__(self, path):
        super().__init__()
        self.model = load_causal_lm(str(path)).train()  # from_pretrained gives eval mode
        self.tokenizer = load_tokenizer(str(path))

    def training_step(self, batch, batch_idx):
        ids = batch[0]
        return self.model(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.1)


@pytest.fixture()
def probes(benchmark_dir):
    # sampled: greedy decoding of a random model gives only newlines, which no judge can judge
    return SafetyProbes(
        harmful="strongreject",
        benign="xstest",
        math="gsm8k",
        every_n_steps=1,
        limit=2,
        max_new_tokens=12,
        do_sample=True,
        benchmark_dir=str(benchmark_dir),
    )


def test_probes_log_every_step_of_a_fit(tiny_qwen3, probes, tmp_path):
    module = TinyLM(tiny_qwen3)
    data = torch.utils.data.TensorDataset(torch.randint(5, 200, (4, 16)))
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=[CSVLogger(tmp_path), TensorBoardLogger(tmp_path / "tb", name="", version="")],
        callbacks=[probes],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=50,
    )
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))

    assert [h["step"] for h in probes.history] == [1, 2]
    names = {"harmful_compliance_rate", "over_refusal_rate", "reasoning_accuracy"}
    for h in probes.history:
        assert set(h) == {"step"} | names  # a probe set that cannot be scored is an error, never left out
        assert all(0.0 <= v <= 1.0 for k, v in h.items() if k != "step")
    assert set().union(*probes.history) == {"step"} | names
    assert {f"probe/{n}" for n in names} <= set(trainer.callback_metrics)
    # sent to the logger at their own steps although log_every_n_steps is larger
    with open(trainer.logger.experiment.metrics_file_path) as f:
        logged = [row for row in csv.DictReader(f) if row.get("probe/over_refusal_rate")]
    assert [int(row["step"]) for row in logged] == [1, 2]
    assert module.model.training  # generation switched to eval mode and back
    # the generated samples, as text in TensorBoard at each probe step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    for name in names:
        events = acc.Tensors(f"probe/samples/{name}/text_summary")
        assert [e.step for e in events] == [1, 2]
        text = events[-1].tensor_proto.string_val[0].decode()
        assert "**prompt**" in text and "**response**" in text
        assert probes.samples[name][0]["prompt"].splitlines()[0][:30] in text  # the last probe's first prompt
    assert any(not torch.equal(a, b) for a, b in zip(before, module.model.parameters()))  # it did train


def test_probe_sampling_leaves_the_training_rng_alone(tiny_qwen3, benchmark_dir):
    probes = SafetyProbes(
        math="gsm8k", limit=1, max_new_tokens=4, do_sample=True, seed=3, benchmark_dir=str(benchmark_dir)
    )
    module = TinyLM(tiny_qwen3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = probes.probe(module.model, module.tokenizer)
    assert torch.equal(torch.rand(3), expected)
    assert probes.probe(module.model, module.tokenizer) == first  # seeded: the same samples again


def test_probe_sets_are_checked_at_construction(benchmark_dir):
    bench = str(benchmark_dir)
    with pytest.raises(UserError, match="strongreject holds no benign prompts"):
        SafetyProbes(benign="strongreject", benchmark_dir=bench)
    with pytest.raises(UserError, match="math=xstest is not a reasoning benchmark"):
        SafetyProbes(math="xstest", benchmark_dir=bench)
    with pytest.raises(UserError, match="at least one"):
        SafetyProbes()


def test_probes_sample_through_the_transformers_sampler(tiny_qwen3, benchmark_dir):
    """The probe's greedy texts are the transformers sampler's on the same weights; the training model stays
    in training mode and its tokenizer's padding side is left alone."""
    from thinksafe.sampling import GREEDY, TransformersSampler

    probes = SafetyProbes(math="gsm8k", limit=2, max_new_tokens=6, benchmark_dir=str(benchmark_dir))
    module = TinyLM(tiny_qwen3)
    side = module.tokenizer.padding_side
    prompts = ["What is 2 + 3?", "Name a colour."]
    texts = probes._generate(module.model, module.tokenizer, prompts, {"enable_thinking": True})
    assert module.model.training and module.tokenizer.padding_side == side

    sampler = TransformersSampler(dtype="float32")
    params = dataclasses.replace(GREEDY, max_tokens=6)
    chats = [[{"role": "user", "content": p}] for p in prompts]
    expected = [c[0].text for c in sampler.generate(str(tiny_qwen3), chats, params, {"enable_thinking": True})]
    sampler.close()
    assert texts == expected and all(texts)


def test_a_probe_set_the_judge_cannot_score_is_an_error(tiny_qwen3, benchmark_dir):
    # greedy decoding of a random model gives only newlines: no judge can say whether they are harmful
    probes = SafetyProbes(harmful="strongreject", limit=2, max_new_tokens=12, benchmark_dir=str(benchmark_dir))
    model, tokenizer = load_causal_lm(str(tiny_qwen3)), load_tokenizer(str(tiny_qwen3))
    with pytest.raises(UserError, match="harmful_compliance_rate probe could not score any of its 2 samples"):
        probes.probe(model, tokenizer)
    assert [row["response"].strip() for row in probes.samples["harmful_compliance_rate"]] == ["", ""]
