"""Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm over head_dim): the Llama module pattern."""

from __future__ import annotations

from .base import DecoderAdapter


def _stock(config_cls, cfg, architecture: str):
    values = {k: v for k, v in cfg.to_dict().items() if k not in ("model_type", "architectures", "auto_map", "transformers_version")}
    out = config_cls(**values)
    out.architectures = [architecture]
    return out


class Qwen2Adapter(DecoderAdapter):
    """Biases on q/k/v are output rows, so ``_rows`` already removes them with their heads; no config check on
    hidden % heads (``head_dim`` is kept explicit in the config)."""

    model_types = ("qwen2", "shear_qwen2")
    per_layer_model_type = "shear_qwen2"

    def stock_config_for(self, cfg):
        from transformers import Qwen2Config

        return _stock(Qwen2Config, cfg, "Qwen2ForCausalLM")


class Qwen3Adapter(DecoderAdapter):
    """q_norm / k_norm normalize each head over head_dim, which pruning never changes: attention-owned FIXED."""

    model_types = ("qwen3", "shear_qwen3")
    per_layer_model_type = "shear_qwen3"
    attn_fixed_modules = ("self_attn.q_norm", "self_attn.k_norm")

    def stock_config_for(self, cfg):
        from transformers import Qwen3Config

        return _stock(Qwen3Config, cfg, "Qwen3ForCausalLM")
