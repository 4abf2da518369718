"""Llama family (Llama 1/2/3, SmolLM, Mistral, Qwen2/Qwen3 share the same module pattern)."""

from __future__ import annotations

from ...errors import ShearHubError
from .base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    model_types = ("llama", "shear_llama")
    per_layer_model_type = "shear_llama"

    def stock_config_for(self, cfg):
        """LlamaConfig refuses hidden % heads != 0 even with head_dim set; a bias-free Llama is exactly a Mistral
        with no sliding window (same modules, same RoPE, same weights names), so fall back to that."""
        if cfg.hidden_size % cfg.num_attention_heads == 0:
            from transformers import LlamaConfig

            values = {k: v for k, v in cfg.to_dict().items() if k not in ("model_type", "architectures", "auto_map", "transformers_version")}
            out = LlamaConfig(**values)
            out.architectures = ["LlamaForCausalLM"]
            return out
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            raise ShearHubError(
                "this Llama has biases and a hidden size not divisible by the head count, which no stock config "
                "can express; use --layout per-layer"
            )
        from transformers import MistralConfig

        values = {k: v for k, v in cfg.to_dict().items()
                  if k not in ("model_type", "architectures", "auto_map", "transformers_version", "attention_bias",
                               "mlp_bias", "pretraining_tp")}
        out = MistralConfig(**values, sliding_window=None)
        out.architectures = ["MistralForCausalLM"]
        return out


class MistralAdapter(DecoderAdapter):
    model_types = ("mistral", "shear_mistral")
    per_layer_model_type = "shear_mistral"

    def stock_config_for(self, cfg):
        from transformers import MistralConfig

        values = {k: v for k, v in cfg.to_dict().items() if k not in ("model_type", "architectures", "auto_map", "transformers_version")}
        out = MistralConfig(**values)
        out.architectures = ["MistralForCausalLM"]
        return out
