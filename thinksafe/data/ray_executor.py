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
    SelfGenJob,
    SelfGenResult,
    build_selfgen,
    claim_output_dir,
    finished_with,
    reuse_finished,
    verify_finished,
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

    def __init__(self, job: SelfGenJob, output_dir: str, shards: int):
        self.job, self.output_dir, self.shards = job, output_dir, shards

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from thinksafe.data.shards import shard_dir, shard_of

        out = []
        for shard in batch["shard"]:
            shard = int(shard)
            result = build_selfgen(
                self.job, shard_dir(self.output_dir, shard, self.shards), **shard_of(self.job, shard, self.shards)
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
    job: SelfGenJob, output_dir: str | Path, *, options: RayOptions, overwrite: bool = False, console=None
) -> SelfGenResult:
    """The data stage with its shards built by a Ray actor pool, merged here (see the module docstring)."""
    from rich.console import Console

    from thinksafe.data.shards import merge_shards, shard_dir

    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(
            "data.executor is ray, but Ray is not installed here: pip install 'thinksafe[ray]' (Ray Data), or "
            "set data.executor: local."
        ) from None
    console = console or Console(stderr=True)
    out = Path(output_dir)
    if finished_with(out, job.settings()[1]):
        return reuse_finished(out, None, console)
    with ExitStack() as stack:
        if claim_output_dir(out, job, overwrite, stack) == "finished":
            return reuse_finished(out, None, console)
        started = not ray.is_initialized()
        if started:
            ray.init(address=options.address, log_to_driver=True)
            stack.callback(ray.shutdown)
        tp = job.tensor_parallel_size
        shards = _engines(options, tp)
        resources = ray.cluster_resources()
        gpus = tp if resources.get("GPU", 0) else 0
        # an engine actor reserves at most one CPU, and leaves one free for Ray Data's own tasks (that feed the
        # actors their input: on a small cluster, actors holding every CPU would wait for it forever)
        cpus = min(1.0, max(resources.get("CPU", 1.0) - 1.0, 0.0) / shards)
        console.print(f"data stage on Ray: {shards} shard(s), one engine actor each ({gpus} GPU(s) per actor)")
        done = (
            ray.data.from_items([{"shard": s} for s in range(shards)])
            .repartition(shards)  # one block per shard, so every actor of the pool gets one
            .map_batches(
                ShardBuilder,
                fn_constructor_kwargs=dict(job=job, output_dir=str(out), shards=shards),
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
    return SelfGenResult(out, verify_finished(out), resumed=False, reused=False)
