"""thinksafe: self-generated safety alignment for reasoning LLMs (ThinkSafe) on PyTorch Lightning.

Pipeline, one sub-package per stage:
  data      prompt sets, the self-generated safety set, chat rendering, the DataModule
  sampling  steering, reasoning formats, the Sampler protocol (vLLM, transformers)
  guards    the Guard protocol (Llama-Guard-3, WildGuard, offline judge)
  model     the LightningModule, adapters (LoRA / full), forward-KL
  metrics   torchmetrics used during training
  eval      benchmarks (loader + scorer each), math answer checking, `eval` / `score`

The names below are the public API: what a script needs to build the DataModule and the Module and call
``lightning.Trainer(...).fit`` (README, "Python API"). They are imported on first use, so ``import thinksafe``
stays cheap (no torch, Lightning or vLLM until a class is touched).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module it is imported from (the depth recipes use for class paths)
_EXPORTS = {
    "SafetyDataModule": "thinksafe.data.datamodule",
    "PromptSource": "thinksafe.data.prompts",
    "ThinkSafeModule": "thinksafe.model.module",
    "Adapter": "thinksafe.model",
    "LoRA": "thinksafe.model",
    "FullFineTune": "thinksafe.model",
    "ResumableCheckpoint": "thinksafe.model",
    "Sampler": "thinksafe.sampling",
    "SamplingConfig": "thinksafe.sampling",
    "Completion": "thinksafe.sampling",
    "VLLMSampler": "thinksafe.sampling",
    "TransformersSampler": "thinksafe.sampling",
    "PAPER_TEMPLATE": "thinksafe.sampling.steering",
    "Guard": "thinksafe.guards",
    "GuardVerdict": "thinksafe.guards",
    "LlamaGuard3": "thinksafe.guards",
    "WildGuard": "thinksafe.guards",
    "OfflineJudge": "thinksafe.guards",
    "InDistributionLogger": "thinksafe.metrics.in_distribution",
    "SafetyProbes": "thinksafe.eval",
    "export_merged": "thinksafe.model.export",
    "build_tiny_model": "thinksafe.model.tiny",
    "UserError": "thinksafe.errors",
}

# written out (not derived from _EXPORTS) so linters see what the TYPE_CHECKING imports below are for
__all__ = [
    "__version__",
    "SafetyDataModule",
    "PromptSource",
    "ThinkSafeModule",
    "Adapter",
    "LoRA",
    "FullFineTune",
    "ResumableCheckpoint",
    "Sampler",
    "SamplingConfig",
    "Completion",
    "VLLMSampler",
    "TransformersSampler",
    "PAPER_TEMPLATE",
    "Guard",
    "GuardVerdict",
    "LlamaGuard3",
    "WildGuard",
    "OfflineJudge",
    "InDistributionLogger",
    "SafetyProbes",
    "export_merged",
    "build_tiny_model",
    "UserError",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.data.prompts import PromptSource
    from thinksafe.errors import UserError
    from thinksafe.eval import SafetyProbes
    from thinksafe.guards import Guard, GuardVerdict, LlamaGuard3, OfflineJudge, WildGuard
    from thinksafe.metrics.in_distribution import InDistributionLogger
    from thinksafe.model import Adapter, FullFineTune, LoRA, ResumableCheckpoint
    from thinksafe.model.export import export_merged
    from thinksafe.model.module import ThinkSafeModule
    from thinksafe.model.tiny import build_tiny_model
    from thinksafe.sampling import Completion, Sampler, SamplingConfig, TransformersSampler, VLLMSampler
    from thinksafe.sampling.steering import PAPER_TEMPLATE


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'thinksafe' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
