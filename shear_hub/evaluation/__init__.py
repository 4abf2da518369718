"""Measuring models: perplexity (one text, or the cross-domain protocol), speed, zero-shot tasks, and ``evaluate``
which runs them together."""

from .domains import domain_perplexity, geometric_mean
from .perplexity import perplexity

__all__ = ["perplexity", "domain_perplexity", "geometric_mean", "evaluate"]


def __getattr__(name):  # evaluate pulls in loading/peft-free code lazily: keep `import shear_hub.evaluation` light
    if name == "evaluate":
        from .report import evaluate

        return evaluate
    raise AttributeError(name)
