"""LoRAShear: LoRA-aware group slices, half-space projection, progressive schedule, end to end (both layouts) with
masked equivalence between the LoRA-wrapped model before merging and the physically pruned model."""

import json
import math
import subprocess
import sys

import pytest
import torch
from model_factory import tiny_llama

from shear_hub.data import calibration_batches
from shear_hub.errors import ShearHubError
from shear_hub.loading import load_model
from shear_hub.methods import PruneContext, get_method
from shear_hub.methods.lorashear.lhspg import GroupVectors, half_space_crossed, half_space_project
from shear_hub.methods.lorashear.lora_groups import attach_lora, lora_aware_groups
from shear_hub.pruning import count_params
from shear_hub.structures import build_graph, zero_groups
from shear_hub.surgery import build_pruned_model

IDS = torch.tensor([[5, 17, 3, 88, 41, 9, 60, 2, 33, 71]])
FAST = {"periods": 3, "period_steps": 3, "warmup_steps": 2, "saliency_steps": 2, "recovery_rounds": 2,
        "recovery_steps": 2, "lr": 1e-3}


def _randomize_lora(peft_model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if ".lora_" in n:
                p.normal_(0, 0.3)


def test_lora_aware_slices_map_rows_to_B_and_columns_to_A():
    model = tiny_llama(layers=2)
    graph = build_graph(model, ["heads", "qheads", "mlp"])
    peft_model = attach_lora(model, graph, rank=4, alpha=8)
    ext = lora_aware_groups(graph.groups, peft_model)
    for base, g in zip(graph.groups, ext):
        by_name = {s.param: s for s in g.slices}
        for s in base.slices:
            module = s.param.removesuffix(".weight")
            lora = by_name[f"base_model.model.{module}.{'lora_B' if s.dim == 0 else 'lora_A'}.default.weight"]
            assert lora.dim == s.dim and lora.index == s.index
            assert f"base_model.model.{module}.base_layer.weight" in by_name
    # an MLP channel: gate/up rows -> B rows, down column -> A column (3 base + 3 LoRA slices)
    mlp = next(g for g in ext if g.kind == "mlp")
    assert sorted((s.param.split(".")[-3], s.dim) for s in mlp.slices if "lora" in s.param) == [
        ("lora_A", 1), ("lora_B", 0), ("lora_B", 0)]


@pytest.mark.parametrize("layout", ["per-layer", "uniform"])
def test_zeroing_lora_aware_groups_matches_merged_surgery(layout):
    """With non-zero LoRA factors, zeroing the LoRA-aware slices makes the groups contribute nothing: the peft
    model equals the merged, physically pruned model. Zeroing only W's slices does not (LoRA parts matter)."""
    model = tiny_llama(layers=3)
    graph = build_graph(model, ["heads", "mlp"])
    peft_model = attach_lora(model, graph, rank=4, alpha=8)
    _randomize_lora(peft_model)
    heads = [g for g in graph.groups if g.kind == "heads" and g.index == 0]
    mlp_idx = [3, 7, 11] if layout == "uniform" else [3, 7, 11, 20]
    removed = heads + [g for g in graph.groups if g.kind == "mlp" and g.index in mlp_idx
                       and (layout == "uniform" or g.layer != 2 or g.index == 3)]
    base_only = [type(g)(g.kind, g.layer, g.index, [s for s in e.slices if "lora_" not in s.param])
                 for g, e in zip(removed, lora_aware_groups(removed, peft_model))]
    zero_groups(peft_model, base_only)
    assert max(float(x.abs().max()) for x in GroupVectors(peft_model, removed).snapshot()) > 1e-3
    zero_groups(peft_model, lora_aware_groups(removed, peft_model))
    assert all(float(x.abs().max()) == 0.0 for x in GroupVectors(peft_model, removed).snapshot())
    with torch.no_grad():
        expected = peft_model(input_ids=IDS).logits
    merged = peft_model.merge_and_unload()
    pruned, _ = build_pruned_model(graph, removed, layout)
    assert count_params(pruned) < count_params(merged)
    with torch.no_grad():
        torch.testing.assert_close(pruned(IDS).logits, expected, rtol=1e-4, atol=1e-4)


def test_half_space_projection_zeroes_exactly_the_crossing_groups():
    torch.manual_seed(0)
    prev = [torch.randn(6), torch.randn(4, 3), torch.randn(5)]
    trial = [-0.2 * prev[0] + 0.01 * torch.randn(6),  # crossed zero: outside the half-space
             prev[1] + 0.1 * torch.randn(4, 3),  # small step: inside
             0.3 * prev[2]]  # shrunk but same direction: inside for epsilon < 0.3, outside above
    out, mask = half_space_project(prev, trial, epsilon=0.0)
    assert mask.tolist() == [True, False, False]
    assert torch.count_nonzero(out[0]) == 0 and torch.equal(out[1], trial[1]) and torch.equal(out[2], trial[2])
    out, mask = half_space_project(prev, trial, epsilon=0.5)
    assert mask.tolist() == [True, False, True] and torch.count_nonzero(out[2]) == 0


def test_group_vectors_dots_equal_explicit_effective_weights():
    """The vectorised per-group inner products equal the dot of each group's explicit W + s*B@A slices."""
    model = tiny_llama(layers=2)
    graph = build_graph(model, ["heads", "mlp"])
    peft_model = attach_lora(model, graph, rank=4, alpha=8)
    _randomize_lora(peft_model)
    groups = graph.groups[:3] + graph.groups[-5:]
    gv = GroupVectors(peft_model, groups)
    snap = gv.snapshot()
    got = gv.dots(snap, snap)
    merged = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in peft_model.named_parameters() if ".lora_" not in n}
    for n, m in peft_model.named_modules():
        if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer"):
            key = n.replace("base_model.model.", "") + ".weight"
            merged[key] = m.base_layer.weight + m.get_delta_weight("default")
    for i, g in enumerate(groups):
        vec = torch.cat([merged[s.param].index_select(s.dim, torch.tensor(s.index)).flatten() for s in g.slices])
        assert float(got[i]) == pytest.approx(float(vec.detach().double() @ vec.detach().double()), rel=1e-5)


