"""Tiny random Llama models with a real (tiny) tokenizer, saved as Hub-style folders.

Reusable by any test: `build_tiny_pair(tmp_dir)` gives a base folder and a "pruned" folder
(narrower MLP, fewer heads, stock LlamaConfig = uniform layout) with a model card README.md
(`base_model` front matter) and a pruning_report.json following docs/ARCHITECTURE.md.
Everything is built offline from configs in well under a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Plain ASCII sentences: whatever the random model samples decodes to readable text.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python lists are mutable sequences, typically used to store collections of items.",
    "A dictionary maps hashable keys to arbitrary values.",
    "Structured pruning removes whole heads, channels and layers from a network.",
    "The model card records the base model, the method and the measured quality.",
    "Hello world! Pruned models are smaller and faster than their base.",
    "def main(): return sum(range(10))",
]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
VOCAB_SIZE = 200


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on a few sentences; wrapped so save_pretrained/AutoTokenizer work."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # No full byte alphabet: every token is printable ASCII from the corpus, so random
        # generations decode to readable text (unseen characters in a prompt become <unk>).
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast, **overrides) -> LlamaConfig:
    cfg = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.4,  # large random weights: varied, model-specific greedy outputs
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def save_tiny_llama(out_dir: Path, tokenizer: PreTrainedTokenizerFast, seed: int, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, **overrides)).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return model


def _layer_dims(cfg: LlamaConfig) -> list[dict]:
    return [
        {
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size,
        }
        for _ in range(cfg.num_hidden_layers)
    ]


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


@dataclass
class TinyPair:
    base_dir: Path
    pruned_dir: Path
    report: dict


def build_tiny_pair(root: Path, *, base_model_ref: str | None = None) -> TinyPair:
    """Write `root/base` and `root/pruned`. The pruned card's `base_model` is `base_model_ref`
    (default: the absolute path of `root/base`, so the Space can resolve it offline)."""
    root = Path(root)
    tokenizer = build_tokenizer()
    base_dir, pruned_dir = root / "base", root / "pruned"
    base = save_tiny_llama(base_dir, tokenizer, seed=0)
    # "Pruned": half the MLP channels and half the query/kv heads, same hidden size (uniform layout).
    pruned = save_tiny_llama(
        pruned_dir, tokenizer, seed=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1
    )
    ref = base_model_ref or str(base_dir.resolve())
    p_before, p_after = _param_count(base), _param_count(pruned)
    report = {
        "shear_hub_version": "0.1.0",
        "command": f"shear-hub prune {ref} --method wanda --sparsity 0.3 --out {pruned_dir}",
        "base_model": ref,
        "base_model_license": "apache-2.0",
        "method": "wanda",
        "method_config": {},
        "layout": "uniform",
        "structures": ["heads", "mlp"],
        "target_sparsity": 0.3,
        "achieved_sparsity": round(1 - p_after / p_before, 4),
        "params_before": p_before,
        "params_after": p_after,
        "architecture_before": "LlamaForCausalLM",
        "architecture_after": "LlamaForCausalLM",
        "dims_before": {"hidden_size": 64, "layers": _layer_dims(base.config)},
        "dims_after": {"hidden_size": 64, "layers": _layer_dims(pruned.config), "removed_layers": []},
        "removed_groups": {"mlp": 128, "heads": 4, "hidden": 0, "layers": 0},
        "calibration": {"spec": "builtin:pydocs", "samples": 4, "seq_len": 32, "datasets": []},
        "evaluation": {
            "perplexity": {"data": "pydocs_eval", "seq_len": 32, "windows": 2, "value": 301.5},
            "base_perplexity": 290.25,
        },
        "recovery": None,
        "timings_s": {"load": 0.1, "calibrate": 0.1, "score": 0.1, "surgery": 0.1, "save": 0.1},
    }
    (pruned_dir / "pruning_report.json").write_text(json.dumps(report, indent=2))
    (pruned_dir / "README.md").write_text(
        "---\n"
        "library_name: transformers\n"
        "license: apache-2.0\n"
        f"base_model: {json.dumps(ref)}\n"
        "tags:\n- shear-hub\n- pruned\n"
        "---\n\n# tiny pruned llama\n\nA test model.\n"
    )
    return TinyPair(base_dir=base_dir, pruned_dir=pruned_dir, report=report)
