"""Measuring models: perplexity (and, in their own modules, speed and zero-shot tasks)."""

from .perplexity import perplexity

__all__ = ["perplexity"]
