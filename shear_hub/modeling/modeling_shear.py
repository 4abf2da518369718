"""Per-layer ("shear") causal LMs: the stock transformers model of a family with each decoder layer built at its own
widths. Shipped inside per-layer model folders; imports transformers only.

The stock decoder layer classes read their widths from the config at construction, so building each layer from a
per-layer copy of the config gives a model whose forward pass (attention, RoPE, KV cache, generation) is the stock
one. Removed attention / MLP blocks become modules that add nothing to the residual stream.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)

from .configuration_shear import ShearLlamaConfig, ShearMistralConfig, ShearQwen2Config, ShearQwen3Config


class RemovedAttention(nn.Module):
    """Stands in for a removed attention block: contributes zero and never touches the KV cache."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class RemovedMLP(nn.Module):
    """Stands in for a removed MLP block."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class _PerLayerMixin:
    """Rebuilds ``self.model.layers`` from per-layer configs after the stock constructor ran."""

    def _build_per_layer(self, config) -> None:
        layer_cls = type(self.model.layers[0])
        layers = []
        cache_idx = 0  # attention layers get compact KV-cache slots so slot 0 always holds real keys
        for i in range(config.num_hidden_layers):
            layer = layer_cls(config.layer_config(i), i)
            dims = config.layer_dims[i]
            if dims["num_attention_heads"] == 0:
                layer.self_attn = RemovedAttention()
            else:
                layer.self_attn.layer_idx = cache_idx
                cache_idx += 1
            if dims["intermediate_size"] == 0:
                layer.mlp = RemovedMLP()
            layers.append(layer)
        self.model.layers = nn.ModuleList(layers)


class ShearLlamaForCausalLM(_PerLayerMixin, LlamaForCausalLM):
    config_class = ShearLlamaConfig

    def __init__(self, config: ShearLlamaConfig):
        super().__init__(config)
        self._build_per_layer(config)
        self.post_init()


class ShearMistralForCausalLM(_PerLayerMixin, MistralForCausalLM):
    config_class = ShearMistralConfig

    def __init__(self, config: ShearMistralConfig):
        super().__init__(config)
        self._build_per_layer(config)
        self.post_init()


class ShearQwen2ForCausalLM(_PerLayerMixin, Qwen2ForCausalLM):
    config_class = ShearQwen2Config

    def __init__(self, config: ShearQwen2Config):
        super().__init__(config)
        self._build_per_layer(config)
        self.post_init()


class ShearQwen3ForCausalLM(_PerLayerMixin, Qwen3ForCausalLM):
    config_class = ShearQwen3Config

    def __init__(self, config: ShearQwen3Config):
        super().__init__(config)
        self._build_per_layer(config)
        self.post_init()
