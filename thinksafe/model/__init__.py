"""The LightningModule and what it trains. Recipes name classes at this depth: ``thinksafe.model.LoRA``,
``thinksafe.model.FullFineTune``, ``thinksafe.model.ResumableCheckpoint`` (as ``thinksafe.sampling.VLLMSampler``,
``thinksafe.guards.LlamaGuard3``)."""

from typing import Any

from thinksafe.model.adapters import Adapter, FullFineTune, LoRA

__all__ = ["Adapter", "FullFineTune", "LoRA", "ResumableCheckpoint"]


def __getattr__(name: str) -> Any:
    # the checkpoint callback pulls in Lightning; imported when a recipe (or script) names it
    if name == "ResumableCheckpoint":
        from thinksafe.model.checkpoints import ResumableCheckpoint

        return ResumableCheckpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