def test_lhspg_projection_rule_on_group_vectors_matches_half_space_project():
    """LHSPG's production call (half_space_crossed over GroupVectors snapshots) marks the same groups as
    half_space_project on each group's explicit vector."""
    model = tiny_llama(layers=2)
    graph = build_graph(model, ["heads", "mlp"])
    peft_model = attach_lora(model, graph, rank=4, alpha=8)
    _randomize_lora(peft_model, seed=1)
    groups = graph.groups
    gv = GroupVectors(peft_model, groups)

    def explicit():
        merged = {}
        for n, m in peft_model.named_modules():
            if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer"):
                merged[n.replace("base_model.model.", "") + ".weight"] = \
                    (m.base_layer.weight + m.get_delta_weight("default")).detach().double()
        return [torch.cat([merged[s.param].index_select(s.dim, torch.tensor(s.index)).transpose(0, s.dim).flatten()
                           for s in g.slices]) for g in groups]

    previous, previous_vecs = gv.snapshot(), explicit()
    _randomize_lora(peft_model, seed=2)  # a trial point: some groups leave their half-space, others do not
    trial, trial_vecs = gv.snapshot(), explicit()
    for epsilon in (0.0, 0.3):
        production = half_space_crossed(previous, trial, epsilon, dots=gv.dots)
        _, reference = half_space_project(previous_vecs, trial_vecs, epsilon)
        assert production.tolist() == reference.tolist()
        assert 0 < int(reference.sum()) < len(groups)


def _ctx(folder, layout, sparsity=0.3, kinds=("heads", "mlp")):
    model, tok, _ = load_model(str(folder))
    graph = build_graph(model, list(kinds))
    before = count_params(model)
    return PruneContext(model, tok, graph, calibration_batches(tok, None, 10, 32, 0), before, int(sparsity * before),
                        layout, list(kinds), progress=False)


