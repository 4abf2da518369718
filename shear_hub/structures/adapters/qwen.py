"""Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm over head_dim): the Llama module pattern."""

from __future__ import annotations

from .base import DecoderAdapter


class Qwen2Adapter(DecoderAdapter):
    """Biases on q/k/v are output rows, so ``_rows`` already removes them with their heads; no config check on
    hidden % heads (``head_dim`` is kept explicit in the config)."""

    model_types = ("qwen2", "shear_qwen2")
    per_layer_model_type = "shear_qwen2"
    stock_config_name = "Qwen2Config"
    stock_architecture = "Qwen2ForCausalLM"


class Qwen3Adapter(DecoderAdapter):
    """q_norm / k_norm normalize each head over head_dim, which pruning never changes: attention-owned FIXED."""

    model_types = ("qwen3", "shear_qwen3")
    per_layer_model_type = "shear_qwen3"
    attn_fixed_modules = ("self_attn.q_norm", "self_attn.k_norm")
    stock_config_name = "Qwen3Config"
    stock_architecture = "Qwen3ForCausalLM"
