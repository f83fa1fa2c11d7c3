"""``thinksafe testbed build``: the testbed's data sets and model, built once and cached in one directory.

The directory (``data/testbed`` by default, shipped built with the repository):

* ``prompts.jsonl`` — the self-generation prompt set (instruction, label), train split;
* ``teacher_responses.jsonl`` — the same prompts answered in the teacher style (instruction, response, label);
* ``eval/harmful.jsonl``, ``eval/benign.jsonl``, ``eval/math.jsonl`` — the held-out evaluation sets;
* ``model/`` — the testbed model: a tiny Qwen3 with its own byte-level BPE tokenizer and the real Qwen3 chat
  template, pretrained from scratch on the synthetic corpus;
* ``manifest.json`` — settings, fingerprint, SHA-256 of every file, pretraining losses and time, the
  behaviour check (:mod:`thinksafe.testbed.check`), package versions. Written last: its existence means the
  build completed.

The fingerprint covers the settings and the generated data itself (so an edit of the world's word lists
changes it, an edit of a comment does not). A directory whose manifest has the same fingerprint and whose
files still hash as recorded is reused as is; anything else is rebuilt only with ``force``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thinksafe.errors import UserError
from thinksafe.files import write_bytes_atomic, write_json_atomic
from thinksafe.testbed.corpus import (
    CorpusSizes,
    SetSizes,
    heldout_sets,
    pretraining_rows,
    selfgen_prompts,
    teacher_rows,
)
from thinksafe.testbed.pretrain import ModelShape, PretrainConfig

#: Bumped when the build procedure changes in a way the settings and data do not show.
BUILD_VERSION = 1

DATA_FILES = {
    "prompts": "prompts.jsonl",
    "teacher": "teacher_responses.jsonl",
    "harmful": "eval/harmful.jsonl",
    "benign": "eval/benign.jsonl",
    "math": "eval/math.jsonl",
}
MODEL_DIR = "model"


@dataclass
class Testbed:
    """A built testbed directory."""

    root: Path
    manifest: dict[str, Any]
    reused: bool = False

    @property
    def model(self) -> Path:
        return self.root / MODEL_DIR

    def file(self, name: str) -> Path:
        """One of :data:`DATA_FILES` by name (prompts, teacher, harmful, benign, math)."""
        return self.root / DATA_FILES[name]


@dataclass
class _Data:
    corpus: list[dict]
    files: dict[str, list[dict]] = field(default_factory=dict)


def _generate(seed: int, corpus: CorpusSizes, selfgen: SetSizes, heldout: SetSizes) -> _Data:
    held = heldout_sets(seed, heldout)
    files = {
        "prompts": [{"instruction": r["instruction"], "label": r["label"]} for r in selfgen_prompts(seed, selfgen)],
        "teacher": [{k: r[k] for k in ("instruction", "response", "label")} for r in teacher_rows(seed, selfgen)],
        "harmful": held["harmful"],
        "benign": held["benign"],
        "math": held["math"],
    }
    return _Data(pretraining_rows(seed, corpus), files)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def fingerprint(settings: dict[str, Any], data: _Data) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(_jsonl(data.corpus))
    for name in sorted(data.files):
        h.update(name.encode() + _jsonl(data.files[name]))
    return h.hexdigest()


def model_key(settings: dict[str, Any], corpus: list[dict]) -> str:
    """What the model depends on: the build version, seed, corpus sizes and rows, shape and pretraining — not the
    self-generation, teacher and held-out sets, which are rewritten in seconds around a model that is reused."""
    part = {k: settings[k] for k in ("build_version", "seed", "corpus", "shape", "pretraining")}
    h = hashlib.sha256(json.dumps(part, sort_keys=True).encode())
    h.update(_jsonl(corpus))
    return h.hexdigest()


def _settings(seed, corpus, selfgen, heldout, shape, pretraining) -> dict[str, Any]:
    return dict(
        build_version=BUILD_VERSION,
        seed=seed,
        corpus=asdict(corpus),
        selfgen=asdict(selfgen),
        heldout=asdict(heldout),
        shape=asdict(shape),
        pretraining=asdict(pretraining),
    )


def _model_intact(root: Path, manifest: dict[str, Any]) -> bool:
    recorded = {k: v for k, v in manifest.get("files", {}).items() if k.startswith(f"{MODEL_DIR}/")}
    return (root / MODEL_DIR).is_dir() and recorded == {
        f"{MODEL_DIR}/{k}": v for k, v in _tree_hashes(root / MODEL_DIR).items()
    }


def _intact(root: Path, manifest: dict[str, Any]) -> bool:
    return not changed_files(root, manifest)


def changed_files(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Files of the testbed that are missing, added or whose sha256 differs from the manifest's (sorted)."""
    recorded = manifest.get("files", {})
    actual = {f: _sha((root / f).read_bytes()) for f in DATA_FILES.values() if (root / f).is_file()}
    if (root / MODEL_DIR).is_dir():
        actual.update({f"{MODEL_DIR}/{k}": v for k, v in _tree_hashes(root / MODEL_DIR).items()})
    expected = set(recorded) | set(DATA_FILES.values())
    return sorted(f for f in expected | set(actual) if recorded.get(f) != actual.get(f))


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise UserError(
            f"testbed: {path} is damaged (not a JSON object), so what the testbed was built from is "
            f"unknown. Rebuild it: `thinksafe testbed build --output_dir {path.parent} --force true`."
        )
    return manifest