@pytest.mark.parametrize("layout", ["per-layer", "uniform"])
def test_end_to_end_masked_equivalence_and_schedule(tiny_folder, layout):
    ctx = _ctx(tiny_folder, layout)
    method = get_method("lorashear", FAST)
    peft_model, removed = method.run_stages_1_to_3(ctx)
    with torch.no_grad():
        expected = peft_model(input_ids=IDS).logits  # LoRA still attached, redundant groups at zero
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert any(float(p.abs().max()) > 0 for p in lora_b)  # LoRA really trained
    peft_model.merge_and_unload()
    pruned, dims = build_pruned_model(ctx.graph, removed, layout)
    with torch.no_grad():
        torch.testing.assert_close(pruned(IDS).logits, expected, rtol=1e-4, atol=1e-4)
    achieved = 1 - count_params(pruned) / ctx.params_before
    assert abs(achieved - 0.3) <= 0.01
    if layout == "uniform":
        assert dims.is_uniform()
    periods = ctx.report["stage3_lhspg"]["periods"]
    assert [p["period"] for p in periods] == [1, 2, 3]
    sparsities = [p["sparsity"] for p in periods]
    assert sparsities == sorted(sparsities) and sparsities[0] > 0.05  # progressive: grows every period
    assert abs(sparsities[-1] - 0.3) <= 0.01 and abs(periods[0]["target_params"] - ctx.params_to_remove / 3) <= 1
    assert ctx.report["stage3_lhspg"]["max_abs_effective_weight_removed"] == 0.0
    protected = ctx.report["stage2_knowledge"]
    assert protected["protected_fraction"] >= 0.1 and protected["protected_units"]
    if layout == "per-layer":  # per-layer allocation honours the unprunable set completely
        units = {(u["layer"], u["block"]) for u in protected["protected_units"]}
        assert not [g for g in removed if (g.layer, "mlp" if g.kind == "mlp" else "attn") in units]
    # stage 4 changes the pruned model in place and records its rounds
    before = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    method.after_surgery(pruned, ctx)
    rec = ctx.report["stage4_recovery"]
    assert set(rec["sources"]) == {"pretrain", "instruct"} and rec["rounds"][0]["round"] == 0
    assert abs(sum(rec["rounds"][1]["mix"].values()) - 1) < 1e-3
    # the deviation that picks the merged round is the worst source's gap, not a sum the other source can swamp
    assert all(e["worst_gap"] == max(e["loss_gap"].values()) for e in rec["rounds"])
    assert set(dict(pruned.named_parameters())) == set(before)  # LoRA merged away: same tensors
    changed = [n for n, p in pruned.named_parameters() if not torch.equal(p, before[n])]
    assert bool(changed) == (rec["best_round"] > 0)


