"""Evaluation: benchmarks (a loader and a scorer each), answer checking, ``eval`` and ``score``, the
per-family evaluation presets (:mod:`thinksafe.eval.protocol`), and the training-time
:class:`SafetyProbes` callback (recipes name it ``thinksafe.eval.SafetyProbes``)."""

from typing import Any

from thinksafe.eval.protocol import EVAL_PRESETS
from thinksafe.eval.rescore import score
from thinksafe.eval.runner import EVAL_SAMPLING, run_eval

__all__ = ["EVAL_PRESETS", "EVAL_SAMPLING", "SafetyProbes", "run_eval", "score"]


def __getattr__(name: str) -> Any:
    # the callback pulls in Lightning; imported when a recipe (or script) names it
    if name == "SafetyProbes":
        from thinksafe.eval.probes import SafetyProbes

        return SafetyProbes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
