"""Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm over head_dim): the Llama module pattern."""

from __future__ import annotations

from .base import QK_NORMS, DecoderAdapter


class Qwen2Adapter(DecoderAdapter):
    """Biases on q/k/v are output rows, so ``_rows`` already removes them with their heads; no config check on
    hidden % heads (``head_dim`` is kept explicit in the config)."""

    stock_model_type = "qwen2"
    stock_config_name = "Qwen2Config"
    stock_architecture = "Qwen2ForCausalLM"


class Qwen3Adapter(DecoderAdapter):
    """q_norm / k_norm normalize each head over head_dim, which pruning never changes: attention-owned FIXED."""

    stock_model_type = "qwen3"
    attn_fixed_modules = QK_NORMS
    stock_config_name = "Qwen3Config"
    stock_architecture = "Qwen3ForCausalLM"