def test_cli_lorashear_report_and_bad_structures(tiny_folder, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "shear_hub", "prune", str(tiny_folder), "--output", str(out), "--method",
            "lorashear", "--sparsity", "0.25", "--layout", "per-layer", "--seq-len", "32", "--calib-samples", "8",
            "--no-progress"] + [x for k, v in FAST.items() for x in ("--option", f"{k}={v}")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["method"] == "lorashear" and abs(report["achieved_sparsity"] - 0.25) <= 0.01
    stages = report["method_report"]
    assert [k for k in stages if k.startswith("stage")] == ["stage1_dependency_graph", "stage2_knowledge", "stage3_lhspg", "stage4_recovery"]
    assert report["method_config"]["protected_ratio"] == 0.1 and "after_surgery" in report["timings_s"]
    bad = subprocess.run(args[:-2 * len(FAST)] + ["--structures", "hidden", "--output", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "use --structures heads,mlp" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()


def test_config_errors_name_the_fix():
    with pytest.raises(ShearHubError, match="periods"):
        get_method("lorashear", {"periods": 0})
    with pytest.raises(ShearHubError, match="protected_ratio"):
        get_method("lorashear", {"protected_ratio": 1.5})


def test_held_out_chunks_are_cut_out_of_the_training_stream():
    from shear_hub.methods.lorashear.data import split_stream

    tokens = torch.arange(1000)  # every token distinct: overlap would show as shared values
    source = split_stream(tokens, seq_len=32, n_held=4)
    assert source.held.shape == (4, 32)
    assert not set(source.held.flatten().tolist()) & set(source.train.tolist())
    assert source.train.numel() + source.held.numel() == 1000
    starts = sorted(int(w[0]) for w in source.held)
    assert starts[0] > 0 and starts[-1] < 1000 - 64  # spread over the text, not all at one end
    batch = source.sample(3, 32, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 32) and not set(batch.flatten().tolist()) & set(source.held.flatten().tolist())


def test_recovery_mix_follows_the_relative_deviation():
    from shear_hub.methods.lorashear.recovery import data_mix

    names = ["pretrain", "instruct"]
    even = data_mix({"pretrain": 0.2, "instruct": 0.2}, names, 0.05, 0.05)
    assert torch.allclose(even, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # the model overtook the full one on instruct (negative gap) but is only just level on pretrain
    mix = data_mix({"pretrain": -0.02, "instruct": -0.8}, names, 0.05, 0.05)
    assert float(mix.sum()) == pytest.approx(1.0) and float(mix[1]) == pytest.approx(0.05, abs=1e-6)
    assert float(data_mix({"pretrain": 0.1, "instruct": 0.0}, names, 0.05, 0.0)[0]) == pytest.approx(1 / (1 + math.exp(-2)))


def test_fisher_collects_squared_per_window_mask_gradients():
    """The per-window backward gives the batched step's LoRA gradient, and each window's contribution to the Fisher
    criterion is (d loss_i / d s)^2 for s scaling the group's effective weights (checked by finite differences)."""
    from shear_hub.methods.lorashear.config import LoRAShearConfig
    from shear_hub.methods.lorashear.lhspg import LHSPG, SliceSet

    model = tiny_llama(layers=2)
    graph = build_graph(model, ["heads", "mlp"])
    peft_model = attach_lora(model, graph, rank=4, alpha=8).double()  # float64: finite differences below
    _randomize_lora(peft_model)
    groups = lora_aware_groups(graph.groups, peft_model)
    cfg = LoRAShearConfig(w_taylor=0.0, w_fisher=1.0)
    lhspg = LHSPG(peft_model, graph, groups, torch.zeros(len(groups), dtype=torch.bool), 10, "per-layer", cfg)
    ids = torch.tensor([[5, 17, 3, 88, 41, 9, 60, 2], [33, 71, 4, 19, 8, 50, 22, 6]])
    batched = {}
    peft_model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    for p in lhspg.lora:
        batched[id(p)] = p.grad.clone()
        p.grad = None
    for p in lhspg.base_weights.values():
        p.requires_grad_(True)
    lhspg._backward_per_window(ids)
    for p in lhspg.lora:
        assert torch.allclose(p.grad, batched[id(p)], atol=1e-10)

    def window_loss(row, scale, g):
        SliceSet([groups[g]]).scale(peft_model, scale)
        with torch.no_grad():  # float64 loss (transformers' own loss upcasts to float32 only)
            logits = peft_model(input_ids=row[None], use_cache=False).logits[0, :-1]
            loss = float(torch.nn.functional.cross_entropy(logits, row[1:]))
        SliceSet([groups[g]]).scale(peft_model, 1 / scale)
        return loss

    h = 1e-3  # RMSNorm computes in float32 even in a float64 model: smaller steps drown in its rounding
    for g in [0, len(groups) // 2, len(groups) - 1]:
        expected = sum(((window_loss(r, 1 + h, g) - window_loss(r, 1 - h, g)) / (2 * h)) ** 2 for r in ids)
        assert float(lhspg.fisher[g]) == pytest.approx(expected, rel=1e-2)
    assert float(lhspg.fisher.min()) >= 0 and float(lhspg.fisher.max()) > 0
