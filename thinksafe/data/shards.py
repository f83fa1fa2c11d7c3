"""The data stage on every rank of a multi-process run, and the merge of its shards.

Each rank (or each tensor-parallel group of ranks) samples and guards its share of the prompts with its own
engine on its own device(s), into ``output_dir/shards/rank_<r>_of_<n>/`` — a self-generated set of its own
(:func:`thinksafe.data.selfgen.build_selfgen` with ``indices``), resumable by itself. One rank then merges the
shards into the usual artifact in ``output_dir``.

The split is by chunk: chunk ``k`` (prompts ``k*chunk_size`` … ``(k+1)*chunk_size - 1``) goes to shard
``k % n``, so every chunk (the unit a shard saves and resumes from) is a chunk of the one-process run. Each sample
has its own seed, so the merged ``samples.jsonl``, ``stats.json`` (but its ``seconds``) and the fingerprint equal
a one-process run's wherever the engine's numerics do not depend on which other requests share its batch (vLLM on
CPU, tested; on GPUs as far as a resumed one-process run equals an uninterrupted one).

Nothing waits in a collective while the engines work: a rank that finishes its shard polls the shared file
system for the other shards' ``stats.json`` (watching their heartbeat files, so a rank that died is noticed),
then all meet at one barrier. Collectives are used only where every rank arrives within seconds. A rank on this
host whose process is gone is noticed at once (its heartbeat names it); any other rank after ``STALE_AFTER_S`` of
silence.

A restart with another number of processes (or one process after several, or several after one) keeps every whole
chunk already sampled: :func:`fold_other_layouts` copies them into the new split's shards before they start.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from thinksafe.data.jsonl_log import JsonlLog
from thinksafe.data.selfgen import (
    SHARDS_DIR,
    SelfGenJob,
    SelfGenResult,
    _prepare_dir,
    build_selfgen,
    claim_output_dir,
    compute_stats,
    finished_with,
    print_stats,
    read_json_object,
    reuse_finished,
    verify_finished,
    write_manifest,
)
from thinksafe.data.writer_lock import writer_lock
from thinksafe.errors import UserError
from thinksafe.files import disk_errors, write_atomic, write_bytes_atomic, write_json_atomic

HEARTBEAT_EVERY_S = 10.0
#: A shard whose heartbeat file has not changed for this long (this rank's clock) belongs to a dead or hung rank
#: (``data.heartbeat_timeout_s`` overrides it). Three missed beats, so a rank whose beat thread is slowed by a busy
#: CPU is not called dead, plus 60 s: an NFS client may serve a file's attributes and contents from its cache for
#: up to ``acregmax`` (60 s by default; longer only where a mount sets ``actimeo``/``nocto``), so a live rank on
#: another node can look silent that long. A rank on this host whose process is gone is noticed at once instead
#: (its pid is in the heartbeat).
STALE_AFTER_S = 3 * HEARTBEAT_EVERY_S + 60.0
POLL_EVERY_S = 2.0


def shard_indices(num_prompts: int, chunk_size: int, shard: int, shards: int) -> list[int]:
    """The prompt indices of ``shard`` of ``shards``: every ``shards``-th chunk, starting at chunk ``shard``."""
    return [
        i
        for start in range(shard * chunk_size, num_prompts, shards * chunk_size)
        for i in range(start, min(start + chunk_size, num_prompts))
    ]


def shard_dir(output_dir: str | Path, shard: int, shards: int) -> Path:
    return Path(output_dir) / SHARDS_DIR / f"rank_{shard}_of_{shards}"


# ------------------------------------------------------------------------------------------------------ merge
def shard_of(job: SelfGenJob, shard: int, shards: int) -> dict[str, Any]:
    """``build_selfgen``'s ``indices`` and ``shard`` arguments that build shard ``shard`` of ``shards`` of ``job``."""
    return dict(
        indices=shard_indices(len(job.prompts), job.chunk_size, shard, shards),
        shard=dict(rank=shard, of=shards, chunk_size=job.chunk_size),
    )


