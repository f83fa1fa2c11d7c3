"""thinksafe: self-generated safety alignment for reasoning LLMs (ThinkSafe) on PyTorch Lightning.

Pipeline, one sub-package per stage:
  data      prompt sets, the self-generated safety set, chat rendering, the DataModule
  sampling  steering, reasoning formats, the Sampler protocol (vLLM, transformers)
  guards    the Guard protocol (Llama-Guard-3, WildGuard, offline judge)
  model     the LightningModule, adapters (LoRA / full), forward-KL
  metrics   torchmetrics used during training
  eval      benchmarks (loader + scorer each), math answer checking, `eval` / `score`
"""

__version__ = "0.1.0"
