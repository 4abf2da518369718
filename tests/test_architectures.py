"""Architecture breadth: Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text), Phi-3, OPT on tiny random configs.

For every family and every structure kind it supports, removing groups physically (surgery) must give the same
logits as zeroing the same groups in the dense model (masked equivalence), in the uniform layout (reloaded with a
stock ``from_pretrained``) and in the per-layer layout (reloaded through the shipped remote code, without
shear_hub). Unsupported kinds and architectures fail with one clear line.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import shear_hub
from shear_hub.errors import ShearHubError
from shear_hub.modeling import MODELING_FILES
from shear_hub.pruning import prune
from shear_hub.structures import build_graph, get_adapter, supported_model_types, zero_groups
from shear_hub.structures.graph import ATTN_BLOCKS, HEADS, HIDDEN, LAYERS, MLP, MLP_BLOCKS, QHEADS
from shear_hub.surgery import build_pruned_model
from tiny_models import VOCAB_SIZE, build_tokenizer

VOCAB = VOCAB_SIZE  # the tiny test tokenizer's, so the end-to-end test can calibrate on real text
COMMON = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=4, max_position_embeddings=128)
GQA = dict(num_attention_heads=6, num_key_value_heads=2, intermediate_size=40)


def _configs() -> dict:
    from transformers import (
        Gemma2Config, Gemma3TextConfig, MistralConfig, OPTConfig, Phi3Config, Qwen2Config, Qwen3Config,
    )

    alternating = ["sliding_attention", "full_attention"] * 2
    return {
        "mistral": lambda: MistralConfig(**COMMON, **GQA, head_dim=8, sliding_window=5, tie_word_embeddings=False),
        "qwen2": lambda: Qwen2Config(**COMMON, **GQA, tie_word_embeddings=True, use_sliding_window=True,
                                     sliding_window=5, max_window_layers=2),
        "qwen3": lambda: Qwen3Config(**COMMON, **GQA, head_dim=8, tie_word_embeddings=True),
        "gemma2": lambda: Gemma2Config(**COMMON, **GQA, head_dim=8, query_pre_attn_scalar=10, sliding_window=5,
                                       attn_logit_softcapping=3.0, final_logit_softcapping=4.0,
                                       layer_types=alternating, pad_token_id=0),
        "gemma3_text": lambda: Gemma3TextConfig(**COMMON, **GQA, head_dim=8, query_pre_attn_scalar=10,
                                                sliding_window=5, final_logit_softcapping=4.0,
                                                layer_types=alternating, pad_token_id=0),
        "phi3": lambda: Phi3Config(**COMMON, **GQA, pad_token_id=0, tie_word_embeddings=False),
        # pre-LN OPT (125m-style, tied) and post-LN OPT with project_in/out (350m-style)
        "opt": lambda: OPTConfig(**COMMON, num_attention_heads=6, ffn_dim=40, pad_token_id=1),
        "opt-postln": lambda: OPTConfig(**COMMON, num_attention_heads=6, ffn_dim=40, word_embed_proj_dim=32,
                                        do_layer_norm_before=False, pad_token_id=1, tie_word_embeddings=False),
    }


FAMILIES = list(_configs())


def tiny_model(family: str, seed: int = 0, layers: int | None = None):
    """A random model of ``family``; norms randomized around their identity so hidden surgery is exercised.
    ``layers`` keeps only the first few decoder layers (and their layer_types), for slow consumers such as ONNX."""
    torch.manual_seed(seed)
    config = _configs()[family]()
    if layers is not None:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = config.layer_types[:layers]
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    one_plus_w = family.startswith("gemma")  # Gemma norms compute (1 + w)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(-0.5, 0.5) if one_plus_w else p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict:
    return {family: tiny_model(family) for family in FAMILIES}


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def _logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids() if ids is None else ids).logits


def _pick(graph, kind: str, uniform: bool, rng: random.Random) -> list:
    """Groups of ``kind``: the same count in every layer when ``uniform`` (so a stock config fits), else ragged."""
    groups = graph.of_kind(kind)
    if kind == HIDDEN:
        return rng.sample(groups, len(groups) // 4)
    if kind in (LAYERS, ATTN_BLOCKS, MLP_BLOCKS):
        return [groups[1]]
    by_layer: dict[int, list] = {}
    for g in groups:
        by_layer.setdefault(g.layer, []).append(g)
    out = []
    for layer, gs in sorted(by_layer.items()):
        # ragged: a different count per layer, never all of a layer (OPT heads: every layer loses some)
        n = 1 if uniform else (1 + layer % (len(gs) - 1) if len(gs) > 2 else layer % 2)
        if kind == MLP:
            n = len(gs) // 4 if uniform else (layer + 1) * len(gs) // 8
        out.extend(rng.sample(gs, n))
    return out


def _check_equivalent(model, removed, layout: str):
    graph = build_graph(model, sorted({g.kind for g in removed}))
    # removed groups were picked from a graph of the same model: look them up by name in this one
    by_name = {g.name: g for g in graph.groups}
    removed = [by_name[g.name] for g in removed]
    pruned, dims = build_pruned_model(graph, removed, layout)
    reference = copy.deepcopy(model)
    zero_groups(reference, removed)
    expected, got = _logits(reference), _logits(pruned)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    n = sum(p.numel() for p in pruned.parameters())  # tied weights counted once by parameters()
    assert n == graph.adapter.count_params(dims)
    assert n < sum(p.numel() for p in model.parameters())
    return pruned


def _supported(family: str, models) -> tuple[str, ...]:
    return get_adapter(models[family]).supported_kinds


UNIFORM_CASES = [(f, k) for f in FAMILIES for k in (HEADS, QHEADS, MLP, HIDDEN, LAYERS)]
PER_LAYER_CASES = [(f, k) for f in FAMILIES for k in (HEADS, QHEADS, MLP, HIDDEN, ATTN_BLOCKS, MLP_BLOCKS)]


@pytest.mark.parametrize("family,kind", UNIFORM_CASES)
def test_masked_equivalence_uniform(models, family, kind):
    model = models[family]
    if kind not in _supported(family, models):
        pytest.skip(f"{kind} unsupported for {family} (tested in test_unsupported_kind_error)")
    graph = build_graph(model, [kind])
    if not graph.groups:
        assert kind == QHEADS and family.startswith("opt")  # MHA: no query-head slots to remove
        return
    removed = _pick(graph, kind, uniform=True, rng=random.Random(0))
    if family.startswith("opt") and kind == HEADS:
        with pytest.raises(ShearHubError, match="per-layer"):
            build_pruned_model(graph, removed, "uniform")
        return
    pruned = _check_equivalent(model, removed, "uniform")
    assert not pruned.config.model_type.startswith("shear_")


@pytest.mark.parametrize("family,kind", PER_LAYER_CASES)
def test_masked_equivalence_per_layer(models, family, kind):
    model = models[family]
    if kind not in _supported(family, models):
        pytest.skip(f"{kind} unsupported for {family} (tested in test_unsupported_kind_error)")
    graph = build_graph(model, [kind])
    if not graph.groups:
        assert kind == QHEADS and family.startswith("opt")
        return
    removed = _pick(graph, kind, uniform=False, rng=random.Random(1))
    pruned = _check_equivalent(model, removed, "per-layer")
    assert pruned.config.model_type.startswith("shear_")


@pytest.mark.parametrize("family", FAMILIES)
def test_all_kinds_together_per_layer(models, family):
    """Every supported kind at once (layers, blocks, heads, channels, hidden) in one ragged model."""
    model = models[family]
    kinds = [k for k in (HEADS, QHEADS, MLP, HIDDEN, LAYERS, ATTN_BLOCKS, MLP_BLOCKS) if k in _supported(family, models)]
    graph = build_graph(model, kinds)
    rng = random.Random(2)
    removed = []
    for kind in kinds:
        groups = [g for g in graph.of_kind(kind) if g.layer in (None, 0, 2, 3) or kind == LAYERS]
        if kind == LAYERS:
            removed.append(graph.of_kind(LAYERS)[1])
        elif kind == ATTN_BLOCKS:
            removed.extend(g for g in groups if g.layer == 2)
        elif kind == MLP_BLOCKS:
            removed.extend(g for g in groups if g.layer == 3)
        elif kind == HIDDEN:
            removed.extend(rng.sample(groups, 6))
        elif kind == MLP:
            removed.extend(rng.sample([g for g in groups if g.layer == 0], 7))
        else:
            removed.extend(g for g in groups if g.layer == 0 and g.index == 0)
    _check_equivalent(model, removed, "per-layer")


def _uniform_pruned(model):
    kinds = [k for k in (HEADS, MLP, HIDDEN, LAYERS) if k in get_adapter(model).supported_kinds]
    if model.config.model_type == "opt":
        kinds.remove(HEADS)  # stock OPT cannot hold pruned heads
    graph = build_graph(model, kinds)
    rng = random.Random(3)
    removed = [g for kind in kinds if kind != LAYERS for g in _pick(graph, kind, True, rng)]
    if LAYERS in kinds:
        removed.append(graph.of_kind(LAYERS)[2])
    return build_pruned_model(graph, removed, "uniform")[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_reload_with_stock_from_pretrained(models, family, tmp_path):
    pruned = _uniform_pruned(models[family])
    pruned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in saved and not saved["model_type"].startswith("shear_")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded).__module__.startswith("transformers.models.")
    torch.testing.assert_close(_logits(reloaded), _logits(pruned), atol=1e-5, rtol=1e-5)


_REMOTE_LOAD = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    ids = torch.tensor(json.loads(sys.argv[1]))
    out = {}
    for folder in sys.argv[2:]:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager").eval()
        assert "shear_hub" not in sys.modules
        with torch.no_grad():
            out[folder] = [type(model).__name__, model(ids).logits.tolist()]
    print(json.dumps(out))
""")