def merge_shards(out: Path, sources: list[Path], console=None, *, lock: bool = True) -> dict[str, Any]:
    """Merge finished shard (or job) directories made with the same settings into the set in ``out``; returns
    its stats. The sources must together hold every prompt's samples exactly once."""
    from rich.console import Console

    console = console or Console(stderr=True)
    manifests = []
    for src in sources:
        m = read_json_object(src / "manifest.json") if (src / "manifest.json").is_file() else None
        if m is None or "fingerprint" not in m:
            raise UserError(
                f"--merge: {src} holds no readable manifest.json, so it was not made by `thinksafe generate` or "
                "`thinksafe fit`; give the shard directories (output_dir/shards/rank_<r>_of_<n>) or output "
                "directories of runs made with the same recipe."
            )
        if not (src / "stats.json").is_file():
            raise UserError(
                f"--merge: {src} is unfinished (no stats.json); run the command that made it again to finish it "
                "(it resumes), then merge."
            )
        manifests.append(m)
    first = manifests[0]
    for src, m in zip(sources[1:], manifests[1:]):
        if m["fingerprint"] != first["fingerprint"]:
            differ = sorted(
                k
                for k in set(first.get("settings", {})) | set(m.get("settings", {}))
                if first.get("settings", {}).get(k) != m.get("settings", {}).get(k)
            )
            raise UserError(
                f"--merge: {src} and {sources[0]} were made with different settings "
                f"({', '.join(differ) or 'the prompts'} differ; see their manifest.json), so their samples do not "
                "form one set. Merge only directories made with the same recipe; nothing was written."
            )
    settings = first["settings"]
    n, num_prompts = settings["sampling"]["n"], settings["prompts"]
    samples, sampled, seen, seconds = [], [], {}, []
    for src in sources:
        verify_finished(src)
        for row in JsonlLog(src / "samples.jsonl").verify():
            key = (row["prompt_index"], row["sample_index"])
            if key in seen:
                raise UserError(
                    f"--merge: prompt {key[0]} sample {key[1]} is in both {seen[key]} and {src}: the directories "
                    "overlap (the same shard twice, or whole runs of the same prompts). Merge each shard once."
                )
            seen[key] = src
            samples.append(row)
        sampled.extend(JsonlLog(src / "sampled.jsonl").verify())
        seconds.append(read_json_object(src / "stats.json").get("seconds") or 0)
    missing = sorted({i for i in range(num_prompts)} - {k[0] for k in seen})
    if missing or len(seen) != num_prompts * n:
        raise UserError(
            f"--merge: the directories hold {len(seen)} of the set's {num_prompts * n} samples (prompt "
            f"{missing[0] if missing else '?'} is missing{f' and {len(missing) - 1} more' if len(missing) > 1 else ''})"
            "; add the missing shard directories (output_dir/shards/rank_<r>_of_<n>) and merge again."
        )
    order = lambda r: (r["prompt_index"], r["sample_index"])  # noqa: E731
    samples.sort(key=order)
    sampled.sort(key=order)
    with ExitStack() as stack:
        with disk_errors(out):
            out.mkdir(parents=True, exist_ok=True)
        if lock:
            stack.enter_context(writer_lock(out, "--output"))
        _prepare_dir(out, first["fingerprint"], overwrite=False)
        if not (out / "manifest.json").is_file():
            manifest = {k: v for k, v in first.items() if k != "shard"}
            write_json_atomic(out / "manifest.json", {**manifest, "merged_from": [str(s) for s in sources]})
        stats = compute_stats(samples, num_prompts, n)
        stats["seconds"] = max(seconds)  # the shards ran side by side
        stats["guard"] = read_json_object(sources[0] / "stats.json").get("guard")
        write_bytes_atomic(out / "sampled.jsonl", _jsonl(sampled))
        write_bytes_atomic(out / "samples.jsonl", _jsonl(samples))
        from thinksafe.data.hf_card import where_line, write_hf_dataset

        write_hf_dataset(out, samples, stats)
        write_json_atomic(out / "stats.json", stats)  # last: the set is finished
    print_stats(stats, console)
    console.print(where_line(out))
    return stats


