"""OPT (the family the LLM Surgeon paper reports on): biases everywhere, fc1/fc2 MLP, LayerNorm, learned positions.

* ``hidden`` is not offered: LayerNorm subtracts the mean over all channels, so a zeroed residual channel still
  changes the mean and variance of the others and no rescaling of the kept weights reproduces that.
* post-LN OPT (do_layer_norm_before=False, opt-350m) does not offer ``layers`` for the same kind of reason.
* OPT is multi-head (no GQA), so ``qheads`` yields no groups; ``heads`` removes single heads.
* A stock OPT config derives the head size as hidden_size / num_attention_heads, so pruned heads need the per-layer
  layout (its attention keeps head_dim explicit). MLP channels and whole layers keep the uniform layout.
"""

from __future__ import annotations

import re

from ...errors import ShearHubError
from ..graph import ATTN_BLOCKS, HEADS, HIDDEN, LAYERS, MLP, MLP_BLOCKS, QHEADS, LayerDims, ModelDims
from .base import DOWN, EMBED, FIXED, K, LM_HEAD, NORM, O, Q, UP, V, DecoderAdapter, ParamRole, _numel

_PREFIX = "model.decoder"


class OPTAdapter(DecoderAdapter):
    stock_model_type = "opt"
    layers_prefix = f"{_PREFIX}.layers"
    module_roles = {
        "self_attn.q_proj": Q, "self_attn.k_proj": K, "self_attn.v_proj": V, "self_attn.out_proj": O,
        "fc1": UP, "fc2": DOWN, "self_attn_layer_norm": NORM, "final_layer_norm": NORM,
    }
    global_roles = {f"{_PREFIX}.embed_tokens.weight": EMBED, "lm_head.weight": LM_HEAD}
    norm_eps_field = ""
    supported_kinds = (HEADS, QHEADS, MLP, LAYERS, ATTN_BLOCKS, MLP_BLOCKS)
    unsupported_reasons = {
        HIDDEN: "OPT's LayerNorm subtracts the mean over all hidden channels, so removing one is never exact"
    }

    def __init__(self, model):
        super().__init__(model)
        if not getattr(self.config, "do_layer_norm_before", True):
            # post-LN (opt-350m): each layer's LayerNorms act on the residual stream itself, so dropping a layer
            # also drops two normalizations of everything after it; no exact removal exists
            self.supported_kinds = tuple(k for k in self.supported_kinds if k != LAYERS)
            self.unsupported_reasons = {
                **self.unsupported_reasons,
                LAYERS: "post-LayerNorm OPT normalizes the residual stream inside every layer, so a layer cannot "
                        "be dropped exactly; attn-blocks and mlp-blocks can",
            }

    def uniform_refusals(self) -> dict[str, str]:
        why = ("a stock OPT config derives head size from hidden_size / num_attention_heads, so it cannot hold "
               "pruned heads")
        return {**super().uniform_refusals(), HEADS: why, QHEADS: why}

    def extra_global_role(self, name: str) -> ParamRole | None:
        m = re.match(rf"{re.escape(_PREFIX)}\.(final_layer_norm|embed_positions|project_in|project_out)\.(weight|bias)$", name)
        if not m:
            return None
        return ParamRole(NORM if m.group(1) == "final_layer_norm" else FIXED, None, m.group(2) == "bias")

    def config_layer_dims(self) -> LayerDims:
        cfg = self.config  # multi-head (no num_key_value_heads), MLP width in ffn_dim
        return LayerDims(cfg.num_attention_heads, cfg.num_attention_heads, cfg.ffn_dim)

    def _global_param_size(self, role: ParamRole, shape: tuple, H: int) -> int:
        return _numel(shape)  # hidden never changes for OPT, and embed/lm_head are word_embed_proj_dim wide

    def uniform_config(self, dims: ModelDims):
        cfg = self._resized_config(dims)
        layer = dims.layers[0]
        if layer.num_attention_heads * dims.head_dim != cfg.hidden_size:
            raise ShearHubError(
                "a stock OPT config derives head size from hidden_size / num_attention_heads, so it cannot hold "
                "pruned heads; use --layout per-layer"
            )
        del cfg.head_dim  # not an OPT field: keep the saved config stock
        cfg.num_attention_heads = layer.num_attention_heads
        cfg.ffn_dim = layer.intermediate_size
        cfg.validate()
        return cfg

    def per_layer_config(self, dims: ModelDims):
        new = super().per_layer_config(dims)
        new.ffn_dim = new.intermediate_size  # widest layer; each layer's own width is in layer_dims
        return new