def test_per_layer_reload_through_shipped_code(models, tmp_path):
    """Per-layer folders load with trust_remote_code in a fresh interpreter that never imports shear_hub, and in
    this process through shear_hub.from_pretrained (no remote code); logits match the pruned model."""
    folders, expected = [], {}
    for family in FAMILIES:
        model = models[family]
        kinds = [k for k in (HEADS, MLP, ATTN_BLOCKS, MLP_BLOCKS) if k in get_adapter(model).supported_kinds]
        graph = build_graph(model, kinds)
        removed = [g for k in (HEADS, MLP) for g in _pick(graph, k, False, random.Random(4))]
        removed += [g for g in graph.of_kind(ATTN_BLOCKS) if g.layer == 1]
        removed += [g for g in graph.of_kind(MLP_BLOCKS) if g.layer == 2]
        pruned = build_pruned_model(graph, removed, "per-layer")[0]
        folder = tmp_path / family
        pruned.save_pretrained(folder)
        for f in MODELING_FILES:
            shutil.copy(f, folder / f.name)
        local = shear_hub.from_pretrained(str(folder), attn_implementation="eager").eval()
        torch.testing.assert_close(_logits(local), _logits(pruned), atol=1e-5, rtol=1e-5)
        folders.append(str(folder))
        expected[str(folder)] = (type(pruned).__name__, _logits(pruned))
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_LOAD, json.dumps(_ids().tolist()), *folders],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    for folder, (cls_name, logits) in expected.items():
        assert loaded[folder][0] == cls_name
        torch.testing.assert_close(torch.tensor(loaded[folder][1]), logits, atol=1e-5, rtol=1e-5)


