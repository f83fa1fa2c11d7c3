"""What gets trained: LoRA adapters (default) or every weight; and how to reach the initial model for the KL term.

Chosen in recipes by ``class_path``::

    model:
      adapter:
        class_path: thinksafe.model.adapters.LoRA
        init_args: {r: 32, alpha: 16, dropout: 0.05}
"""

from __future__ import annotations

import copy
import importlib
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from thinksafe.errors import UserError
from thinksafe.model.head_loss import final_hidden, output_weight


class Reference(ABC):
    """The initial (pre-training) model, for the forward-KL term. Never receives gradients."""

    @abstractmethod
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The initial model's final hidden states ``[batch, length, hidden]`` and its LM head weight, computed
        without autograd (the loss applies the head at supervised positions only:
        :mod:`thinksafe.model.head_loss`)."""

    def frozen_modules(self) -> list[nn.Module]:
        """Modules the reference holds beside the trained model (to place and shard like it)."""
        return []


class Adapter(ABC):
    """Turns a freshly loaded causal LM into the model to train.

    Subclasses keep their constructor arguments as attributes of the same names, so :meth:`as_config` can write
    them where only plain data is allowed (checkpoint hyperparameters are read back with ``weights_only``).
    """

    def as_config(self) -> dict[str, Any]:
        """``{"class_path": …, "init_args": …}``, the form jsonargparse and LightningCLI use."""
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": dict(vars(self))}

    @staticmethod
    def from_config(config: dict[str, Any]) -> Adapter:
        """The adapter an :meth:`as_config` dict describes."""
        module, _, name = config["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
        if not (isinstance(cls, type) and issubclass(cls, Adapter)):
            raise UserError(f"model.adapter: {config['class_path']!r} is not a thinksafe adapter class.")
        return cls(**config.get("init_args", {}))

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """The model to train (trainable parameters have ``requires_grad``)."""

    @abstractmethod
    def reference(self, model: nn.Module) -> Reference:
        """The initial model of ``model`` (call right after :meth:`apply`, before any update)."""


class _AdapterDisabled(Reference):
    """A LoRA model with its adapters switched off is exactly the initial model: no copy needed."""

    def __init__(self, model: nn.Module):
        self._model = [model]  # a list, so the reference is not a second owner of the model's parameters

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self._model[0]
        with torch.no_grad(), model.disable_adapter():
            return final_hidden(model, input_ids, attention_mask), output_weight(model).detach()


class _FrozenCopy(Reference):
    """A copy of the weights taken before training; frozen, in eval mode."""

    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return final_hidden(self.module, input_ids, attention_mask), output_weight(self.module).detach()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.module]


class LoRA(Adapter):
    """Low-rank adapters (PEFT) on a frozen base model.

    Args:
        r: rank of the adapter matrices.
        alpha: scaling numerator (the update is scaled by ``alpha / r``; ThinkSafe uses ``r // 2``).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt (e.g. ``[q_proj, k_proj, v_proj, o_proj]``); None: PEFT's
            default for the architecture (``q_proj``, ``v_proj`` for Qwen/Llama).
    """

    def __init__(self, r: int = 32, alpha: int = 16, dropout: float = 0.05, target_modules: list[str] | None = None):
        if r < 1:
            raise UserError(f"model.adapter.r must be ≥ 1, got {r}.")
        if not 0 <= dropout < 1:
            raise UserError(f"model.adapter.dropout must be in [0, 1), got {dropout}.")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            return get_peft_model(model, config)
        except ValueError as e:  # unknown architecture without target_modules, or names that match nothing
            raise UserError(f"model.adapter.target_modules: {e}") from None

    def reference(self, model: nn.Module) -> Reference:
        return _AdapterDisabled(model)

    def __repr__(self) -> str:
        return f"LoRA(r={self.r}, alpha={self.alpha}, dropout={self.dropout}, target_modules={self.target_modules})"


class FullFineTune(Adapter):
    """Train every weight. The KL term then needs a frozen copy of the initial model (twice the weights)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(True)

    def reference(self, model: nn.Module) -> Reference:
        return _FrozenCopy(model)

    def __repr__(self) -> str:
        return "FullFineTune()"
