"""What makes a saved adapter loadable and understandable elsewhere: the base model recorded so that
``AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`` finds it from any working directory, and a model card
(``README.md``) saying what was trained on what, instead of PEFT's empty template.

PEFT records ``base_model_name_or_path`` exactly as given; a local model given relative to where ``fit`` ran
(``data/tiny-qwen3``) is then looked up on the Hub from anywhere else. An existing local directory or file is
recorded as an absolute path, a hub id as it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from thinksafe.files import write_json_atomic, write_text_atomic


def portable_base(name_or_path: str) -> str:
    """An absolute path for a local model, the hub id otherwise."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def fix_base_model(directory: str | Path, name_or_path: str) -> str:
    """Rewrite ``base_model_name_or_path`` of ``directory/adapter_config.json`` (when there is one) to
    :func:`portable_base`; returns what was recorded."""
    base = portable_base(name_or_path)
    cfg_path = Path(directory) / "adapter_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if cfg.get("base_model_name_or_path") != base:
            cfg["base_model_name_or_path"] = base
            write_json_atomic(cfg_path, cfg)
    return base


def _number(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def training_summary(module) -> dict[str, Any]:
    """Facts of the run that trained ``module`` (a ThinkSafeModule, with or without a trainer)."""
    hp = dict(module.hparams)
    out: dict[str, Any] = {"base_model": portable_base(hp["name_or_path"]), "hparams": hp}
    trainer = module._trainer
    if trainer is None:
        return out
    out["steps"] = trainer.global_step
    out["epochs"] = trainer.current_epoch
    metrics = {k: _number(v) for k, v in trainer.callback_metrics.items()}
    out["metrics"] = {k: v for k, v in sorted(metrics.items()) if v is not None}
    dm = getattr(trainer, "datamodule", None)
    if dm is not None:
        out["recipe"] = getattr(dm, "recipe", None)
        responses = getattr(dm, "responses", None)
        stats_path = Path(str(getattr(dm, "output_dir", ""))) / "stats.json"
        if responses:
            out["data"] = {"responses": str(responses)}
        elif stats_path.is_file():
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
            out["data"] = {"self_generated": str(stats_path.parent.resolve()), "stats": stats}
    return out


def model_card(summary: dict[str, Any]) -> str:
    import yaml

    base = summary["base_model"]
    hp = summary["hparams"]
    adapter = hp.get("adapter") or {}
    meta: dict[str, Any] = {
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["thinksafe", "safety", "reasoning", "lora", "sft"],
    }
    if not Path(base).is_absolute():  # the Hub validates base_model as a hub id: a local path is named below
        meta["base_model"] = base
    data = summary.get("data") or {}
    stats = data.get("stats") or {}
    metrics = summary.get("metrics") or {}
    evals = {k: v for k, v in metrics.items() if k.startswith(("probe/", "eval/"))}
    train = {k: v for k, v in metrics.items() if k.startswith("train/") and k.endswith("_epoch")}

    lines = [
        f"# ThinkSafe adapter for {Path(base).name}",
        "",
        f"A {adapter.get('class_path', 'LoRA').rsplit('.', 1)[-1]} adapter trained by "
        "thinksafe (ThinkSafe, Lee et al. 2026, arXiv 2601.23143): supervised fine-tuning "
        + (
            "on the model's own refusal-steered, guard-filtered reasoning traces, on the unsteered prompts."
            if (summary.get("data") or {}).get("stats")
            else "on the data named below."
        ),
        "",
        "## Load it",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "from transformers import AutoTokenizer",
        "",
        "model = AutoPeftModelForCausalLM.from_pretrained(ADAPTER_DIR)",
        "tokenizer = AutoTokenizer.from_pretrained(ADAPTER_DIR)",
        "```",
        "",
        f"Base model: `{base}`.",
        "",
        "## Recipe",
        "",
        f"- adapter: `{json.dumps(adapter.get('init_args', adapter))}`",
    ]
    for key in ("lr", "weight_decay", "warmup_ratio", "kl_weight", "kl_mode", "dtype"):
        if key in hp:
            lines.append(f"- {key}: `{hp[key]}`")
    if "steps" in summary:
        lines.append(f"- optimizer steps: {summary['steps']}, epochs: {summary['epochs'] + 1}")
    if summary.get("recipe"):
        lines += [
            "",
            "<details><summary>resolved recipe</summary>",
            "",
            "```yaml",
            yaml.safe_dump(summary["recipe"], sort_keys=False).rstrip(),
            "```",
            "",
            "</details>",
        ]
    lines += ["", "## Data", ""]
    if data.get("responses"):
        lines.append(f"Trained on the responses in `{data['responses']}`.")
    elif stats:
        lines.append(
            f"Trained on the self-generated set in `{data['self_generated']}` (a Hugging Face dataset: "
            "`load_dataset(that_dir)`)."
        )
        lines += ["", "| label | samples | kept | acceptance |", "|---|---|---|---|"]
        for label, d in stats.get("per_label", {}).items():
            lines.append(f"| {label} | {d['samples']} | {d['kept']} | {d['acceptance_rate']:.1%} |")
        guard = stats.get("guard") or {}
        if guard:
            lines += ["", f"Guard: {guard.get('name')} — {guard.get('note')}."]
        if stats.get("data_starved"):
            lines += ["", f"**{stats['data_starved_message']}**"]
    else:
        lines.append("Not recorded (the module was saved outside `thinksafe fit`).")
    if train:
        lines += ["", "## Training (last epoch)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in train.items()]
    if evals:
        lines += ["", "## Evaluation during training", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in evals.items()]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(lines) + "\n"


def write_model_card(directory: str | Path, module) -> None:
    """Record a portable base model in ``directory``'s adapter config and write its README.md (the model card)
    from what ``module`` and its trainer know."""
    summary = training_summary(module)
    fix_base_model(directory, module.hparams["name_or_path"])
    write_text_atomic(Path(directory) / "README.md", model_card(summary))