def test_gemma_hidden_rescales_embedding_and_norms(models):
    """Gemma multiplies embeddings by sqrt(hidden_size): after hidden pruning the embedding matrix carries the
    ratio, and (1 + w) norms are rescaled in their own form (checked numerically by the equivalence tests)."""
    model = models["gemma2"]
    graph = build_graph(model, [HIDDEN])
    removed = graph.of_kind(HIDDEN)[:12]
    pruned, dims = build_pruned_model(graph, removed, "uniform")
    assert dims.hidden_size == 36
    ratio = (48 / 36) ** 0.5
    kept = model.model.embed_tokens.weight[:, 12:]
    torch.testing.assert_close(pruned.model.embed_tokens.weight, kept * ratio)
    assert pruned.config.query_pre_attn_scalar == model.config.query_pre_attn_scalar
    assert pruned.config.attn_logit_softcapping == model.config.attn_logit_softcapping


@pytest.mark.parametrize("family", ["opt", "opt-postln"])
def test_unsupported_kind_error(models, family):
    with pytest.raises(ShearHubError, match=r"'hidden' is not supported for opt \(OPT's LayerNorm .*; use --structures"):
        build_graph(models[family], [HIDDEN])


def test_post_ln_opt_refuses_layers_but_drops_blocks(models):
    with pytest.raises(ShearHubError, match=r"'layers' is not supported for opt \(post-LayerNorm"):
        build_graph(models["opt-postln"], [LAYERS])
    assert LAYERS in get_adapter(models["opt"]).supported_kinds


