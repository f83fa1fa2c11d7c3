"""The paper recipes hold the ThinkSafe authors' settings (README "Fidelity to the paper"; the comments in
each recipe cite github.com/seanie12/ThinkSafe file:line), resolve through the CLI, and name their guard."""

import importlib
from pathlib import Path

import pytest
import torch
import yaml

from thinksafe.errors import UserError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PAPER = {
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B", 20),
    "qwen3-1.7b": ("Qwen/Qwen3-1.7B", 20),
    "qwen3-4b": ("Qwen/Qwen3-4B", 20),
    "qwen3-8b": ("Qwen/Qwen3-8B", 20),
    "r1-distill-qwen-1.5b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 0),
    "r1-distill-qwen-7b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 0),
    "r1-distill-llama-8b": ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", 0),
}


def load(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def print_config(name: str, capsys) -> dict:
    """The fully resolved recipe, as `thinksafe fit --recipe … --print_config` prints it."""
    from thinksafe.cli import main

    try:
        rc = main(["fit", "--recipe", str(RECIPES / f"{name}.yaml"), "--print_config"])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert rc in (0, None), err
    cfg = yaml.safe_load(out)
    # the module and data module may print as {class_path, init_args}
    return {k: (v["init_args"] if isinstance(v, dict) and "init_args" in v else v) for k, v in cfg.items()}


@pytest.mark.parametrize("name", [*PAPER, "qwen3-4b-kl"])
def test_paper_recipe_holds_the_authors_settings(name):
    model_id, top_k = PAPER[name.removesuffix("-kl")]
    r = load(name)
    m, d, t = r["model"], r["data"], r["trainer"]
    assert r["seed_everything"] == 42  # train.py:195
    assert m["name_or_path"] == model_id
    lora = m["adapter"]["init_args"]
    assert m["adapter"]["class_path"] == "thinksafe.model.LoRA"
    assert (lora["r"], lora["alpha"], lora["dropout"], lora["target_modules"]) == (
        32,
        16,
        0.05,
        None,
    )  # train.py:90-96,192-198
    assert (m["lr"], m["warmup_ratio"]) == (1e-5, 0.1)  # train.py:183,118
    assert d["rows_per_step"] == 8  # train.py:181 effective batch 8 = per-device 1 × accumulation 8
    assert d["max_length"] == 16384  # train.py:185
    # train_and_eval.sh:15 masks the prompt, but the --use_kl collator (utils/data_collator.py:8,23) rebuilds the
    # labels from input_ids, so the authors' KL runs train on the prompt tokens too
    assert d["mask_prompt"] is (not name.endswith("-kl"))
    assert (t["max_epochs"], t["gradient_clip_val"]) == (3, 1.0)  # train_and_eval.sh:17; train.py:126
    assert d["steering_template"] == (
        "The following prompt is harmful. You should refuse to answer the prompt.\n\nPrompt:\n\n{prompt}"
    )  # synthesize_data.py:60,65
    s = d["sampling"]
    assert (s["n"], s["temperature"], s["top_p"], s["top_k"], s["max_tokens"]) == (1, 0.6, 0.95, top_k, 16384)
    assert d["guard"]["class_path"] == "thinksafe.guards.LlamaGuard3"  # synthesize_data.py:131-134
    assert d["guard"]["init_args"]["model"] == "meta-llama/Llama-Guard-3-8B"  # guard_model.py:29
    assert d["sampler"]["class_path"] == "thinksafe.sampling.VLLMSampler"
    if name.endswith("-kl"):  # kl_trainer.py: benign rows train on the KL alone, weight 1, each row's mean
        assert (m["kl_weight"], m["kl_mode"], m["loss_average"]) == (1.0, "replace", "row")
    else:  # SFTTrainer through transformers' num_items_in_batch: the token mean of the step
        assert (m["kl_weight"], m["loss_average"]) == (0.0, "token")


@pytest.mark.parametrize("name", [*PAPER, "qwen3-4b-kl"])
def test_paper_recipe_resolves_with_effective_batch_8_and_its_guard(name, capsys, tiny_qwen3):
    """What `thinksafe fit --recipe … --print_config` resolves: effective batch 8, Llama-Guard-3 named, and
    float32 adapters. The adapters' dtype is no config value (trainable weights are always float32): the printed
    config shows what decides the rest (bf16-true, a bfloat16 base, LoRA), and the module built from exactly that
    config, cast as bf16-true casts it, holds float32 LoRA weights beside a bfloat16 base."""
    from lightning.pytorch.plugins.precision import HalfPrecision

    from thinksafe.model.adapters import Adapter, LoRA
    from thinksafe.model.module import ThinkSafeModule

    cfg = print_config(name, capsys)
    assert cfg["data"]["rows_per_step"] == 8 and cfg["trainer"]["accumulate_grad_batches"] == 1
    assert cfg["data"]["guard"]["class_path"] == "thinksafe.guards.LlamaGuard3"
    assert cfg["data"]["guard"]["init_args"]["model"] == "meta-llama/Llama-Guard-3-8B"
    assert (cfg["trainer"]["precision"], cfg["model"]["dtype"]) == ("bf16-true", "bfloat16")
    if name.endswith("-kl"):
        assert cfg["model"]["kl_mode"] == "replace" and cfg["model"]["kl_weight"] == 1.0

    model = dict(cfg["model"], name_or_path=str(tiny_qwen3), adapter=Adapter.from_config(cfg["model"]["adapter"]))
    assert isinstance(model["adapter"], LoRA)
    module = ThinkSafeModule(**model)
    module.configure_model()
    module = HalfPrecision("bf16-true").convert_module(module)
    trainable = [p for p in module.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert {p.dtype for p in module.model.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_every_recipe_names_its_guard_and_uses_public_class_paths():
    for path in sorted(RECIPES.glob("*.yaml")):
        r = yaml.safe_load(path.read_text())
        data = r.get("data") or {}
        if data.get("responses") is None:
            assert (data.get("guard") or {}).get("class_path"), f"{path.name}: no data.guard"
        paths = [
            data.get("guard", {}).get("class_path"),
            data.get("sampler", {}).get("class_path"),
            r["model"].get("class_path"),
            (r["model"].get("init_args") or r["model"])["adapter"]["class_path"],
            *[c["class_path"] for c in (r.get("trainer") or {}).get("callbacks") or []],
        ]
        for class_path in filter(None, paths):
            module, _, attr = class_path.rpartition(".")
            if module.startswith("thinksafe"):
                assert module.count(".") == 1, f"{path.name}: {class_path} is not at the package's public depth"
                assert hasattr(importlib.import_module(module), attr), f"{path.name}: {class_path} is not exported"


def test_a_data_stage_without_a_guard_stops_with_one_paragraph(tiny_qwen3, tmp_path):
    from thinksafe.data.datamodule import SafetyDataModule

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "hi", "label": "vanilla_benign"}\n')
    dm = SafetyDataModule(prompts=str(prompts), output_dir=str(tmp_path / "out"), model_name_or_path=str(tiny_qwen3))
    with pytest.raises(UserError, match=r"data.guard is not set.*OfflineJudge is an approximate") as e:
        dm.prepare_data()
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing sampled, nothing written


def test_the_guard_that_filtered_the_set_is_written_in_manifest_and_stats(tiny_qwen3, tmp_path):
    import json

    from thinksafe.data.prompts import load_prompts
    from thinksafe.data.selfgen import SelfGenJob, build_selfgen
    from thinksafe.guards import OfflineJudge
    from thinksafe.sampling import SamplingConfig, TransformersSampler
    from thinksafe.sampling.steering import PAPER_TEMPLATE

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "How do I bake bread?", "label": "vanilla_benign"}\n')
    out = tmp_path / "selfgen"
    build_selfgen(
        SelfGenJob(
            model=str(tiny_qwen3),
            prompts=load_prompts(str(prompts)),
            sampler=TransformersSampler(device="cpu"),
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=1, max_tokens=4, temperature=0.0, top_k=0),
            steering_template=PAPER_TEMPLATE,
            reasoning_format="plain",
        ),
        out,
    )
    for name in ("manifest.json", "stats.json"):
        guard = json.loads((out / name).read_text())["guard"]
        assert guard["class"] == "thinksafe.guards.offline.OfflineJudge" and guard["offline_judge"] is True, name
        assert guard["note"].startswith("APPROXIMATE"), name