def _jsonl(rows: list[dict]) -> bytes:
    # the encoding JsonlLog.append writes, so a merged file equals a one-process run's byte for byte
    return b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in rows)


def merge_sources(paths: list[str | Path]) -> list[Path]:
    """The shard directories named by ``paths``: a shard directory itself, or an output directory holding
    ``shards/rank_<r>_of_<n>`` (the largest complete split there) or a finished set of its own."""
    out = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"--merge: {p} is not a directory.")
        by_split = _layouts(p)
        if by_split and not (p / "stats.json").is_file():
            # the largest split whose shards are all there and finished, else the largest (merge names what lacks)
            whole = [k for k, ds in by_split.items() if len(ds) == k and all((d / "stats.json").is_file() for d in ds)]
            out.extend(by_split[max(whole or by_split)])
        else:
            out.append(p)
    return out


# ------------------------------------------------------------------------- resuming with another layout
def _layouts(out: Path) -> dict[int, list[Path]]:
    """The shard directories in ``out``, by the number of shards of their split, each split's in rank order."""
    found = []
    for d in (out / SHARDS_DIR).glob("rank_*_of_*") if (out / SHARDS_DIR).is_dir() else []:
        parts = d.name.split("_")
        if d.is_dir() and len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
            found.append((int(parts[3]), int(parts[1]), d))
    by: dict[int, list[Path]] = {}
    for split, _rank, d in sorted(found):
        by.setdefault(split, []).append(d)
    return by


