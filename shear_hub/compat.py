"""The few places where transformers 5.x releases differ in public API that shear-hub calls.

transformers 5.24 renamed the forward keyword ``past_key_values`` to ``cache`` (and the output field likewise); the old
name is deprecated there, with removal announced for 5.40. Everything that feeds or reads a KV cache goes through
these two helpers so that both spellings keep working while both exist.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

from torch import nn


@lru_cache(maxsize=None)
def _cache_keyword_of(forward_cls: type) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_keyword(module: nn.Module) -> str:
    """The forward keyword that takes the KV cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    return _cache_keyword_of(type(module))


def output_cache(output):
    """The KV cache a model returned, whichever field name this transformers uses."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
