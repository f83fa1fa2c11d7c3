"""Measurements of a training run beyond its loss: the in-distribution score of a training set
(:mod:`thinksafe.metrics.in_distribution`), throughput (:class:`TokenThroughput`) and TensorBoard figures
(:mod:`thinksafe.metrics.figures`)."""

from thinksafe.metrics.throughput import TokenThroughput

__all__ = ["TokenThroughput"]
