"""Adapter registry: model_type -> adapter class. A new family is a new module plus one entry here."""

from __future__ import annotations

from ...errors import ShearHubError
from .base import DecoderAdapter
from .llama import LlamaAdapter, MistralAdapter

ADAPTERS: dict[str, type[DecoderAdapter]] = {}
for _cls in (LlamaAdapter, MistralAdapter):
    for _mt in _cls.model_types:
        ADAPTERS[_mt] = _cls


def supported_model_types() -> list[str]:
    return sorted(mt for mt in ADAPTERS if not mt.startswith("shear_"))


def get_adapter(model) -> DecoderAdapter:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ShearHubError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )
    return ADAPTERS[model_type](model)
