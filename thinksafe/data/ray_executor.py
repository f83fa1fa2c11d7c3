"""``data.executor: ray``: the data stage on a Ray cluster (the optional ``ray`` extra).

A Ray Data pipeline over the shards of :mod:`thinksafe.data.shards`: a dataset of shard numbers, mapped by an
actor pool with one actor per engine (``data.ray.engines`` actors, each holding ``tensor_parallel_size`` GPUs when
the cluster has GPUs). Each actor builds its shard with :func:`thinksafe.data.selfgen.build_selfgen` — the one
code path for steering, format checks, guard verdicts and stats — into ``output_dir/shards/rank_<s>_of_<n>/``,
sampling first and then guarding with the engines it owns (its sampler's engine exits before its guard's starts,
as in a local run). The driver holds ``output_dir``'s writer lock throughout and merges the finished shards into
the usual artifact (:func:`thinksafe.data.shards.merge_shards`), which equals a local run's byte for byte.

Resuming: each shard is a resumable set of its own, so running the same command again (same recipe, same
``data.ray.engines``) redoes only what is missing. ``output_dir`` must be on a file system every node of the
cluster sees (each actor writes its shard there, the driver merges them).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinksafe.data.selfgen import (
    SelfGenResult,
    _reuse,
    _verify_finished,
    build_selfgen,
    finished_with,
    selfgen_settings,
)
from thinksafe.errors import UserError


@dataclass
class RayOptions:
    """Where and how wide the data stage runs with ``data.executor: ray``."""

    address: str | None = None
    """The cluster to join (``ray.init(address=...)``: "auto", "ray://host:10001", …). None: the cluster named by
    ``RAY_ADDRESS``, else a local one started for this run."""
    engines: int | None = None
    """Sampling engines (actors), each building one shard. None: the cluster's GPUs ÷ tensor_parallel_size, or 1
    on a cluster without GPUs."""


class ShardBuilder:
    """One actor of the pool: builds the shards it is handed (one per batch row) with its own engines."""

    def __init__(self, job: dict[str, Any]):
        self.job = job

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from thinksafe.data.shards import shard_dir, shard_indices

        job, out = self.job, []
        for shard in batch["shard"]:
            shard, shards = int(shard), job["shards"]
            result = build_selfgen(
                output_dir=shard_dir(job["output_dir"], shard, shards),
                indices=shard_indices(len(job["prompts"]), job["chunk_size"], shard, shards),
                shard=dict(rank=shard, of=shards, chunk_size=job["chunk_size"]),
                **{k: v for k, v in job.items() if k not in ("output_dir", "shards")},
            )
            out.append(result.stats["all"]["samples"])
        return {"shard": batch["shard"], "samples": out}


def _engines(options: RayOptions, tp: int) -> int:
    import ray

    if options.engines is not None:
        if options.engines < 1:
            raise UserError(f"data.ray.engines must be ≥ 1 or null, got {options.engines}.")
        return options.engines
    return max(1, int(ray.cluster_resources().get("GPU", 0)) // tp)


def build_on_ray(
    *,
    options: RayOptions,
    output_dir: str | Path,
    model: str,
    prompts,
    sampler,
    guard,
    sampling,
    steering_template: str,
    reasoning_format,
    chat_template_kwargs,
    think_rule: str,
    chunk_size: int,
    overwrite: bool,
    recipe: dict[str, Any] | None,
    console=None,
) -> SelfGenResult:
    """The data stage with its shards built by a Ray actor pool, merged here (see the module docstring)."""
    from rich.console import Console

    from thinksafe.data.shards import _claim, merge_shards, shard_dir

    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(
            "data.executor is ray, but Ray is not installed here: pip install 'thinksafe[ray]' (Ray Data), or "
            "set data.executor: local."
        ) from None
    console = console or Console(stderr=True)
    if chunk_size < 1:
        raise UserError(f"data.chunk_size must be ≥ 1, got {chunk_size}.")
    out = Path(output_dir)
    settings, fp = selfgen_settings(
        model=model,
        prompts=prompts,
        sampler=sampler,
        guard=guard,
        sampling=sampling,
        steering_template=steering_template,
        reasoning_format=reasoning_format,
        chat_template_kwargs=chat_template_kwargs,
        think_rule=think_rule,
    )
    if finished_with(out, fp):
        return _reuse(out, None, console)
    with ExitStack() as stack:
        if _claim(out, fp, settings, guard, sampler, recipe, overwrite, stack) == "finished":
            return _reuse(out, None, console)
        started = not ray.is_initialized()
        if started:
            ray.init(address=options.address, log_to_driver=True)
            stack.callback(ray.shutdown)
        tp = max(getattr(sampler, "tensor_parallel_size", 1), getattr(guard, "tensor_parallel_size", 1) or 1)
        shards = _engines(options, tp)
        resources = ray.cluster_resources()
        gpus = tp if resources.get("GPU", 0) else 0
        # an engine actor reserves at most one CPU, and leaves one free for Ray Data's own tasks (that feed the
        # actors their input: on a small cluster, actors holding every CPU would wait for it forever)
        cpus = min(1.0, max(resources.get("CPU", 1.0) - 1.0, 0.0) / shards)
        job = dict(
            output_dir=str(out),
            shards=shards,
            model=model,
            prompts=prompts,
            sampler=sampler,
            guard=guard,
            sampling=sampling,
            steering_template=steering_template,
            reasoning_format=reasoning_format,
            chat_template_kwargs=chat_template_kwargs,
            think_rule=think_rule,
            chunk_size=chunk_size,
            recipe=recipe,
        )
        console.print(f"data stage on Ray: {shards} shard(s), one engine actor each ({gpus} GPU(s) per actor)")
        done = (
            ray.data.from_items([{"shard": s} for s in range(shards)])
            .repartition(shards)  # one block per shard, so every actor of the pool gets one
            .map_batches(
                ShardBuilder,
                fn_constructor_kwargs=dict(job=job),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=shards),
                num_gpus=gpus,
                num_cpus=cpus,
            )
            .take_all()
        )
        if sorted(int(r["shard"]) for r in done) != list(range(shards)):
            raise RuntimeError(f"Ray returned shards {sorted(int(r['shard']) for r in done)} of {shards}")
        merge_shards(out, [shard_dir(out, s, shards) for s in range(shards)], console, lock=False)
    return SelfGenResult(out, _verify_finished(out), resumed=False, reused=False)
