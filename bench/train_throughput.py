"""Training throughput of three batching setups side by side: one process, one model, one data set.

    python bench/train_throughput.py                                       # this CPU, scaled down
    python bench/train_throughput.py --device cuda --shape qwen3-0.6b      # a GPU (random init; 168 s on an H200
                                                                           # with --rows 160, start-up included)
    python bench/train_throughput.py --json results.json                   # also write the numbers as JSON
    python bench/train_throughput.py --head-loss --json head.json          # LM-head loss: logits vs chunked
    python bench/train_throughput.py --master-weights --json mw.json       # float32 LoRA under bf16-true: the cost

Setups, each one epoch over the same rows with the project's real training step
(``ThinkSafeModule.training_step``, LoRA r=32 on q/v, then ``backward`` and AdamW every ``accumulate`` micro-batches,
as Lightning runs it):

* ``authors``: ThinkSafe's published recipe: batch 1, gradient checkpointing, accumulation 8;
* ``fixed``: fixed-size batches of random rows padded to the longest, no checkpointing, same rows per step;
* ``thinksafe``: :mod:`thinksafe.data.batching`: micro-batches of similar lengths filled to a token budget, steps
  of about 8 rows, gradient checkpointing only if the budget does not fit without it (measured on the worst case).

Rows have reasoning-trace lengths: a prompt of 32 to 160 tokens and a long-tailed (log-normal) response with a
median of a fifth of ``--max-length``, cut at ``--max-length`` like ``ChatEncoder`` cuts them. Reported per setup:
real (non-padding) tokens/s, padding share, peak memory (allocated CUDA memory; on the CPU the process's peak
resident set, libraries included) and the share of the chip's measured matmul rate that the model FLOPs reach
(6·N per token for the N matmul weights incl. the LM head, plus 6·L·D·s² per row of s tokens for causal attention:
the usual MFU convention; LoRA skips the frozen weights' gradients, so the work it needs is nearer 4·N).
``speedup_vs_seed`` in the JSON is thinksafe's tokens/s over the authors' setup's.

``--head-loss`` compares instead the loss of the same token-budget micro-batches (no checkpointing) computed two
ways, with and without forward KL (weight 1, added on benign rows): ``materialised``, the model's full B × T × V
logits and then the cross-entropy/KL over them (thinksafe before issue #16), and ``chunked``, the training step's
own loss (:mod:`thinksafe.model.head_loss`: the LM head applied chunk by chunk at supervised positions only). Its
default shape, ``qwen3-vocab``, has Qwen3's real 151,936-token vocabulary on a small decoder, so it runs on a CPU
and the head dominates as it does in the real model. Besides the process's peak, it reports ``step_peak_bytes``:
the peak above what the process held before the epoch (model, data, libraries), i.e. what the steps add; the
JSON's top-level ``logits_memory_ratio`` is materialised ÷ chunked of that, without KL
(``logits_memory_ratio_kl`` with it).

``--master-weights`` times the thinksafe setup (token budget, no checkpointing) three ways on the same
micro-batches: ``bf16-true`` as thinksafe trains (bfloat16 base, float32 LoRA weights, gradients and AdamW state,
the forward under bf16 autocast), ``bf16-true, bf16 LoRA`` (the LoRA weights cast to bfloat16 as well: thinksafe
before issue #10, which rounded most lr-1e-5 updates away) and ``32-true`` (everything float32). The JSON's
``master_weight_cost`` is tokens/s of the bf16-LoRA variant ÷ that of thinksafe's (above 1: float32 master
weights are slower by that factor), ``bf16_vs_32_true`` thinksafe's ÷ 32-true's. On a CPU bfloat16 matmuls are
not what a GPU's are: the CPU ratios say nothing about CUDA.

Attention runs on the sdpa kernel torch picks, as in training. ``--no-cudnn-sdpa`` keeps it off cuDNN's, which
builds an execution plan for every new (rows, length) shape it sees (pytorch 2.11 on Hopper/Blackwell; a known
cost of several hundred ms per new shape), i.e. for nearly every micro-batch of variable-length rows.
On the CPU, ``--threads 1`` keeps torch's threads from spinning against other processes on a loaded machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SHAPES = {
    # Qwen/Qwen3-0.6B config.json
    "qwen3-0.6b": dict(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
    ),
    # a scaled-down Qwen3 for CPUs: compute-bound enough that batching is not just saving Python overhead
    "small": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    # Qwen3's real vocabulary on a decoder small enough for a CPU: the LM head is most of the step, as at 0.6B
    "qwen3-vocab": dict(
        vocab_size=151936,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    # thinksafe.model.tiny's shape (the tests' model), vocabulary rounded up
    "tiny": dict(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
}
DEFAULTS = {
    "cpu": dict(shape="tiny", rows=128, max_length=512, max_tokens_per_batch=4096, dtype="float32"),
    "cuda": dict(shape="qwen3-0.6b", rows=192, max_length=4096, max_tokens_per_batch=16384, dtype="bfloat16"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--shape", choices=sorted(SHAPES), default=None, help="model shape (default: small on cpu, qwen3-0.6b on cuda)"
    )
    p.add_argument("--rows", type=int, default=None, help="rows in the data set")
    p.add_argument("--max-length", type=int, default=None, help="longest row (tokens)")
    p.add_argument("--max-tokens-per-batch", type=int, default=None, help="thinksafe's token budget")
    p.add_argument("--fixed-batch-size", type=int, default=4, help="rows per batch of the fixed setup")
    p.add_argument("--accumulate", type=int, default=8, help="the authors' accumulation (rows per optimizer step)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; on a loaded "
        "machine 1 avoids threads spinning against other processes)",
    )
    p.add_argument(
        "--no-cudnn-sdpa",
        action="store_true",
        help="keep sdpa off its cuDNN backend, which builds a plan for every new (rows, length) shape",
    )
    p.add_argument("--repeats", type=int, default=3, help="epochs per setup, taken in turns; the median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--head-loss",
        action="store_true",
        help="compare materialised logits with the chunked LM-head loss (default shape qwen3-vocab)",
    )
    p.add_argument(
        "--master-weights",
        action="store_true",
        help="time bf16-true with float32 LoRA (thinksafe) against bf16 LoRA and 32-true",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.head_loss and args.master_weights:
        p.error("--head-loss and --master-weights are separate runs")
    if args.master_weights:
        args.dtype = "bfloat16"  # the base of the bf16-true variants (32-true loads its own float32 copy)
    if args.head_loss and args.shape is None:
        args.shape = "qwen3-vocab"
        for key, value in dict(rows=32, max_length=256, max_tokens_per_batch=1024).items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.max_tokens_per_batch < args.max_length:
        p.error("--max-tokens-per-batch must be ≥ --max-length")
    return args


# -------------------------------------------------------------------------------------------- model and data
def write_model(directory: Path, shape: str, dtype: str, device: str) -> Path:
    """A random-init Qwen3 of ``shape`` with thinksafe's tiny tokenizer (rows are random ids, never decoded)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from thinksafe.model.tiny import build_tokenizer

    torch.manual_seed(0)
    with torch.device(device):  # initialising 0.6B weights on a GPU takes a moment, on a CPU much longer
        model = Qwen3ForCausalLM(Qwen3Config(**SHAPES[shape]))
    model.to(getattr(torch, dtype)).save_pretrained(directory)
    build_tokenizer("qwen3").save_pretrained(directory)
    del model
    return directory


