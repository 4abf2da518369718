"""Per-layer ("shear") causal LMs: the stock transformers model of a family with each decoder layer built at its own
widths. Shipped inside per-layer model folders; imports transformers only.

The stock decoder layer classes read their widths from the config at construction, so building each layer from a
per-layer copy of the config gives a model whose forward pass (attention, RoPE, KV cache, generation) is the stock
one. Removed attention / MLP blocks become modules that add nothing to the residual stream.
"""

from __future__ import annotations

import copy

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import (
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    LlamaForCausalLM,
    MistralForCausalLM,
    OPTForCausalLM,
    Phi3ForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)
from transformers.models.opt.modeling_opt import OPTAttention

from .configuration_shear import (
    ShearGemma2Config,
    ShearGemma3TextConfig,
    ShearLlamaConfig,
    ShearMistralConfig,
    ShearOPTConfig,
    ShearPhi3Config,
    ShearQwen2Config,
    ShearQwen3Config,
)


# The transformers releases this file was tested with (CI loads per-layer folders through it under both ends). It is
# shipped inside every per-layer model folder, so a folder records the range its own code knows.
TESTED_TRANSFORMERS = ("5.0.0", "5.24.0")
_logger = transformers.utils.logging.get_logger(__name__)


def warn_if_untested_transformers(version: str | None = None) -> bool:
    """One warning line when ``version`` (default: the installed transformers) is outside ``TESTED_TRANSFORMERS``;
    True if it is."""
    low, high = TESTED_TRANSFORMERS
    version = version or transformers.__version__
    if Version(low).release <= Version(version).release <= Version(high).release:
        return False
    _logger.warning(f"this per-layer model's code was tested with transformers {low} to {high}, not {version}; "
                    "if it misbehaves, install a tested release")
    return True


class RemovedAttention(nn.Module):
    """Stands in for a removed attention block: contributes zero to the residual stream.

    It keeps its decoder layer's KV-cache slot and appends placeholder keys/values of one head of width 1 there
    through the public ``Cache.update``: the slot then reports the true sequence length (``get_seq_length`` and mask
    sizes, which transformers reads from slot 0 and from the first layer of each attention type), so any cache built
    from the config (DynamicCache, StaticCache, ``generate``) works unchanged and needs no slot remapping. The cost is
    2 numbers per token per removed block. Ones, not zeros: some cache layers infer their length from nonzero
    entries, and a zero-sized tensor counts as empty.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        # transformers >= 5.24 passes the cache as ``cache``; earlier 5.x releases as ``past_key_values``
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            batch, seq_len = hidden_states.shape[:2]
            placeholder = hidden_states.new_ones(batch, 1, seq_len, 1)
            cache_position = kwargs.get("cache_position")
            cache.update(placeholder, placeholder, self.layer_idx,
                         None if cache_position is None else {"cache_position": cache_position})
        return torch.zeros_like(hidden_states), None


class RemovedMLP(nn.Module):
    """Stands in for a removed MLP block."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class _PerLayerMixin:
    """Rebuilds ``self.model.layers`` from per-layer configs after the stock constructor ran. First base of every
    per-layer class, before the stock ``...ForCausalLM``, whose constructor ``_stock_init`` runs."""

    def __init__(self, config):
        self._stock_init(config)
        self._build_per_layer(config)
        self.post_init()

    def _stock_init(self, config) -> None:
        super().__init__(config)

    def _layers_parent(self) -> nn.Module:
        return self.model

    def _make_layer(self, layer_cls: type, config, layer_idx: int) -> nn.Module:
        return layer_cls(config.layer_config(layer_idx), layer_idx)

    def _remove_mlp(self, layer: nn.Module) -> None:
        layer.mlp = RemovedMLP()

    def _build_per_layer(self, config) -> None:
        warn_if_untested_transformers()
        parent = self._layers_parent()
        layer_cls = type(parent.layers[0])
        layers = []
        for i in range(config.num_hidden_layers):
            layer = self._make_layer(layer_cls, config, i)
            dims = config.layer_dims[i]
            if dims["num_attention_heads"] == 0:
                layer.self_attn = RemovedAttention(i)
            if dims["intermediate_size"] == 0:
                self._remove_mlp(layer)
            layers.append(layer)
        parent.layers = nn.ModuleList(layers)


class ShearLlamaForCausalLM(_PerLayerMixin, LlamaForCausalLM):
    config_class = ShearLlamaConfig


class ShearMistralForCausalLM(_PerLayerMixin, MistralForCausalLM):
    config_class = ShearMistralConfig


class ShearQwen2ForCausalLM(_PerLayerMixin, Qwen2ForCausalLM):
    config_class = ShearQwen2Config


class ShearQwen3ForCausalLM(_PerLayerMixin, Qwen3ForCausalLM):
    config_class = ShearQwen3Config


class ShearGemma2ForCausalLM(_PerLayerMixin, Gemma2ForCausalLM):
    config_class = ShearGemma2Config


class ShearGemma3TextForCausalLM(_PerLayerMixin, Gemma3ForCausalLM):
    config_class = ShearGemma3TextConfig


class ShearPhi3ForCausalLM(_PerLayerMixin, Phi3ForCausalLM):
    config_class = ShearPhi3Config


class ShearOPTAttention(OPTAttention):
    """OPT attention with an explicit head_dim (stock OPT derives it from hidden_size / num_attention_heads, which
    pruned heads break); the stock forward is reused unchanged."""

    def __init__(self, config: ShearOPTConfig, layer_idx: int):
        nn.Module.__init__(self)
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_dropout
        self.enable_bias = config.enable_bias
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.is_causal = True
        self.scaling = self.head_dim**-0.5
        inner = self.num_heads * self.head_dim
        self.k_proj = nn.Linear(self.embed_dim, inner, bias=self.enable_bias)
        self.v_proj = nn.Linear(self.embed_dim, inner, bias=self.enable_bias)
        self.q_proj = nn.Linear(self.embed_dim, inner, bias=self.enable_bias)
        self.out_proj = nn.Linear(inner, self.embed_dim, bias=self.enable_bias)


class ShearOPTForCausalLM(_PerLayerMixin, OPTForCausalLM):
    """OPT keeps its layers under model.decoder and its MLP as fc1/fc2 directly on the layer."""

    config_class = ShearOPTConfig

    def _stock_init(self, config: ShearOPTConfig) -> None:
        heads = config.num_attention_heads
        config.num_attention_heads = 1  # the stock constructor insists hidden % heads == 0; its layers are replaced
        try:
            super()._stock_init(config)
        finally:
            config.num_attention_heads = heads

    def _layers_parent(self) -> nn.Module:
        return self.model.decoder

    def _make_layer(self, layer_cls: type, config, layer_idx: int) -> nn.Module:
        layer_config = config.layer_config(layer_idx)
        stock_config = copy.copy(layer_config)
        stock_config.num_attention_heads = 1  # the stock attention is replaced right away; 1 always divides hidden
        layer = layer_cls(stock_config, layer_idx)
        layer.self_attn = ShearOPTAttention(layer_config, layer_idx)
        return layer

    def _remove_mlp(self, layer: nn.Module) -> None:
        layer.fc1, layer.fc2 = RemovedMLP(), RemovedMLP()  # fc2(act(zeros)) -> zeros: adds nothing