def _whole_chunks(path: Path, chunk_size: int, num_prompts: int, n: int) -> dict[int, list[tuple[int, int]]]:
    """The chunks of which ``path`` (a sampled.jsonl or samples.jsonl) holds every prompt's ``n`` rows, each as the
    byte ranges of its lines in file order. Reading stops at the first line that does not parse (a torn write)."""
    lines: dict[int, list[tuple[int, int]]] = {}
    samples: dict[int, set[int]] = {}
    count: dict[int, int] = {}
    try:
        f = open(path, "rb")
    except OSError:
        return {}
    with f:
        offset = 0
        for line in f:
            try:
                row = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("prompt_index"), int):
                break
            i = row["prompt_index"]
            lines.setdefault(i // chunk_size, []).append((offset, len(line)))
            samples.setdefault(i, set()).add(row.get("sample_index"))
            count[i] = count.get(i, 0) + 1
            offset += len(line)
    whole = lambda i: count.get(i) == n and samples[i] == set(range(n))  # noqa: E731
    return {
        k: ranges
        for k, ranges in lines.items()
        if all(whole(i) for i in range(k * chunk_size, min((k + 1) * chunk_size, num_prompts)))
    }


def _copy_ranges(dest: Path, parts: list[tuple[Path, list[tuple[int, int]]]]) -> None:
    """Write ``dest`` atomically from byte ranges of other files, streamed (a large set's log need not fit in
    memory)."""

    def copy(f) -> None:
        for src, ranges in parts:
            with open(src, "rb") as g:
                for start, length in ranges:
                    g.seek(start)
                    f.write(g.read(length))

    write_atomic(dest, copy)


def fold_other_layouts(out: Path, job: SelfGenJob, shards: int, console) -> int:
    """Before ``shards`` shards of ``job`` are built in ``out`` (locked by the caller), give each the whole chunks
    already sampled for its prompts by another layout — a run with another number of processes (its shards), or
    the one-process run in ``out`` itself — with their guard verdicts where a whole chunk has them, so a restart
    with another number of processes redoes nothing that was done. A chunk is the unit: every layout splits the
    prompts by the same chunks (:func:`shard_indices`), so a chunk moved into a shard is one its own run would have
    sampled in the same engine call; a chunk only partly done is sampled again. Sources are used only when made
    with the same settings and, where recorded, the same chunk_size (a sampler that batches by chunk gives other
    samples for other chunks). The sources are left as they are. Returns the number of chunks moved."""
    settings, fp = job.settings()
    num_prompts, cs, n = len(job.prompts), job.chunk_size, job.sampling.n
    sources = [d for k, ds in sorted(_layouts(out).items()) if k != shards for d in ds] + [out]
    sampled: dict[int, tuple[Path, list[tuple[int, int]]]] = {}  # chunk -> (the log holding it, its lines)
    for src in sources:
        m = read_json_object(src / "manifest.json") if (src / "manifest.json").is_file() else None
        if m is None or m.get("fingerprint") != fp:
            continue
        made_with = (m.get("shard") or {}).get("chunk_size") if src != out else _recipe_chunk_size(m)
        if made_with is None and src != out:
            continue  # a shard of a version that did not record its chunk_size: its chunks cannot be checked
        if made_with is not None and made_with != cs:
            continue
        for k, ranges in _whole_chunks(src / "sampled.jsonl", cs, num_prompts, n).items():
            sampled.setdefault(k, (src / "sampled.jsonl", ranges))
    if not sampled:
        return 0
    verdicts_in: dict[Path, dict[int, list[tuple[int, int]]]] = {}  # source -> its guarded whole chunks

    def verdicts_of(src: Path) -> dict[int, list[tuple[int, int]]]:
        if src not in verdicts_in:
            verdicts_in[src] = _whole_chunks(src / "samples.jsonl", cs, num_prompts, n)
        return verdicts_in[src]

    moved = 0
    for s in range(shards):
        target = shard_dir(out, s, shards)
        if finished_with(target, fp):
            continue
        own = _whole_chunks(target / "sampled.jsonl", cs, num_prompts, n)
        chunks = sorted({i // cs for i in shard_indices(num_prompts, cs, s, shards)})
        incoming = [k for k in chunks if k not in own and k in sampled]
        if not incoming:
            continue
        keep = [k for k in chunks if k in own or k in sampled]
        rows = [(target / "sampled.jsonl", own[k]) if k in own else sampled[k] for k in keep]
        verdicts = []  # a chunk's verdicts come with its sampled rows, from the same directory
        for k, (src, _) in zip(keep, rows):
            ranges = verdicts_of(src.parent).get(k)
            if ranges:
                verdicts.append((src.parent / "samples.jsonl", ranges))
        with disk_errors(target):
            target.mkdir(parents=True, exist_ok=True)
        if not (target / "manifest.json").is_file():
            write_manifest(target, fp, settings, job, shard_of(job, s, shards)["shard"])
        # sampled rows first: killed in between, the shard has rows without verdicts, which its guard phase redoes
        _copy_ranges(target / "sampled.jsonl", rows)
        _copy_ranges(target / "samples.jsonl", verdicts)
        moved += len(incoming)
    if moved:
        console.print(
            f"resuming with {shards} process(es) where a run with another number stopped: {moved} whole chunk(s) of "
            f"{cs} prompts already sampled moved into the new shards (nothing is sampled twice)"
        )
    return moved


def _recipe_chunk_size(manifest: dict) -> int | None:
    data = (manifest.get("recipe") or {}).get("data") if isinstance(manifest.get("recipe"), dict) else None
    value = data.get("chunk_size") if isinstance(data, dict) else None
    return value if isinstance(value, int) else None


def build_here(job: SelfGenJob, output_dir: str | Path, *, overwrite: bool = False, console=None) -> SelfGenResult:
    """The data stage in this one process: :func:`build_selfgen`, unless ``output_dir`` holds the unfinished shards
    of a multi-process run; then their whole chunks go into one shard (``shards/rank_0_of_1``), which this process
    finishes and merges, so nothing they sampled is sampled again."""
    from rich.console import Console

    console = console or Console(stderr=True)
    out = Path(output_dir)
    _, fp = job.settings()
    if finished_with(out, fp) or not _layouts(out):
        return build_selfgen(job, out, overwrite=overwrite, console=console)
    with ExitStack() as stack:
        if claim_output_dir(out, job, overwrite, stack) == "finished":
            return build_selfgen(job, out, console=console)  # finished meanwhile: reused
        fold_other_layouts(out, job, 1, console)
        build_selfgen(job, shard_dir(out, 0, 1), console=console, **shard_of(job, 0, 1))
        merge_shards(out, [shard_dir(out, 0, 1)], console, lock=False)
    return SelfGenResult(out, verify_finished(out), resumed=True, reused=False)


# ------------------------------------------------------------------------------------------- every rank's work
class Ranks:
    """The few short collectives the sharded stage needs, over the default process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def agree(self, error: str | None, what: str) -> None:
        """Raise on every rank when any rank failed (its message), so no rank is left waiting."""
        errors = [(r, e) for r, e in enumerate(self.gather(error)) if e]
        if error:
            raise UserError(error)
        if errors:
            rank, message = errors[0]
            raise UserError(f"{what} failed on rank {rank}: {message}")


def _message(e: BaseException) -> str:
    from thinksafe.errors import user_message

    return user_message(e) or f"{type(e).__name__}: {e}"


def build_sharded(
    job: SelfGenJob,
    output_dir: str | Path,
    *,
    ranks: Ranks,
    device_index: int | None,
    overwrite: bool = False,
    console=None,
    heartbeat_timeout_s: float | None = None,
) -> SelfGenResult:
    """The data stage on every rank (all ranks call it together); returns the merged set on every rank.

    ``device_index``: this rank's accelerator (None on CPUs); with ``tensor_parallel_size`` t > 1 in the sampler,
    ranks form groups of t consecutive ranks, whose first rank runs one engine on the group's t devices.
    ``heartbeat_timeout_s``: a rank whose heartbeat has not changed for this long is taken as dead (None:
    ``STALE_AFTER_S``)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    if heartbeat_timeout_s is not None and not heartbeat_timeout_s >= 2 * HEARTBEAT_EVERY_S:
        raise UserError(
            f"data.heartbeat_timeout_s must be at least {2 * HEARTBEAT_EVERY_S:.0f} s (two heartbeats; null: "
            f"{STALE_AFTER_S:.0f} s), got {heartbeat_timeout_s}: a shorter limit calls live ranks dead."
        )
    out = Path(output_dir)
    _, fp = job.settings()
    tp = job.tensor_parallel_size
    if ranks.world % tp:
        raise UserError(
            f"data.sampler.init_args.tensor_parallel_size={tp} does not divide the {ranks.world} processes of this "
            "run: each engine takes that many devices of one node. Choose a tensor_parallel_size that divides the "
            "devices per node."
        )
    with ExitStack() as stack:
        # rank 0 checks the directory and holds its writer lock for the whole stage (its shards' too: they are
        # inside it); its verdict reaches every rank before anyone writes
        state, error = None, None
        shards = ranks.world // tp
        if ranks.rank == 0:
            try:
                state = claim_output_dir(out, job, overwrite, stack)
                if state == "build":  # a run with another number of processes stopped here: keep what it did
                    fold_other_layouts(out, job, shards, console)
            except Exception as e:  # noqa: BLE001 — every rank must hear of it, or they wait forever
                error = _message(e)
        ranks.agree(error, "preparing data.output_dir")
        state = ranks.gather(state)[0]
        if state == "finished":
            if ranks.rank == 0:
                return reuse_finished(out, None, console)
            return SelfGenResult(out, verify_finished(out), resumed=True, reused=True)
        _check_shared(out, ranks)
        run = ranks.gather(uuid.uuid4().hex)[0]  # names this run's heartbeats: an earlier run's are stale
        mine = ranks.rank // tp if ranks.rank % tp == 0 else None
        with _heartbeat(out, ranks.rank, ranks.world, run):
            error = None
            if mine is not None:
                where = shard_dir(out, mine, shards)
                try:
                    with _visible_devices(device_index, tp):
                        build_selfgen(job, where, console=console, **shard_of(job, mine, shards))
                except BaseException as e:
                    error = _message(e)
                    _write_failure(out, mine, shards, error)
                    raise
            # the long wait happens here, outside any collective: shards finish hours apart on large sets
            _wait_for_shards(out, shards, tp, ranks.world, fp, console, run=run, stale_after_s=heartbeat_timeout_s)
        ranks.gather(None)  # everyone is here within a poll interval
        error = None
        if ranks.rank == 0:
            try:
                merge_shards(out, [shard_dir(out, s, shards) for s in range(shards)], console, lock=False)
            except Exception as e:  # noqa: BLE001
                error = _message(e)
        ranks.agree(error, "merging the shards")
    return SelfGenResult(out, verify_finished(out), resumed=False, reused=False)


def build_launched(
    job: SelfGenJob,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    heartbeat_timeout_s: float | None = None,
    console=None,
) -> SelfGenResult:
    """``thinksafe generate`` under a launcher (``torchrun --nproc-per-node N``, or srun with torchrun's
    variables): :func:`build_sharded` with one shard per process, each on its node's GPU ``LOCAL_RANK`` (on GPUs),
    over a gloo group joined from the environment and destroyed at exit. Every rank returns the merged set."""
    import torch

    from thinksafe.distributed import join_launched_group, local_rank

    join_launched_group()
    return build_sharded(
        job,
        output_dir,
        ranks=Ranks(),
        device_index=local_rank() if torch.cuda.is_available() else None,
        overwrite=overwrite,
        console=console,
        heartbeat_timeout_s=heartbeat_timeout_s,
    )


def _check_shared(out: Path, ranks: Ranks) -> None:
    """Every rank writes a token into output_dir and must see every other rank's: the shards are merged from
    one place, so output_dir must be one directory for all nodes."""
    token = uuid.uuid4().hex
    hosts = ranks.gather((socket.gethostname(), token))
    d = out / SHARDS_DIR / ".hosts"
    error = None
    try:
        with disk_errors(d):
            d.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(d / f"rank_{ranks.rank}", token.encode())
    except Exception as e:  # noqa: BLE001
        error = _message(e)
    ranks.agree(error, "writing output_dir")
    unseen: list[int] = []
    deadline = time.monotonic() + 30  # NFS clients may cache a directory's listing for up to ~30 s
    while True:
        unseen = [r for r, (_h, t) in enumerate(hosts) if _read(d / f"rank_{r}") != t]
        if not unseen or time.monotonic() > deadline:
            break
        time.sleep(1)
    blind = [(r, u) for r, u in enumerate(ranks.gather(unseen)) if u]
    if blind:
        rank, u = blind[0]
        raise UserError(
            f"data.output_dir: {out} is not one shared directory for all processes of this run: rank {rank} on "
            f"{hosts[rank][0]} does not see the files that rank(s) {', '.join(map(str, u))} on "
            f"{', '.join(sorted({hosts[x][0] for x in u}))} wrote there. Every rank builds its shard of the data "
            "set there and one rank merges them, so on several nodes data.output_dir must be on a file system "
            "all nodes mount (NFS, Lustre, GPFS, …). Point it there, or run `thinksafe generate` first and train "
            "on the finished set."
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _alive_path(out: Path, rank: int, world: int) -> Path:
    return out / SHARDS_DIR / f".alive_rank_{rank}_of_{world}"


def _pid_space() -> str:
    """What makes two processes' pids comparable: the same host name, kernel boot and pid namespace (two containers
    on one host, or two hosts of one name, are different spaces, so a pid is never looked up in the wrong one)."""
    parts = [socket.gethostname()]
    for read in (
        lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        lambda: os.readlink("/proc/self/ns/pid"),
    ):
        try:
            parts.append(read())
        except OSError:
            pass
    return "|".join(parts)


def _started(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (/proc), so a reused pid is not taken for it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_gone(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` (of this pid space) has ended: no such process, a zombie, or another process that
    reuses its pid."""
    if Path("/proc/self/stat").is_file():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state in ("Z", "X") or (started is not None and _started(pid) != started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


@contextmanager
def _heartbeat(out: Path, rank: int, world: int, run: str):
    """Rewrite this rank's heartbeat file every ``HEARTBEAT_EVERY_S`` while the block runs, so the others can tell a
    slow rank from a dead one (a thread: the engine call it runs beside can take hours). The file names this run
    (a heartbeat left by an earlier run is not this rank's), the process and where it runs, and counts the beats."""
    path = _alive_path(out, rank, world)
    stop = threading.Event()
    me = dict(run=run, host=socket.gethostname(), space=_pid_space(), pid=os.getpid(), started=_started(os.getpid()))

    def beat() -> None:
        n = 0
        while True:
            n += 1
            try:
                path.write_text(json.dumps({**me, "beat": n}) + "\n")
            except OSError:
                pass
            if stop.wait(HEARTBEAT_EVERY_S):
                return

    thread = threading.Thread(target=beat, name="thinksafe-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _failure_path(out: Path, shard: int, shards: int) -> Path:
    return out / SHARDS_DIR / f"rank_{shard}_of_{shards}.failed"


def _write_failure(out: Path, shard: int, shards: int, message: str) -> None:
    try:
        _failure_path(out, shard, shards).write_text(message)
    except OSError:
        pass


def _wait_for_shards(
    out: Path,
    shards: int,
    tp: int,
    world: int,
    fp: str,
    console,
    *,
    run: str | None = None,
    stale_after_s: float | None = None,
) -> None:
    """Poll until every shard is finished; raise when one failed, or when the rank building it died (its process is
    gone, seen at once on this host) or went silent (its heartbeat of this ``run`` unchanged for ``stale_after_s``,
    default ``STALE_AFTER_S``, on this rank's clock: clocks of other nodes are never compared)."""
    limit = STALE_AFTER_S if stale_after_s is None else stale_after_s
    here = _pid_space()
    last: dict[int, tuple[str | None, float]] = {}
    said = False
    resume = (
        "Its finished chunks and the other shards are kept: run the same command again to resume every shard where "
        "it stopped (with this or any other number of processes)."
    )
    while True:
        pending = []
        for s in range(shards):
            d = shard_dir(out, s, shards)
            failed = _read(_failure_path(out, s, shards))
            if failed is not None:
                raise UserError(
                    f"the data stage failed on rank {s * tp} (shard {d}): {failed} — the other shards are kept; "
                    "fix the cause and run the same command again to resume."
                )
            if finished_with(d, fp):
                continue
            pending.append(s)
            alive = _alive_path(out, s * tp, world)
            text = _read(alive)
            beat = _parse_beat(text)
            if beat is not None and run is not None and beat.get("run") != run:
                text, beat = None, None  # an earlier run's: this rank has not beaten yet
            if beat is not None and beat.get("space") == here and _process_gone(beat["pid"], beat.get("started")):
                raise UserError(
                    f"the data stage: rank {s * tp} (pid {beat['pid']} on {beat.get('host')}) died while building "
                    f"its shard {d}, which is unfinished (killed, or out of memory: see the system log, e.g. "
                    f"`dmesg`). {resume}"
                )
            seen, since = last.get(s, (None, time.monotonic()))
            if s not in last or text != seen:
                last[s] = (text, time.monotonic())
            elif time.monotonic() - since > limit:
                where = f" (pid {beat['pid']} on {beat.get('host')})" if beat else ""
                raise UserError(
                    f"the data stage: rank {s * tp}{where} stopped working on its shard {d}: its heartbeat file "
                    f"{alive} has not changed for {limit:.0f} s (data.heartbeat_timeout_s), so the process died on "
                    f"another node, hangs, or never started. {resume} If that rank is only slow to write to a "
                    "shared file system that caches for longer, raise data.heartbeat_timeout_s."
                )
        if not pending:
            return
        if not said and console is not None:
            console.print(
                f"this rank's shard is done; waiting for shard(s) {', '.join(map(str, pending))} of {shards} "
                f"(in {out / SHARDS_DIR})"
            )
            said = True
        time.sleep(POLL_EVERY_S)


def _parse_beat(text: str | None) -> dict[str, Any] | None:
    try:
        beat = json.loads(text) if text else None
    except ValueError:  # caught mid-write
        return None
    return beat if isinstance(beat, dict) and isinstance(beat.get("pid"), int) else None


@contextmanager
def _visible_devices(device_index: int | None, tp: int):
    """The engine process (spawned, so it inherits the environment of the moment) sees only this rank's
    device(s); the training process, whose CUDA context already exists, is not affected."""
    if device_index is None:
        yield
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(device_index + tp)]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[device_index : device_index + tp])
    try:
        yield
    finally:
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
