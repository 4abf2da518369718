"""allocation.py: the global threshold (per-layer layout), the same count per layer (uniform), the limits that keep a
model runnable, and the per-layer floor ``min_keep``."""

import pytest
import torch
from model_factory import tiny_llama

from shear_hub.allocation import allocate
from shear_hub.structures import DimsTracker, build_graph


@pytest.fixture(scope="module")
def graph():
    model = tiny_llama(layers=4, heads=6, kv_heads=3, intermediate=40)
    return build_graph(model, ["heads", "mlp"])


def _cheap_layer_costs(graph, layer: int) -> torch.Tensor:
    """Every group of ``layer`` nearly free, the others costly: the global threshold wants to empty that layer."""
    return torch.tensor([0.001 if g.layer == layer else 1.0 + 0.01 * i for i, g in enumerate(graph.groups)],
                        dtype=torch.float64)


def _kept(graph, chosen, kind: str, layer: int) -> int:
    total = sum(1 for g in graph.of_kind(kind) if g.layer == layer)
    return total - sum(1 for g in chosen if g.kind == kind and g.layer == layer)


def _removed_params(graph, chosen) -> int:
    tracker = DimsTracker(graph)
    start = tracker.params()
    for g in chosen:
        tracker.add(g)
    return start - tracker.params()


def test_global_threshold_empties_the_cheap_layer_but_keeps_one_kv_group(graph):
    budget = 3 * _removed_params(graph, [g for g in graph.groups if g.layer == 1 and g.kind == "mlp"])
    chosen = allocate(graph, _cheap_layer_costs(graph, 1), budget, "per-layer")
    assert _kept(graph, chosen, "mlp", 1) == 0  # every channel of the cheap layer went first
    assert _kept(graph, chosen, "heads", 1) == 1  # the runnable-model limit: one KV group stays
    assert abs(_removed_params(graph, chosen) - budget) <= 0.002 * DimsTracker(graph).params() + 40 * 48


@pytest.mark.parametrize("min_keep", [0.25, 0.5])
def test_min_keep_is_a_floor_per_layer(graph, min_keep):
    budget = 3 * _removed_params(graph, [g for g in graph.groups if g.layer == 1 and g.kind == "mlp"])
    chosen = allocate(graph, _cheap_layer_costs(graph, 1), budget, "per-layer", min_keep=min_keep)
    for layer in range(4):
        assert _kept(graph, chosen, "mlp", layer) >= 40 * min_keep
        assert _kept(graph, chosen, "heads", layer) >= max(1, 3 * min_keep)
    # the budget is still met: what the floor protects is taken from other layers
    assert _removed_params(graph, chosen) >= budget - 40 * 48


def test_uniform_removes_the_same_count_per_layer(graph):
    chosen = allocate(graph, _cheap_layer_costs(graph, 1), DimsTracker(graph).params() // 5, "uniform")
    counts = {(kind, layer): _kept(graph, chosen, kind, layer) for kind in ("heads", "mlp") for layer in range(4)}
    assert len({counts[("mlp", i)] for i in range(4)}) == 1 and len({counts[("heads", i)] for i in range(4)}) == 1


def test_min_keep_leaves_the_uniform_layout_alone(graph):
    costs = _cheap_layer_costs(graph, 1)
    budget = DimsTracker(graph).params() // 5
    plain = allocate(graph, costs, budget, "uniform")
    assert [id(g) for g in allocate(graph, costs, budget, "uniform", min_keep=0.5)] == [id(g) for g in plain]


def test_surgeon_floor_defaults_on_for_post_norm_architectures(tmp_path):
    """Gemma 2/3 (a norm after each sublayer) get min_keep 0.5 unless set; Llama-pattern models none."""
    import json

    from test_architectures import tiny_model
    from tiny_models import build_tokenizer

    from shear_hub.pruning import prune

    model = tiny_model("gemma3_text")
    model.config._attn_implementation = None
    model.save_pretrained(tmp_path / "dense")
    build_tokenizer().save_pretrained(tmp_path / "dense")
    for options, floor in (({}, 0.5), ({"min_keep": 0.0}, 0.0)):
        out = tmp_path / f"out-{floor}"
        prune(str(tmp_path / "dense"), out, layout="per-layer", sparsity=0.3, structures="mlp", calib_samples=4,
              seq_len=16, progress=False, evaluate=False, method_options=options)
        report = json.loads((out / "pruning_report.json").read_text())
        assert report["method_report"]["min_keep"] == floor
        widths = [layer["intermediate_size"] for layer in report["dims_after"]["layers"]]
        if floor:
            assert min(widths) >= 40 * floor, widths
