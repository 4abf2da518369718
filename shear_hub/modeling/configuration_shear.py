"""Per-layer ("shear") configurations: a base family's config plus one set of widths per decoder layer.

This file is shipped inside every per-layer model folder and imports transformers only (never shear_hub), so the
folder loads with ``trust_remote_code=True`` anywhere; where shear_hub is installed, ``shear_hub.from_pretrained`` uses
the same classes without remote code.

On disk, ``config.json`` carries the base family's own ``model_type`` (``llama``, ``qwen2``, ...) and ``layer_dims``:
stock transformers then reads the config (and ``AutoTokenizer`` the folder) without asking to run custom code, and
only the model, through ``auto_map`` and ``trust_remote_code=True``, uses the classes below.

``layer_dims`` holds one dict per decoder layer with ``num_attention_heads``, ``num_key_value_heads`` and
``intermediate_size``; 0 heads means the attention block was removed, 0 intermediate means the MLP block was removed.
Top-level ``num_attention_heads`` etc. hold the widest layer's values (what tools that size caches read); on disk the
top-level query-head count is the largest divisor of ``hidden_size`` up to that, which stock configs require.
"""

from __future__ import annotations

import dataclasses
import json

from huggingface_hub.dataclasses import strict as _strict
from transformers import (
    Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, OPTConfig, Phi3Config, Qwen2Config, Qwen3Config,
)



def strict(cls: type) -> type:
    """huggingface_hub's ``@strict`` where the family configs are strict dataclasses (newer transformers 5.x
    releases, which then call ``validate_architecture``); earlier 5.x configs are plain classes and stay so."""
    return _strict(cls) if dataclasses.is_dataclass(cls) else cls


PER_LAYER_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


class _PerLayerConfigMixin:
    """Adds per-layer widths; relaxes the hidden % heads check (head_dim is always explicit here)."""

    def validate_architecture(self) -> None:  # noqa: D401 - strict-dataclass hook
        dims = getattr(self, "layer_dims", None) or []
        if dims and len(dims) != self.num_hidden_layers:
            raise ValueError(f"layer_dims has {len(dims)} entries for {self.num_hidden_layers} layers")
        for entry in dims:
            heads, kv = entry["num_attention_heads"], entry["num_key_value_heads"]
            if (heads == 0) != (kv == 0) or (kv and heads % kv):
                raise ValueError(f"invalid head layout {heads} query / {kv} key-value heads")

    @classmethod
    def stock_model_type(cls) -> str:
        """The base family's model_type (the first non-shear class after this mixin): what config.json says."""
        return next(base.model_type for base in cls.__mro__[1:]
                    if getattr(base, "model_type", "") and not base.model_type.startswith("shear_"))

    def to_json_string(self, use_diff: bool = True) -> str:
        data = json.loads(super().to_json_string(use_diff=use_diff))
        data["model_type"] = self.stock_model_type()
        heads, hidden = data.get("num_attention_heads"), data.get("hidden_size")
        if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads:
            # stock configs (what AutoConfig / AutoTokenizer build from this file) refuse hidden % heads != 0;
            # the real head counts are in layer_dims and head_dim is explicit, so the top level only has to pass
            data["num_attention_heads"] = max(d for d in range(1, heads + 1) if hidden % d == 0)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if "layer_dims" in config_dict and config_dict.get("model_type") == cls.stock_model_type():
            config_dict = {**config_dict, "model_type": cls.model_type}  # no "model of type llama" warning
        return config_dict, kwargs

    _width_aliases: dict[str, str] = {}  # per-layer field -> the family's own field name (OPT: ffn_dim)

    def layer_config(self, layer_idx: int):
        """A copy of this config with the widths of one layer (what the stock layer classes read)."""
        import copy

        cfg = copy.copy(self)
        for field in PER_LAYER_FIELDS:
            setattr(cfg, field, self.layer_dims[layer_idx][field])
            if field in self._width_aliases:
                setattr(cfg, self._width_aliases[field], self.layer_dims[layer_idx][field])
        if cfg.num_attention_heads == 0:  # attention block removed: keep a valid (unused) layout
            cfg.num_attention_heads = cfg.num_key_value_heads = 1
        return cfg


@strict
class ShearLlamaConfig(_PerLayerConfigMixin, LlamaConfig):
    model_type = "shear_llama"


@strict
class ShearMistralConfig(_PerLayerConfigMixin, MistralConfig):
    model_type = "shear_mistral"


@strict
class ShearQwen2Config(_PerLayerConfigMixin, Qwen2Config):
    model_type = "shear_qwen2"


@strict
class ShearQwen3Config(_PerLayerConfigMixin, Qwen3Config):
    model_type = "shear_qwen3"


@strict
class ShearGemma2Config(_PerLayerConfigMixin, Gemma2Config):
    model_type = "shear_gemma2"


@strict
class ShearGemma3TextConfig(_PerLayerConfigMixin, Gemma3TextConfig):
    model_type = "shear_gemma3_text"


@strict
class ShearPhi3Config(_PerLayerConfigMixin, Phi3Config):
    model_type = "shear_phi3"


@strict
class ShearOPTConfig(_PerLayerConfigMixin, OPTConfig):
    """OPT calls the MLP width ``ffn_dim``; ``head_dim`` is explicit because pruned heads no longer divide hidden."""

    model_type = "shear_opt"
    _width_aliases = {"intermediate_size": "ffn_dim"}