def trace_rows(n: int, max_length: int, vocab: int, seed: int) -> list:
    """Encoded rows (as ChatEncoder makes them) with reasoning-trace lengths: long-tailed responses."""
    from thinksafe.rows import IGNORE_INDEX, LABELS, EncodedRow

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = min(rng.randint(32, 160), max_length // 4)
        response = max(8, int(rng.lognormvariate(math.log(0.2 * max_length), 0.9)))
        length = min(prompt + response, max_length)
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        label = LABELS[i % len(LABELS)]
        rows.append(EncodedRow(ids, [IGNORE_INDEX] * prompt + ids[prompt:], label))
    return rows


def model_flops(config, lengths: list[int]) -> float:
    """Forward + backward FLOPs of rows of these lengths (see the module docstring)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size
    weights = layers * per_layer + h * config.vocab_size
    return sum(6 * weights * s + 6 * layers * q * s * s for s in lengths)


# ----------------------------------------------------------------------------------------------- measuring
def matmul_rate(device: str, dtype: str) -> float:
    """FLOP/s of a large square matrix product on this device (mean of 10 after 3 warm-ups)."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    from thinksafe.model.memory import _reset_host_peak

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_host_peak()


def _peak(device: str) -> float | None:
    import torch

    from thinksafe.model.memory import _host_rss

    if device == "cuda":
        return float(torch.cuda.max_memory_allocated())
    rss = _host_rss("VmHWM")
    return None if rss is None else float(rss)


def _held(device: str) -> float | None:
    import torch

    from thinksafe.model.memory import _host_rss

    if device == "cuda":
        return float(torch.cuda.memory_allocated())
    rss = _host_rss("VmRSS")
    return None if rss is None else float(rss)


def train_epoch(module, batches: list[dict], accumulate: int, device: str, step=None) -> dict:
    """One epoch of the real training step (or ``step(batch)``, a loss); timed after one untimed warm-up
    micro-batch."""
    import torch

    step = step or (lambda batch, i: module.training_step(batch, i))
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    _reset_peak(device)
    held = _held(device)
    warm = {k: v.to(device) for k, v in batches[0].items()}
    step(warm, 0).backward()
    optimizer.zero_grad(set_to_none=True)
    del warm
    _sync(device)
    tokens = padded = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, cpu_batch in enumerate(batches):
        tokens += int(cpu_batch["attention_mask"].sum())
        padded += cpu_batch["attention_mask"].numel()
        batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
        loss = step(batch, i)
        (loss / accumulate).backward()  # Lightning's automatic accumulation divides the same way
        if (i + 1) % accumulate == 0 or i + 1 == len(batches):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # CPU time as well: on a machine shared with other work it measures this process's work, not the others'
    return dict(
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        tokens=tokens,
        padded_tokens=padded,
        tokens_per_s=tokens / seconds,
        tokens_per_cpu_s=tokens / cpu_seconds,
        padding_share=1 - tokens / padded,
        peak_bytes=(peak := _peak(device)),
        step_peak_bytes=None if peak is None or held is None else peak - held,
        micro_batches=len(batches),
        optimizer_steps=math.ceil(len(batches) / accumulate),
        accumulate=accumulate,
    )


def sdpa_backends(no_cudnn: bool):
    """torch's own choice of attention kernels, or all but cuDNN's."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not no_cudnn:
        return nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def fixed_batches(rows: list[dict], batch_size: int, pad_id: int, seed: int) -> list[dict]:
    """What ``SafetyDataModule`` serves without a token budget: shuffled rows, ``batch_size`` at a time."""
    import torch
    from torch.utils.data import DataLoader

    from thinksafe.rows import collate

    g = torch.Generator().manual_seed(seed)
    return list(
        DataLoader(rows, batch_size=batch_size, shuffle=True, generator=g, collate_fn=partial(collate, pad_id=pad_id))
    )


def uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------- LM-head loss
def materialised_loss(module, batch: dict):
    """The loss as thinksafe computed it before issue #16 (same value as the training step's, CE + KL added on
    benign rows): the model's full logits at every position, then chunked CE/KL over them
    (:mod:`thinksafe.model.kl`), the reference's full logits likewise."""
    import torch

    from thinksafe.model.kl import ForwardKL, shift_labels, token_cross_entropy
    from thinksafe.rows import IGNORE_INDEX

    hp, model = module.hparams, module.model
    input_ids, mask, harmful = batch["input_ids"], batch["attention_mask"], batch["harmful"]
    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
    targets = shift_labels(batch["labels"])
    ce = token_cross_entropy(logits, targets, hp.kl_chunk_size)
    loss = ce.sum()
    benign = (~harmful).nonzero().squeeze(-1)
    if hp.kl_weight > 0 and benign.numel():
        with torch.no_grad(), model.disable_adapter():
            ref_logits = model(input_ids=input_ids[benign], attention_mask=mask[benign], use_cache=False).logits
        kl_targets = targets.masked_fill(harmful[:, None], IGNORE_INDEX)
        kl = ForwardKL(hp.kl_chunk_size).per_token(logits, ref_logits, kl_targets, ref_rows=benign)
        loss = loss + hp.kl_weight * kl.sum()
    loss = loss / ce.numel()
    return loss * batch["loss_scale"] if "loss_scale" in batch else loss


