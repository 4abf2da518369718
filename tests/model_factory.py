"""Tiny random models built from configs (no downloads), shared by the tests."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig


def tiny_llama(*, heads: int = 6, kv_heads: int = 2, hidden: int = 48, head_dim: int = 8, layers: int = 3,
               intermediate: int = 40, vocab: int = 97, tied: bool = True, seed: int = 0, **extra):
    """A random Llama with GQA; norm weights randomized so that hidden-channel surgery is really exercised."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, tie_word_embeddings=tied,
        max_position_embeddings=128, rms_norm_eps=1e-5, **extra,
    )
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.2)
    return model.eval()


def save_tiny_model_folder(path, **kwargs):
    """A complete model folder (weights, config, tokenizer) of a tiny random Llama; returns the model."""
    from tiny_models import VOCAB_SIZE, build_tokenizer

    kwargs.setdefault("vocab", VOCAB_SIZE)
    model = tiny_llama(**kwargs)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return model