def test_unsupported_architecture_lists_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB))
    with pytest.raises(ShearHubError) as info:
        build_graph(model, [MLP])
    message = str(info.value)
    assert "\n" not in message and "'gpt2' is not supported" in message
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt"):
        assert model_type in message
    assert set(supported_model_types()) >= {"gemma2", "gemma3_text", "mistral", "opt", "phi3", "qwen2", "qwen3"}


def test_phi3_fused_rows_follow_q_k_v_and_gate_up(models):
    """A KV group of Phi-3 owns its q rows, its k rows after all q rows and its v rows after all k rows of qkv_proj;
    an MLP channel owns row i and row I + i of gate_up_proj."""
    graph = build_graph(models["phi3"], [HEADS, MLP])
    head = next(g for g in graph.of_kind(HEADS) if g.layer == 0 and g.index == 1)
    rows = sorted(i for s in head.slices if s.param.endswith("qkv_proj.weight") for i in s.index)
    q = list(range(24, 48))  # heads 3..5 of 6, head_dim 8
    k = [48 + 8 + i for i in range(8)]  # after 48 q rows, second kv head
    v = [48 + 16 + 8 + i for i in range(8)]
    assert rows == q + k + v
    channel = next(g for g in graph.of_kind(MLP) if g.layer == 0 and g.index == 5)
    assert sorted(i for s in channel.slices if s.param.endswith("gate_up_proj.weight") for i in s.index) == [5, 45]


@pytest.mark.parametrize("family", FAMILIES)
def test_surgeon_end_to_end_python_api(models, family, tmp_path):
    """The LLM Surgeon through the public Python API on a saved tiny folder of each family: the output folder holds
    a smaller model that reloads with from_pretrained, and the report describes the architecture."""
    folder, out = tmp_path / "dense", tmp_path / "pruned"
    models[family].save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    kinds = "heads,mlp" + (",hidden" if HIDDEN in _supported(family, models) else "")
    result = prune(str(folder), out, method="surgeon", sparsity=0.2, layout="per-layer", structures=kinds,
                   calib_samples=4, seq_len=16, method_options={"shots": 2}, progress=False)
    assert abs(result.achieved_sparsity - 0.2) <= 0.01
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["method"] == "surgeon" and report["architecture_before"] == type(models[family]).__name__
    reloaded = shear_hub.from_pretrained(str(out)).eval()
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_after"] < report["params_before"]
    assert torch.isfinite(_logits(reloaded)).all()


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma2", "gemma3_text", "opt"])
def test_per_layer_kv_cache_with_removed_attention(models, family):
    """Layer 0 (a sliding-window layer where the family has them) loses its attention block; decoding past the
    window with the KV cache matches the cache-free forward, and greedy generate matches cache-free greedy."""
    graph = build_graph(models[family], [ATTN_BLOCKS])
    pruned = build_pruned_model(graph, [g for g in graph.groups if g.layer == 0], "per-layer")[0]
    ids = torch.cat([_ids()[:1]] * 2, dim=1)  # 24 tokens, window 5
    with torch.no_grad():
        full = pruned(ids).logits
        out = pruned(ids[:, :4], use_cache=True)
        steps = [out.logits]
        for t in range(4, ids.shape[1]):
            out = pruned(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
        generated = pruned.generate(ids[:, :3], max_new_tokens=10, do_sample=False)
        greedy = ids[:, :3]
        for _ in range(10):
            greedy = torch.cat([greedy, pruned(greedy, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, greedy)
