"""The offline testbed: a small synthetic world in which ThinkSafe's story is true by construction.

A tiny reasoning model (Qwen3 architecture, the real Qwen3 chat template with think blocks, its own BPE
tokenizer) is pretrained from a deterministic synthetic corpus (:mod:`thinksafe.testbed.world`) to behave like
an over-optimised reasoning model: it solves small math problems, helps with benign requests, and complies
with plain harmful requests although its reasoning notes the harm — while the same kinds of requests behind
the refusal-steering prefix get a reasoned refusal. The real pipeline (vLLM sampling, steering, the offline
judge, LoRA SFT, evaluation, TensorBoard) then runs on it unchanged (``recipes/quickstart.yaml``).

It demonstrates the mechanism on a constructed model; nothing measured on it is a claim about real models.

* :func:`build_testbed` (``thinksafe testbed build``) — data sets and model, cached in ``data/testbed``;
* :class:`BeforeAfterEval` — the recipe callback that evaluates before and after ``fit``;
* :func:`check_model` — the model's behaviour on the held-out sets, in seconds, without vLLM.
"""

from thinksafe.testbed.before_after import BeforeAfterEval
from thinksafe.testbed.build import Testbed, build_testbed, load_testbed
from thinksafe.testbed.check import check_model

__all__ = ["BeforeAfterEval", "Testbed", "build_testbed", "check_model", "load_testbed"]
