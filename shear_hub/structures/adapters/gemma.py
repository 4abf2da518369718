"""Gemma 2 and Gemma 3 (text): (1 + w) RMSNorms, sandwich norms, embeddings scaled by sqrt(hidden_size).

Hidden-channel removal stays exact:
  * every norm (input, post-attention, pre/post-feedforward, final, and its (1 + w) form) absorbs the smaller mean
    square through eps * H / H' and (1 + w') = (1 + w) * sqrt(H / H');
  * the pruned model multiplies embeddings by sqrt(H') instead of sqrt(H), so the embedding matrix is multiplied by
    sqrt(H / H'). With tied embeddings the LM head grows by the same factor, which the final norm's own factor
    cancels: the final norm weight is then left as it is.
Attention soft-capping, final-logit soft-capping and ``query_pre_attn_scalar`` are explicit config values that no
pruning kind changes; sliding/global ``layer_types`` follow the kept layers.
"""

from __future__ import annotations

import torch

from ...errors import ShearHubError
from .base import EMBED, NORM, QK_NORMS, DecoderAdapter, ParamRole


class Gemma2Adapter(DecoderAdapter):
    stock_model_type = "gemma2"
    post_sublayer_norms = True
    module_roles = {
        **DecoderAdapter.module_roles,
        "pre_feedforward_layernorm": NORM, "post_feedforward_layernorm": NORM,
    }
    stock_config_name = "Gemma2Config"
    stock_architecture = "Gemma2ForCausalLM"

    def scale_norm_weight(self, weight: torch.Tensor, factor: float) -> torch.Tensor:
        return (1.0 + weight) * factor - 1.0

    def rescale_for_hidden(self, role: ParamRole, tensor: torch.Tensor, factor: float, tied: bool) -> torch.Tensor:
        if role.role == EMBED and not role.is_bias:
            return tensor * factor  # embed_scale drops from sqrt(H) to sqrt(H')
        if role.role == NORM and role.layer is None and tied:
            return tensor  # final norm's factor cancels the (tied) LM head's growth
        return super().rescale_for_hidden(role, tensor, factor, tied)

    def stock_config_for(self, cfg):
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ShearHubError(
                f"{self.stock_architecture} configs require hidden_size ({cfg.hidden_size}) divisible by the head "
                f"count ({cfg.num_attention_heads}); use --layout per-layer or prune heads to a divisor"
            )
        return super().stock_config_for(cfg)


class Gemma3TextAdapter(Gemma2Adapter):
    """Gemma 3 text-only (Gemma3ForCausalLM): Gemma 2 plus per-head q/k norms (attention-owned, not sliced)."""

    stock_model_type = "gemma3_text"
    attn_fixed_modules = QK_NORMS
    stock_config_name = "Gemma3TextConfig"
    stock_architecture = "Gemma3ForCausalLM"
