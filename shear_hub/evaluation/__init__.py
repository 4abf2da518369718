"""Measuring models: perplexity, speed, zero-shot tasks, and ``evaluate`` which runs them together."""

from .perplexity import perplexity

__all__ = ["perplexity", "evaluate"]


def __getattr__(name):  # evaluate pulls in loading/peft-free code lazily: keep `import shear_hub.evaluation` light
    if name == "evaluate":
        from .report import evaluate

        return evaluate
    raise AttributeError(name)
