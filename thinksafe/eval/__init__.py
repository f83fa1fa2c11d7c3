"""Evaluation: benchmarks (a loader and a scorer each), answer checking, ``eval`` and ``score``, and the
training-time :class:`~thinksafe.eval.probes.SafetyProbes` callback (import it from ``thinksafe.eval.probes``)."""

from thinksafe.eval.rescore import score
from thinksafe.eval.runner import EVAL_SAMPLING, run_eval

__all__ = ["EVAL_SAMPLING", "run_eval", "score"]
