"""The finished self-generated set as a Hugging Face dataset: ``train.jsonl`` (the kept rows in the columns TRL
reads) and a dataset card (``README.md``) whose YAML ``configs:`` name the files of each config.

``datasets.load_dataset(output_dir)`` then gives a ``train`` split of the kept rows, and the audit trail stays
where :mod:`thinksafe.data.selfgen` writes and resumes it, loadable as other configs of the same directory
(``load_dataset(output_dir, "samples")``). The card's YAML is the metadata the Hub reads (model, prompts,
steering, guard, acceptance per label, license of the prompts); written with ``yaml.safe_dump`` so that any
prompt text or path is quoted correctly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from thinksafe.files import write_text_atomic

TRAIN_FILE = "train.jsonl"
CARD_FILE = "README.md"
#: config name -> (file, what it holds); ``default`` is what ``load_dataset(output_dir)`` returns.
CONFIGS = {
    "default": (TRAIN_FILE, "the kept rows: what `thinksafe fit` trains on"),
    "samples": ("samples.jsonl", "every sampled response with its think-block check and guard verdict, kept or not"),
    "sampled": ("sampled.jsonl", "every sampled response before the guard (phase 1), with the steered prompt sent"),
    "stats": ("stats.json", "counts and acceptance rates per label, reject reasons"),
    "manifest": ("manifest.json", "settings, resolved recipe, package versions, settings fingerprint"),
}


def where_line(output_dir: str | Path) -> str:
    """What the data stage wrote and where, for the console."""
    out = Path(output_dir)
    return (
        f"generate: the set is in {out} — datasets.load_dataset({str(out)!r}) gives its kept rows "
        f"({TRAIN_FILE}); {CARD_FILE} is its dataset card, samples.jsonl the full audit trail"
    )


def train_record(row: dict[str, Any]) -> dict[str, Any]:
    """One kept row in the columns TRL's SFTTrainer reads: ``messages`` (a chat) and ``prompt``/``completion``.
    The prompt is the unsteered instruction the model is trained on, never the steered one it was sampled with."""
    return {
        "messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}],
        "prompt": row["prompt"],
        "completion": row["response"],
        "label": row["label"],
        "harmful": bool(row.get("harmful", False)),
        "prompt_index": row["prompt_index"],
        "sample_index": row["sample_index"],
        "num_tokens": row.get("num_tokens"),
        "source": row.get("source"),
    }


def write_hf_dataset(output_dir: str | Path, samples: list[dict[str, Any]], stats: dict[str, Any]) -> Path:
    """Write ``train.jsonl`` and the card into a finished set's ``output_dir`` (atomically each); returns the
    card's path. ``samples`` are the rows of samples.jsonl, ``stats`` those of stats.json."""
    out = Path(output_dir)
    kept = [train_record(r) for r in samples if r["kept"]]
    write_text_atomic(out / TRAIN_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    manifest = _read(out / "manifest.json")
    card = out / CARD_FILE
    write_text_atomic(card, dataset_card(manifest, stats, samples, out))
    return card


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def prompt_files(samples: list[dict[str, Any]]) -> list[str]:
    """The prompt sources of the set (``file`` of each row's ``file:line``, or a hub id), in first-seen order."""
    seen: dict[str, None] = {}
    for r in samples:
        where = str(r.get("source") or "")
        if where:
            seen.setdefault(re.sub(r"(:\d+|\[\d+\])$", "", where), None)
    return list(seen)


def prompt_license(sources: list[str]) -> dict[str, str]:
    """What is known of the prompts' license: a ``License:`` line of a SOURCE.md/README.md beside a local
    prompt file, or a LICENSE file there. thinksafe cannot know the license of a user's prompts, so anything
    else is ``other`` with a note to fill it in."""
    for source in sources:
        folder = Path(source).parent
        if not Path(source).is_file():
            continue
        for name in ("SOURCE.md", "README.md"):
            doc = folder / name
            if doc.is_file():
                m = re.search(
                    r"^[-*\s]*License:\s*(.+)$", doc.read_text(encoding="utf-8", errors="replace"), re.M | re.I
                )
                if m:
                    return {
                        "license": "other",
                        "license_name": m.group(1).strip()[:200],
                        "license_link": str(doc.resolve()),
                    }
        for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
            if (folder / name).is_file():
                return {
                    "license": "other",
                    "license_name": "see LICENSE beside the prompts",
                    "license_link": str((folder / name).resolve()),
                }
    return {"license": "other", "license_name": "the license of the prompt source (not recorded; fill it in)"}


def _card_metadata(manifest: dict[str, Any], stats: dict[str, Any], sources: list[str]) -> dict[str, Any]:
    settings = manifest.get("settings", {})
    guard = stats.get("guard") or manifest.get("guard") or {}
    meta: dict[str, Any] = {
        **prompt_license(sources),
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["thinksafe", "safety", "reasoning", "self-generated"],
        "pretty_name": f"ThinkSafe self-generated safety set ({Path(str(settings.get('model', '?'))).name})",
        "configs": [
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": file}],
                **({"default": True} if name == "default" else {}),
            }
            for name, (file, _) in CONFIGS.items()
        ],
        "thinksafe": {
            "model": settings.get("model"),
            "prompts": {"sources": sources, "count": settings.get("prompts")},
            "steering_template": settings.get("steering_template"),
            "sampling": settings.get("sampling"),
            "reasoning_format": settings.get("reasoning_format"),
            "guard": {"name": guard.get("name"), "class": guard.get("class"), "note": guard.get("note")},
            "acceptance": {label: round(d["acceptance_rate"], 4) for label, d in stats.get("per_label", {}).items()},
            "kept": stats.get("all", {}).get("kept"),
            "samples": stats.get("all", {}).get("samples"),
            "data_starved": stats.get("data_starved"),
            "fingerprint": manifest.get("fingerprint"),
        },
    }
    return meta


