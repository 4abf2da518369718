"""Llama family (Llama 1/2/3, SmolLM, Mistral, Qwen2/Qwen3 share the same module pattern)."""

from __future__ import annotations

from ...errors import ShearHubError
from .base import DecoderAdapter, stock_config


class LlamaAdapter(DecoderAdapter):
    stock_model_type = "llama"
    stock_config_name = "LlamaConfig"
    stock_architecture = "LlamaForCausalLM"

    def stock_config_for(self, cfg):
        """LlamaConfig refuses hidden % heads != 0 even with head_dim set; a bias-free Llama is exactly a Mistral
        with no sliding window (same modules, same RoPE, same weights names), so fall back to that."""
        if cfg.hidden_size % cfg.num_attention_heads == 0:
            return super().stock_config_for(cfg)
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            raise ShearHubError(
                "this Llama has biases and a hidden size not divisible by the head count, which no stock config "
                "can express; use --layout per-layer"
            )
        return stock_config(cfg, "MistralConfig", "MistralForCausalLM",
                            drop=("attention_bias", "mlp_bias", "pretraining_tp"), sliding_window=None)


class MistralAdapter(DecoderAdapter):
    stock_model_type = "mistral"
    stock_config_name = "MistralConfig"
    stock_architecture = "MistralForCausalLM"
