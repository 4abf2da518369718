"""Masked equivalence: a pruned model's logits equal the dense model's with the same structures zeroed."""

import copy
import random

import pytest
import torch
from model_factory import tiny_llama

from shear_hub.structures import build_graph, zero_groups
from shear_hub.surgery import build_pruned_model, dims_after

PER_LAYER_KINDS = ["heads", "qheads", "mlp", "hidden", "layers", "attn-blocks", "mlp-blocks"]
UNIFORM_KINDS = ["heads", "qheads", "mlp", "hidden", "layers"]


def _uniform_pick(graph, kinds):
    picked = []
    for kind in kinds:
        groups = graph.of_kind(kind)
        if kind == "hidden":
            picked += groups[3:9]
        elif kind == "layers":
            picked += groups[1:2]
        else:
            picked += [g for g in groups if g.index in (0, 2)]
    return picked


def _assert_equivalent(model, graph, removed, layout):
    pruned, dims = build_pruned_model(graph, removed, layout)
    reference = copy.deepcopy(model)
    zero_groups(reference, removed)
    ids = torch.randint(0, model.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids).logits
        got = pruned(ids).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # really smaller, and the parameter formula matches the built model
    n = sum(p.numel() for p in pruned.parameters())
    assert n < sum(p.numel() for p in model.parameters())
    assert n == graph.adapter.count_params(dims)
    return pruned


@pytest.mark.parametrize("kind", PER_LAYER_KINDS + ["heads,qheads,mlp,hidden,layers"])
@pytest.mark.parametrize("tied", [True, False])
def test_per_layer_masked_equivalence(kind, tied):
    model = tiny_llama(tied=tied, layers=4)
    kinds = kind.split(",")
    graph = build_graph(model, kinds)
    rng = random.Random(len(kind))
    removed = rng.sample(graph.groups, max(1, len(graph.groups) // 3))
    pruned = _assert_equivalent(model, graph, removed, "per-layer")
    assert type(pruned).__name__ == "ShearLlamaForCausalLM"


@pytest.mark.parametrize("kind", UNIFORM_KINDS + ["heads,qheads,mlp,hidden,layers"])
def test_uniform_masked_equivalence(kind):
    model = tiny_llama(layers=4)
    graph = build_graph(model, kind.split(","))
    removed = _uniform_pick(graph, kind.split(","))
    pruned = _assert_equivalent(model, graph, removed, "uniform")
    assert type(pruned).__name__ in ("LlamaForCausalLM", "MistralForCausalLM")


def test_mha_model_heads():
    model = tiny_llama(heads=4, kv_heads=4, hidden=32, layers=2)
    graph = build_graph(model, ["heads", "mlp"])
    removed = [g for g in graph.groups if g.kind == "heads" and g.index == 1] + graph.of_kind("mlp")[:5]
    _assert_equivalent(model, graph, removed, "per-layer")


def test_hidden_removal_switches_to_mistral_when_llama_config_refuses():
    model = tiny_llama(hidden=48, heads=6, kv_heads=2, head_dim=8)
    graph = build_graph(model, ["hidden"])
    removed = graph.of_kind("hidden")[:5]  # 43 % 6 != 0: LlamaConfig would refuse this
    pruned = _assert_equivalent(model, graph, removed, "uniform")
    assert type(pruned).__name__ == "MistralForCausalLM"
    assert pruned.config.sliding_window is None


def test_gqa_layout_stays_valid():
    model = tiny_llama(heads=6, kv_heads=2)
    graph = build_graph(model, ["heads", "qheads"])
    layer0 = [g for g in graph.groups if g.layer == 0]
    removed = [g for g in layer0 if g.kind == "heads" and g.index == 0] + [g for g in layer0 if g.kind == "qheads" and g.index == 1]
    dims = dims_after(graph, removed)
    assert (dims.layers[0].num_key_value_heads, dims.layers[0].num_attention_heads) == (1, 2)
    assert dims.layers[1].num_attention_heads == 6


def test_uniform_refuses_ragged_widths():
    from shear_hub.errors import ShearHubError

    model = tiny_llama()
    graph = build_graph(model, ["mlp"])
    with pytest.raises(ShearHubError, match="per-layer"):
        build_pruned_model(graph, graph.of_kind("mlp")[:3], "uniform")