def build_testbed(
    output_dir: str = "data/testbed",
    seed: int = 0,
    corpus: CorpusSizes = CorpusSizes(),
    selfgen: SetSizes = SetSizes(harmful=96, benign=48, math=144),
    heldout: SetSizes = SetSizes(harmful=100, benign=60, math=100),
    shape: ModelShape = ModelShape(),
    pretraining: PretrainConfig = PretrainConfig(),
    check_items: int = 40,
    force: bool = False,
) -> Testbed:
    """Build the testbed into ``output_dir``, or reuse it when it was built with the same settings.

    Args:
        output_dir: the testbed directory (see the module docstring for its files).
        seed: seeds every random draw: data sets, tokenizer corpus order, model initialisation, batches.
        corpus: rows of the pretraining corpus, per behaviour.
        selfgen: prompts per kind in the self-generation set (and the teacher set, which answers the same).
        heldout: prompts per kind in the held-out evaluation sets.
        shape: the model's architecture and vocabulary size.
        pretraining: steps, batch size, learning rate, threads of the pretraining.
        check_items: held-out items per kind in the behaviour check run after pretraining (0: skip it).
        force: rebuild in a directory that holds a testbed built with other settings (its testbed files are
            replaced; its model is kept when the settings it depends on — seed, corpus, shape, pretraining — and
            its files are unchanged).
    """
    from rich.console import Console

    console = Console(stderr=True)
    started = time.time()
    out = Path(output_dir)
    settings = _settings(seed, corpus, selfgen, heldout, shape, pretraining)
    data = _generate(seed, corpus, selfgen, heldout)
    fp = fingerprint(settings, data)
    key = model_key(settings, data.corpus)
    manifest_path = out / "manifest.json"
    old: dict[str, Any] = {}
    if manifest_path.is_file():
        try:
            old = _read_manifest(manifest_path)
        except UserError:
            if not force:
                raise
            old = {}
        if old.get("fingerprint") == fp and _intact(out, old):
            console.print(f"testbed [bold]{out}[/] is built for these settings; reusing it.")
            return Testbed(out, old, reused=True)
        if not force:
            why = (
                "was built with other settings"
                if old.get("fingerprint") != fp
                else "has files that changed since it was built"
            )
            raise UserError(
                f"testbed: {out} {why} (see {manifest_path}). Pass --force true to rebuild it there, or choose "
                "another --output_dir; nothing was changed."
            )
    elif out.is_dir() and any(p.name != "README.md" for p in out.iterdir()) and not force:
        raise UserError(
            f"testbed: {out} is not empty and holds no manifest.json, so it is not a testbed directory. "
            "Choose an empty or new --output_dir (or pass --force true); nothing was changed."
        )

    keep_model = old.get("model_key") == key and _model_intact(out, old)
    if keep_model:
        console.print(
            f"building the testbed's data sets in [bold]{out}[/]; its model was pretrained with these "
            "settings and is kept"
        )
    else:
        console.print(
            f"building the testbed in [bold]{out}[/] (seed {seed}): {len(data.corpus)} corpus rows, "
            f"{pretraining.steps} pretraining steps on {pretraining.threads} thread(s)"
        )
    manifest_path.unlink(missing_ok=True)  # an interrupted rebuild must not pass for a finished one
    for name, rows in data.files.items():
        path = out / DATA_FILES[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, _jsonl(rows))
    if keep_model:
        losses, seconds = [], old.get("pretraining_seconds", 0.0)
    else:
        losses, seconds = _build_model(out / MODEL_DIR, data.corpus, seed, shape, pretraining, console)

    check = None
    if check_items > 0:
        from thinksafe.testbed.check import check_model

        check = check_model(str(out / MODEL_DIR), out, check_items)
    manifest = dict(
        fingerprint=fp,
        model_key=key,
        settings=settings,
        synthetic=(
            "A synthetic world built to demonstrate the ThinkSafe mechanism; the model and its behaviour "
            "are constructed, and nothing measured here is a claim about real models."
        ),
        files={
            **{f: _sha((out / f).read_bytes()) for f in DATA_FILES.values()},
            **{f"{MODEL_DIR}/{k}": v for k, v in _tree_hashes(out / MODEL_DIR).items()},
        },
        counts={name: len(rows) for name, rows in data.files.items()} | {"corpus": len(data.corpus)},
        pretraining_loss=old.get("pretraining_loss")
        if keep_model
        else {"first_50": _mean(losses[:50]), "last_50": _mean(losses[-50:])},
        pretraining_seconds=round(seconds, 1),
        check=check,
        build_seconds=round(time.time() - started, 1),
        versions=_versions(),
        python=sys.version.split()[0],
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    write_json_atomic(manifest_path, manifest)
    console.print(f"testbed built in {manifest['build_seconds']} s; behaviour check: {check}")
    return Testbed(out, manifest)


def _build_model(
    model_dir: Path, corpus: list[dict], seed: int, shape: ModelShape, cfg: PretrainConfig, console
) -> tuple[list[float], float]:
    from thinksafe.testbed.pretrain import encode_rows, new_model, pretrain, save, train_tokenizer

    t0 = time.time()
    # tokenizer training reads texts in corpus order, which the seed fixes
    tokenizer = train_tokenizer([t for r in corpus for t in (r["prompt"], r["response"])], shape.vocab_size)
    encoded = encode_rows(tokenizer, corpus, cfg.max_length)
    model = new_model(tokenizer, shape, seed)

    def report(step: int, loss: float, seconds: float) -> None:
        console.print(f"  step {step}/{cfg.steps}  loss {loss:.4f}  {seconds:.0f} s")

    losses = pretrain(model, encoded, cfg, seed, tokenizer.pad_token_id, report)
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tokenizer, tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    return losses, time.time() - t0


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 5) if xs else None


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("thinksafe", "torch", "transformers", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def load_testbed(output_dir: str = "data/testbed") -> Testbed:
    """A built testbed directory, its files checked against the manifest's hashes as ``build`` checks them (fails
    with a hint when it is not built, damaged or changed)."""
    root = Path(output_dir)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise UserError(
            f"testbed: {root} holds no built testbed (no manifest.json). Run `thinksafe testbed build "
            f"--output_dir {root}` first."
        )
    recorded = _read_manifest(manifest)
    changed = changed_files(root, recorded)
    if changed:
        raise UserError(
            f"testbed: {root} has files that changed since it was built (their sha256 differ from {manifest}): "
            f"{', '.join(changed[:5])}{' …' if len(changed) > 5 else ''}. Rates measured on it would not be the "
            f"testbed's. Rebuild it: `thinksafe testbed build --output_dir {root} --force true`."
        )
    return Testbed(root, recorded, reused=True)
