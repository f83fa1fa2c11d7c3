"""The LightningModule and what it trains. Recipes name adapters at this depth: ``thinksafe.model.LoRA``,
``thinksafe.model.FullFineTune`` (as ``thinksafe.sampling.VLLMSampler``, ``thinksafe.guards.LlamaGuard3``)."""

from thinksafe.model.adapters import Adapter, FullFineTune, LoRA

__all__ = ["Adapter", "FullFineTune", "LoRA"]