def dataset_card(manifest: dict[str, Any], stats: dict[str, Any], samples: list[dict[str, Any]], out: Path) -> str:
    import yaml

    sources = prompt_files(samples)
    meta = _card_metadata(manifest, stats, sources)
    ts = meta["thinksafe"]
    rows = "\n".join(
        f"| {label} | {d['prompts']} | {d['samples']} | {d['format_ok']} | {d['safe']} | {d['kept']} | "
        f"{d['acceptance_rate']:.1%} |"
        for label, d in stats.get("per_label", {}).items()
    )
    reasons = "\n".join(f"- {k}: {v}" for k, v in stats.get("reject_reasons", {}).items()) or "- none"
    configs = "\n".join(f"| `{name}` | `{file}` | {what} |" for name, (file, what) in CONFIGS.items())
    guard = ts["guard"]
    starved = f"\n**{stats['data_starved_message']}**\n" if stats.get("data_starved") else ""
    body = f"""# {meta["pretty_name"]}

Reasoning traces that **{ts["model"]}** wrote for its own prompts behind a refusal-steering prefix, kept when the
think block closed and the guard found them safe (ThinkSafe, Lee et al. 2026, arXiv 2601.23143). Made by
`thinksafe generate`; the rows pair each response with the *unsteered* prompt, as training uses them.

```python
from datasets import load_dataset

kept = load_dataset("{out}")["train"]                     # {ts["kept"]} kept rows: messages, prompt, completion, label
audit = load_dataset("{out}", "samples")["train"]         # all {ts["samples"]} samples with verdicts
```

## Configs

| config | file | rows |
|---|---|---|
{configs}

## How it was made

- model: `{ts["model"]}`
- prompts: {", ".join(f"`{s}`" for s in sources) or "(unknown)"} ({ts["prompts"]["count"]} prompts); license:
  {meta.get("license_name", meta["license"])}
- steering template: `{json.dumps(ts["steering_template"])}`
- sampling: `{json.dumps(ts["sampling"])}`, reasoning format `{ts["reasoning_format"]}`
- guard: {guard["name"]} (`{guard["class"]}`) — {guard["note"]}

## Acceptance per label

| label | prompts | samples | think block closed | safe | kept | acceptance |
|---|---|---|---|---|---|---|
{rows}

Rejected samples by reason:

{reasons}
{starved}
The settings, resolved recipe and package versions are in `manifest.json`; the license of the rows is that of
the prompts (above) and of the model's outputs under its own license.
"""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=10_000) + "---\n\n" + body