def in_turns(epochs: dict, repeats: int, extra=None) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Run each variant's epoch (``epochs``: name → a function running one epoch and returning train_epoch's
    dict) in turns, ``repeats`` times: a change of the machine's load during the run then weighs on every variant
    alike instead of on whichever ran at that moment. Returns (each variant's median epoch by tokens/s, with every
    epoch's tokens/s in ``tokens_per_s_runs``; every epoch of each variant). ``extra(r)``: more of the line each
    epoch prints."""
    runs: dict[str, list[dict]] = {name: [] for name in epochs}
    for repeat in range(repeats):
        for name, epoch in epochs.items():
            r = epoch()
            runs[name].append(r)
            more = extra(r) if extra else ""
            print(f"  {name} ({repeat + 1}/{repeats}): {r['tokens_per_s']:.0f} tokens/s{more}", flush=True)
    medians = {}
    for name, rs in runs.items():
        ordered = sorted(rs, key=lambda r: r["tokens_per_s"])
        medians[name] = dict(ordered[len(ordered) // 2], tokens_per_s_runs=[r["tokens_per_s"] for r in rs])
    return medians, runs


def compare_head_loss(args, module, rows: list[dict], pad_id: int) -> dict:
    """Materialised vs chunked LM-head loss, without and with KL, on the same token-budget micro-batches; the
    variants take turns ``--repeats`` times (median epoch reported)."""
    import torch

    from thinksafe.data.batching import token_budget_loader
    from thinksafe.model.memory import set_gradient_checkpointing

    loader = token_budget_loader(rows, pad_id, args.max_tokens_per_batch, rows_per_step=args.accumulate, seed=args.seed)
    batches, accumulate = list(loader), loader.sampler.micro_batches_per_step
    set_gradient_checkpointing(module.model, False)
    module.eval()  # no LoRA dropout while checking that the two computations agree, before anything is timed
    with torch.no_grad():
        probe = {k: v.to(args.device) for k, v in batches[0].items()}
        for kl in (0.0, 1.0):
            module.hparams.kl_weight = kl
            a, b = materialised_loss(module, probe).item(), module._loss(probe)[0].item()
            if abs(a - b) > 1e-3 * max(1.0, abs(a)):
                raise SystemExit(f"materialised and chunked losses differ (kl {kl}): {a} vs {b}")
    module.train()
    variants = {f"{how}{'+kl' if kl else ''}": (how, kl) for kl in (0.0, 1.0) for how in ("materialised", "chunked")}

    def epoch(how: str, kl: float) -> dict:
        module.hparams.kl_weight = kl
        step = (lambda batch, i: materialised_loss(module, batch)) if how == "materialised" else None
        with sdpa_backends(args.no_cudnn_sdpa):
            return train_epoch(module, batches, accumulate, args.device, step=step)

    results, runs = in_turns(
        {name: partial(epoch, how, kl) for name, (how, kl) in variants.items()},
        args.repeats,
        extra=lambda r: f", step peak {_gib(r['step_peak_bytes'])} GiB",
    )
    for name, (_, kl) in variants.items():
        r = results[name]
        # memory: the largest of the repeats (the peak a budget has to fit)
        r["step_peak_bytes"] = max((x["step_peak_bytes"] or 0) for x in runs[name]) or None
        r["peak_bytes"] = max((x["peak_bytes"] or 0) for x in runs[name]) or None
        r["kl_weight"] = kl

    def ratio(a: str, b: str) -> float | None:
        x, y = results[a]["step_peak_bytes"], results[b]["step_peak_bytes"]
        return None if not x or not y else x / y

    return dict(
        variants=results,
        logits_memory_ratio=ratio("materialised", "chunked"),
        logits_memory_ratio_kl=ratio("materialised+kl", "chunked+kl"),
        throughput_ratio=results["chunked"]["tokens_per_s"] / results["materialised"]["tokens_per_s"],
        throughput_ratio_kl=results["chunked+kl"]["tokens_per_s"] / results["materialised+kl"]["tokens_per_s"],
    )


def compare_master_weights(args, model_dir: Path, rows: list, pad_id: int) -> dict:
    """Tokens/s of the thinksafe setup under bf16-true with float32 LoRA (thinksafe), with bf16 LoRA, and under
    32-true; see the module docstring. Each variant is its own module built from the same weights and seed."""
    import torch

    from thinksafe.data.batching import token_budget_loader
    from thinksafe.model.adapters import LoRA
    from thinksafe.model.memory import set_gradient_checkpointing
    from thinksafe.model.module import ThinkSafeModule, trainable_modules

    def build(dtype: torch.dtype, lora_dtype: torch.dtype) -> ThinkSafeModule:
        torch.manual_seed(args.seed)
        module = ThinkSafeModule(
            str(model_dir), adapter=LoRA(r=32, alpha=16, dropout=0.05), dtype=str(dtype).removeprefix("torch.")
        )
        module.configure_model()
        module.to(device=args.device, dtype=dtype).train()  # as the precision plugin casts it
        for m in trainable_modules(module.model):
            m.to(lora_dtype)
        set_gradient_checkpointing(module.model, False)
        return module

    variants = {
        "bf16-true": build(torch.bfloat16, torch.float32),
        "bf16-true, bf16 LoRA": build(torch.bfloat16, torch.bfloat16),
        "32-true": build(torch.float32, torch.float32),
    }
    for name, module in variants.items():
        lora = {p.dtype for p in module.model.parameters() if p.requires_grad}
        print(f"  {name}: LoRA {sorted(map(str, lora))}, compute {module._compute_dtype or torch.float32}")
    loader = token_budget_loader(rows, pad_id, args.max_tokens_per_batch, rows_per_step=args.accumulate, seed=args.seed)
    batches, accumulate = list(loader), loader.sampler.micro_batches_per_step

    def epoch(module: ThinkSafeModule) -> dict:
        with sdpa_backends(args.no_cudnn_sdpa):
            return train_epoch(module, batches, accumulate, args.device)

    results, _ = in_turns({name: partial(epoch, module) for name, module in variants.items()}, args.repeats)
    speed = {name: r["tokens_per_s"] for name, r in results.items()}
    return dict(
        variants=results,
        master_weight_cost=speed["bf16-true, bf16 LoRA"] / speed["bf16-true"],
        bf16_vs_32_true=speed["bf16-true"] / speed["32-true"],
    )


def print_master_weights_table(report: dict) -> None:
    print(
        f"\n{report['device']}, {report['threads']} thread(s), {report['shape']}, {report['rows']} rows, budget "
        f"{report['max_tokens_per_batch']} tokens, load {report['load_average']['before']} → "
        f"{report['load_average']['after']}"
    )
    print(f"{'precision':<22} {'tokens/s':>10} {'process peak GiB':>17}")
    for name, r in report["variants"].items():
        print(f"{name:<22} {r['tokens_per_s']:>10.0f} {_gib(r['peak_bytes']):>17}")
    print(
        f"master_weight_cost (bf16 LoRA ÷ float32 LoRA tokens/s): {report['master_weight_cost']:.2f}×; "
        f"bf16-true ÷ 32-true: {report['bf16_vs_32_true']:.2f}×"
    )


def _gib(x: float | None) -> str:
    return "?" if x is None else f"{x / 2**30:.2f}"


# -------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from thinksafe.data.batching import token_budget_loader, worst_case_batch
    from thinksafe.model.adapters import LoRA
    from thinksafe.model.memory import choose_gradient_checkpointing, set_gradient_checkpointing
    from thinksafe.model.module import ThinkSafeModule

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = uptime()
    if args.master_weights:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = write_model(Path(tmp), args.shape, "float32", args.device)
            vocab = SHAPES[args.shape]["vocab_size"]
            report = dict(
                device=torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)",
                threads=torch.get_num_threads(),
                shape=args.shape,
                rows=args.rows,
                max_length=args.max_length,
                max_tokens_per_batch=args.max_tokens_per_batch,
                repeats=args.repeats,
                **compare_master_weights(args, model_dir, trace_rows(args.rows, args.max_length, vocab, args.seed), 0),
            )
        report["load_average"] = dict(before=load_before, after=uptime())
        print_master_weights_table(report)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return report
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model(Path(tmp), args.shape, args.dtype, args.device)
        # kl_weight > 0 builds the KL reference; --head-loss switches it per variant, the setups train without
        module = ThinkSafeModule(
            str(model_dir),
            adapter=LoRA(r=32, alpha=16, dropout=0.05),
            dtype=args.dtype,
            attn_implementation="sdpa",
            kl_weight=1.0 if args.head_loss else 0.0,
            kl_mode="add",
        )
        module.configure_model()
    # as the bf16-true precision plugin casts it (trainable weights stay float32 where thinksafe keeps master weights)
    module.to(device=args.device, dtype=getattr(torch, args.dtype)).train()
    config = module.model.get_base_model().config
    pad_id = 0
    rows = trace_rows(args.rows, args.max_length, config.vocab_size, args.seed)
    if args.head_loss:
        load_before = uptime()
        report = dict(
            device=torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)",
            threads=torch.get_num_threads(),
            shape=args.shape,
            vocab_size=config.vocab_size,
            dtype=args.dtype,
            rows=args.rows,
            max_length=args.max_length,
            max_tokens_per_batch=args.max_tokens_per_batch,
            repeats=args.repeats,
            chunk_size=module.hparams.kl_chunk_size,
            **compare_head_loss(args, module, rows, pad_id),
        )
        report["load_average"] = dict(before=load_before, after=uptime())
        print_head_loss_table(report)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return report
    rate = matmul_rate(args.device, args.dtype)

    loader = token_budget_loader(rows, pad_id, args.max_tokens_per_batch, rows_per_step=args.accumulate, seed=args.seed)
    probe = {k: v.to(args.device) for k, v in worst_case_batch(rows, args.max_tokens_per_batch, pad_id).items()}
    choice = choose_gradient_checkpointing(module, probe, args.max_tokens_per_batch)
    del probe
    print(f"thinksafe: {loader.sampler.summary().describe()}")
    print(f"thinksafe: {choice.describe()}")
    fixed_accumulate = max(1, args.accumulate // args.fixed_batch_size)
    setups = {
        "authors": dict(
            batches=fixed_batches(rows, 1, pad_id, args.seed),
            accumulate=args.accumulate,
            checkpointing=True,
            what=f"batch 1, gradient checkpointing, accumulation {args.accumulate}",
        ),
        "fixed": dict(
            batches=fixed_batches(rows, args.fixed_batch_size, pad_id, args.seed),
            accumulate=fixed_accumulate,
            checkpointing=False,
            what=f"batch {args.fixed_batch_size} padded, no checkpointing, accumulation {fixed_accumulate}",
        ),
        "thinksafe": dict(
            batches=list(loader),
            accumulate=loader.sampler.micro_batches_per_step,
            checkpointing=choice.enabled,
            what=f"token budget {args.max_tokens_per_batch}, length-grouped, ~{args.accumulate} rows/step, "
            f"checkpointing {'on' if choice.enabled else 'off'} (measured)",
        ),
    }

    def epoch(setup: dict) -> dict:
        set_gradient_checkpointing(module.model, setup["checkpointing"])
        with sdpa_backends(args.no_cudnn_sdpa):
            return train_epoch(module, setup["batches"], setup["accumulate"], args.device)

    results, _ = in_turns({name: partial(epoch, setup) for name, setup in setups.items()}, args.repeats)
    lengths = [len(rows[i].input_ids) for i in range(len(rows))]
    for name, setup in setups.items():
        r = results[name]
        r["matmul_share"] = model_flops(config, lengths) / r["seconds"] / rate
        r["setup"] = setup["what"]
        r["gradient_checkpointing"] = setup["checkpointing"]

    report = dict(
        device=torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        threads=torch.get_num_threads(),
        cudnn_sdpa=not args.no_cudnn_sdpa,
        shape=args.shape,
        dtype=args.dtype,
        rows=args.rows,
        max_length=args.max_length,
        tokens=results["authors"]["tokens"],
        max_tokens_per_batch=args.max_tokens_per_batch,
        repeats=args.repeats,
        matmul_tflops=rate / 1e12,
        load_average=dict(before=load_before, after=uptime()),
        checkpointing_choice=choice.describe(),
        setups=results,
        speedup_vs_seed=results["thinksafe"]["tokens_per_s"] / results["authors"]["tokens_per_s"],
        speedup_vs_fixed=results["thinksafe"]["tokens_per_s"] / results["fixed"]["tokens_per_s"],
    )
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_table(report: dict) -> None:
    def gib(x):
        return "?" if x is None else f"{x / 2**30:.2f}"

    print(
        f"\n{report['device']}, {report['threads']} thread(s), {report['shape']} ({report['dtype']}), {report['rows']} rows, {report['tokens']} tokens, "
        f"matmul {report['matmul_tflops']:.2f} TFLOP/s, load {report['load_average']['before']} → "
        f"{report['load_average']['after']}"
    )
    print(f"{'setup':<10} {'tokens/s':>10} {'speedup':>8} {'padding':>8} {'peak GiB':>9} {'matmul %':>9}  what")
    base = report["setups"]["authors"]["tokens_per_s"]
    for name, r in report["setups"].items():
        print(
            f"{name:<10} {r['tokens_per_s']:>10.0f} {r['tokens_per_s'] / base:>7.2f}× {100 * r['padding_share']:>7.1f}% "
            f"{gib(r['peak_bytes']):>9} {100 * r['matmul_share']:>8.1f}%  {r['setup']}"
        )
    print(f"speedup_vs_seed: {report['speedup_vs_seed']:.2f}×")


def print_head_loss_table(report: dict) -> None:
    print(
        f"\n{report['device']}, {report['threads']} thread(s), {report['shape']} (vocab {report['vocab_size']}, "
        f"{report['dtype']}), {report['rows']} rows, budget {report['max_tokens_per_batch']} tokens, load "
        f"{report['load_average']['before']} → {report['load_average']['after']}"
    )
    print(f"{'loss':<18} {'tokens/s':>10} {'step peak GiB':>14} {'process peak GiB':>17}")
    for name, r in report["variants"].items():
        print(f"{name:<18} {r['tokens_per_s']:>10.0f} {_gib(r['step_peak_bytes']):>14} {_gib(r['peak_bytes']):>17}")
    print(
        f"logits_memory_ratio: {report['logits_memory_ratio']:.2f}× (with KL {report['logits_memory_ratio_kl']:.2f}×); "
        f"tokens/s chunked ÷ materialised: {report['throughput_ratio']:.2f}× (with KL "
        f"{report['throughput_ratio_kl']:.2f}×)"
    )


if __name__ == "__main__":
    main()
