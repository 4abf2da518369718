"""Adapter registry: model_type -> adapter class. A new family is a new module plus one entry here."""

from __future__ import annotations

from ...errors import ShearHubError
from .base import DecoderAdapter
from .gemma import Gemma2Adapter, Gemma3TextAdapter
from .llama import LlamaAdapter, MistralAdapter
from .opt import OPTAdapter
from .phi3 import Phi3Adapter
from .qwen import Qwen2Adapter, Qwen3Adapter

ADAPTERS: dict[str, type[DecoderAdapter]] = {}
for _cls in (LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter, Gemma2Adapter, Gemma3TextAdapter,
             Phi3Adapter, OPTAdapter):
    for _mt in _cls.model_types:
        ADAPTERS[_mt] = _cls


def supported_model_types() -> list[str]:
    return sorted(mt for mt in ADAPTERS if not mt.startswith("shear_"))


def check_model_type(model_type: str | None) -> None:
    """Refuse an architecture no adapter knows (callable from config.json alone, before any model work)."""
    if model_type not in ADAPTERS:
        raise ShearHubError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )


def get_adapter(model) -> DecoderAdapter:
    model_type = getattr(model.config, "model_type", None)
    check_model_type(model_type)
    return ADAPTERS[model_type](model)
