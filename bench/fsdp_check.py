"""FSDP2 (ModelParallelStrategy, fully_shard per decoder layer + root) vs a single device, on one GPU.

Trains ThinkSafeModule (LoRA, bf16-true) on synthetic batches with a randomly initialised model of
Qwen3-0.6B's shape (tied embeddings, the case that crashes FSDP1), ``--steps`` optimizer steps per strategy,
and prints one JSON object: tokens/s (after ``--warmup`` steps), peak GPU memory and the per-step losses of
both runs (same seed and data, so they should agree to bf16 noise).

    python bench/fsdp_check.py                         # on a GPU machine
    python bench/fsdp_check.py --preset tiny --accelerator cpu --precision 32-true   # logic check on CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

# the benchmark's shapes, so both scripts build the same models (bench/ is on sys.path when run as a script)
from train_throughput import SHAPES as PRESETS


def write_model(directory: Path, preset: str) -> Path:
    """A random-init model of the preset's shape with thinksafe's tiny tokenizer (token ids beyond the
    tokenizer's vocabulary are fine: batches are synthetic and never decoded)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from thinksafe.model.tiny import build_tokenizer

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**PRESETS[preset])).to(torch.bfloat16)
    model.save_pretrained(directory)
    build_tokenizer("qwen3").save_pretrained(directory)
    return directory


def synthetic_loader(vocab: int, batches: int, batch_size: int, seq_len: int, prompt_len: int):
    import torch
    from torch.utils.data import DataLoader

    from thinksafe.rows import LABELS, EncodedRow, collate

    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(batches * batch_size):
        ids = torch.randint(10, vocab, (seq_len,), generator=g).tolist()
        label = LABELS[i % len(LABELS)]
        rows.append(EncodedRow(ids, [-100] * prompt_len + ids[prompt_len:], label))
    return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=lambda b: collate(b, pad_id=0))


def run(strategy_name: str, model_dir: Path, args) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import ModelParallelStrategy

    from thinksafe.model.adapters import LoRA
    from thinksafe.model.module import ThinkSafeModule

    class Clock(Callback):
        def __init__(self):
            self.losses, self.tokens, self.started = [], 0, None

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._sync()
            self.losses.append(outputs["loss"].item())
            if len(self.losses) == args.warmup:
                self.started = time.perf_counter()
            elif len(self.losses) > args.warmup:
                self.tokens += int(batch["attention_mask"].sum())

    strategy = (
        ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1) if strategy_name == "fsdp2" else "auto"
    )
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    L.seed_everything(0)
    clock = Clock()
    module = ThinkSafeModule(
        str(model_dir),
        adapter=LoRA(r=32, alpha=16, dropout=0.0),
        kl_weight=args.kl_weight,
        lr=1e-5,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        strategy=strategy,
        precision=args.precision,
        max_steps=args.steps,
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(model_dir.parent / strategy_name),
        # one process: keep the loader's order (Lightning's DistributedSampler would shuffle it)
        use_distributed_sampler=False,
    )
    vocab = PRESETS[args.preset]["vocab_size"]
    trainer.fit(module, synthetic_loader(vocab, args.steps, args.batch_size, args.seq_len, args.seq_len // 8))
    seconds = time.perf_counter() - clock.started
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "tokens_per_s": round(clock.tokens / seconds, 1),
        "peak_memory_gib": peak and round(peak, 2),
        "losses": [round(x, 5) for x in clock.losses],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen3-0.6b")
    parser.add_argument("--accelerator", default="cuda")
    parser.add_argument("--precision", default="bf16-true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the tokens/s figure")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--kl-weight", type=float, default=0.0)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model(Path(tmp) / "model", args.preset)
        results = {name: run(name, model_dir, args) for name in ("single", "fsdp2")}
    a, b = results["single"]["losses"], results["fsdp2"]["losses"]
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else args.accelerator,
                "config": vars(args),
                "max_loss_difference": max(abs(x - y) for x, y in zip(a, b)),
                **results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
