"""LoRAShear's opt-in variants: half-space zeroing in LHSPG (group-lasso shrink + projection, forced at the end of
the period), the |<W_g, (BA)_g>| alignment saliency, and the dense model's own samples as a third recovery source."""

import pytest
import torch
from model_factory import tiny_llama

from shear_hub.data import calibration_batches
from shear_hub.errors import ShearHubError
from shear_hub.loading import load_model
from shear_hub.methods import PruneContext, get_method
from shear_hub.methods.lorashear.config import LoRAShearConfig
from shear_hub.methods.lorashear.data import from_windows
from shear_hub.methods.lorashear.knowledge import mean_loss
from shear_hub.methods.lorashear.lhspg import (
    LHSPG,
    GroupVectors,
    half_space_project,
    lambda_schedule,
    saliency,
    shrink_factors,
    shrunk_crossed,
)
from shear_hub.methods.lorashear.lora_groups import attach_lora, lora_aware_groups
from shear_hub.methods.lorashear.recovery import dynamic_recovery, recovery_sources
from shear_hub.pruning import count_params
from shear_hub.structures import build_graph
from shear_hub.structures.dims import DimsTracker
from shear_hub.surgery import build_pruned_model

IDS = torch.tensor([[5, 17, 3, 88, 41, 9, 60, 2, 33, 71]])
QUICK = {"periods": 2, "period_steps": 3, "warmup_steps": 1, "saliency_steps": 1, "zeroing": "half-space"}


def _batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randint(0, 97, (2, 12), generator=gen)


def _lhspg(**options):
    model = tiny_llama(layers=2)
    graph = build_graph(model, ["heads", "mlp"])
    peft_model = attach_lora(model, graph, rank=4, alpha=8)
    groups = lora_aware_groups(graph.groups, peft_model)
    cfg = LoRAShearConfig(**{**QUICK, **options})
    target = int(0.3 * DimsTracker(graph).params())
    protected = torch.zeros(len(groups), dtype=torch.bool)
    return LHSPG(peft_model, graph, groups, protected, target, "per-layer", cfg), peft_model


def _zeroed(peft_model, removed) -> bool:
    return all(float(x.abs().max()) == 0.0 for x in GroupVectors(peft_model, removed).snapshot() if x.numel())


def test_half_space_zeroing_leaves_every_removed_group_exactly_zero():
    lhspg, peft_model = _lhspg()
    removed, periods, summary = lhspg.run(_batches())
    assert removed and _zeroed(peft_model, removed) and summary["max_abs_effective_weight_removed"] == 0.0
    for p in periods:  # every marked group went to zero by exactly one mechanism, both counted
        assert p["zeroing"] == "half-space"
        assert p["half_space_projected"] + p["forced_to_zero"] == sum(p["new_groups"].values())


def test_half_space_projection_zeroes_groups_the_shrink_carries_across_zero():
    """With (almost) no training movement the schedule's shrink carries every marked group across zero at the
    period's last step (factor -1): all are zeroed by the projection, none forced."""
    lhspg, peft_model = _lhspg(lr=1e-12)
    removed, periods, _ = lhspg.run(_batches())
    assert _zeroed(peft_model, removed)
    for p in periods:
        assert p["half_space_projected"] == sum(p["new_groups"].values()) > 0 and p["forced_to_zero"] == 0


def test_shrink_and_half_space_test_match_the_explicit_rule():
    """The factor form (x_hat_g = factor_g x_g) marks the same groups as half_space_project on the explicit
    x_hat_g = x_g - lambda_g x_g / ||x_g||; a group whose shrink overshoots zero is among them."""
    torch.manual_seed(0)
    previous = [torch.randn(7), torch.randn(5), torch.randn(4)]
    trial = [previous[0] + 0.05 * torch.randn(7), previous[1] + 0.05 * torch.randn(5), 0.5 * previous[2]]
    lambdas = torch.tensor([0.1, 3 * float(trial[1].norm()), 0.5 * float(trial[2].norm())], dtype=torch.float64)
    sq = torch.stack([x.double() @ x.double() for x in trial])
    factors = shrink_factors(sq, lambdas)
    x_hat = [x - float(lam) * x / x.norm() for x, lam in zip(trial, lambdas)]
    for epsilon in (0.0, 0.3):
        dots = torch.stack([x.double() @ p.double() for x, p in zip(trial, previous)])
        prev_sq = torch.stack([p.double() @ p.double() for p in previous])
        got = shrunk_crossed(dots, prev_sq, factors, epsilon)
        _, expected = half_space_project(previous, x_hat, epsilon)
        assert got.tolist() == expected.tolist()
    assert got.tolist() == [False, True, True]  # 1 overshot zero; 2: x_hat = 0.25 prev, below eps 0.3
    norms = torch.tensor([2.0, 4.0], dtype=torch.float64)  # lambda_g(t) = ||x_g,0|| 2 (t + 1) / T^2, sum > ||x_g,0||
    assert torch.equal(lambda_schedule(norms, 0, 4), norms * 2 / 16)
    assert float(sum(lambda_schedule(norms, t, 4) for t in range(4))[0]) == pytest.approx(2.0 * 5 / 4)


@pytest.mark.parametrize("normalize", [False, True])
def test_alignment_saliency_is_abs_inner_product_of_w_and_lora_update(normalize):
    """Layer 0 MLP channel 3: its gate/up LoRA update is -0.9 W on its rows (the update cancels most of W), no
    update anywhere else. Alignment = |<W_g, (BA)_g>| is then non-zero for that group only; magnitude ranks it low,
    magnitude + 10 * alignment ranks it first: total = 1 * mag/||mag|| + 10 * align/||align|| exactly."""
    model = tiny_llama(layers=2)
    graph = build_graph(model, ["heads", "mlp"])
    peft_model = attach_lora(model, graph, rank=4, alpha=8)  # scaling s = 2; peft's B starts at zero
    params = dict(peft_model.named_parameters())
    channel, c, s = 3, -0.9, 2.0
    with torch.no_grad():
        for proj in ("gate_proj", "up_proj"):
            prefix = f"base_model.model.model.layers.0.mlp.{proj}"
            w = params[f"{prefix}.base_layer.weight"]
            params[f"{prefix}.lora_A.default.weight"].zero_()[0] = w[channel]
            params[f"{prefix}.lora_B.default.weight"][channel, 0] = c / s  # s B A = c W on row ``channel`` only
    g = next(i for i, grp in enumerate(graph.groups) if grp.kind == "mlp" and grp.layer == 0 and grp.index == channel)
    sizes = graph.group_sizes().clamp_min(1).double()
    x_sq = torch.zeros(len(graph.groups), dtype=torch.float64)
    align = torch.zeros(len(graph.groups), dtype=torch.float64)
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in params.items() if "lora_" not in n}
    for i, grp in enumerate(graph.groups):
        for sl in grp.slices:
            w = base[sl.param].detach().double().index_select(sl.dim, torch.tensor(sl.index))
            scale = 1 + c if (i == g and sl.dim == 0 and sl.param.split(".")[-2] in ("gate_proj", "up_proj")) else 1.0
            x_sq[i] += float((w * scale).pow(2).sum())
            align[i] += float((w * w).sum()) * c if scale != 1.0 else 0.0
    align = align.abs()
    if normalize:
        x_sq, align = x_sq / sizes, align / sizes
    mag_only, _ = saliency(peft_model, graph, {}, {"magnitude": 1.0}, normalize)
    total, norms = saliency(peft_model, graph, {}, {"magnitude": 1.0, "alignment": 10.0}, normalize)
    expected = x_sq / x_sq.norm() + 10 * align / align.norm()
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-7)
    assert norms["alignment"] == pytest.approx(float(align.norm()), rel=1e-5)
    assert int(total.argmax()) == g and int(mag_only.argmax()) != g  # the ranking changed where it had to
    assert float((mag_only < mag_only[g]).double().mean()) < 0.5  # magnitude alone: in the lower half


def test_config_validates_the_new_options():
    with pytest.raises(ShearHubError, match="zeroing=half-space"):
        get_method("lorashear", {"zeroing": "lasso"})
    with pytest.raises(ShearHubError, match="recovery_self_samples"):
        get_method("lorashear", {"recovery_self_samples": 1})
    with pytest.raises(ShearHubError, match="w_alignment"):
        get_method("lorashear", {"w_alignment": -1.0})
    assert LoRAShearConfig(w_alignment=0.5).saliency_weights()["alignment"] == 0.5


def _contains(stream: torch.Tensor, window: torch.Tensor) -> bool:
    if stream.numel() < window.numel():
        return False
    return bool((stream.unfold(0, window.numel(), 1) == window).all(1).any())


def test_recovery_with_self_samples_has_three_sources_with_disjoint_held_out_windows(tiny_folder):
    model, tok, _ = load_model(str(tiny_folder))
    graph = build_graph(model, ["heads", "mlp"])
    cfg = LoRAShearConfig(recovery_self_samples=10, recovery_eval_samples=2, recovery_rounds=1, recovery_steps=3,
                          recovery_warmup_steps=0)
    pretrain = from_windows(calibration_batches(tok, None, 6, 32, 0), 2)
    sources, _ = recovery_sources(pretrain, tok, 32, cfg, model, seed=0)
    assert list(sources) == ["pretrain", "instruct", "self"]
    held, train = sources["self"].held, sources["self"].train
    assert len(held) >= 1 and train.numel() > 32
    assert not any(_contains(train, w) for w in held)  # held-out text comes from separate generations
    dense = {s: mean_loss(model, sources[s].held, 2) for s in sources}
    report = dynamic_recovery(model, graph, sources, dense, cfg, batch_size=2, seq_len=32, seed=0)
    assert set(report["sources"]) == {"pretrain", "instruct", "self"}
    assert set(report["rounds"][1]["mix"]) == set(report["rounds"][0]["loss_gap"]) == {"pretrain", "instruct", "self"}
    assert sum(report["rounds"][1]["steps"].values()) == 3


def test_end_to_end_half_space_alignment_and_self_source(tiny_folder, monkeypatch):
    """The three options together through the method: the self source is sampled from the dense model (no LoRA
    attached yet), the removed groups are exactly zero and surgery matches the LoRA model, stage 4 has 3 sources."""
    from shear_hub.methods.lorashear import recovery

    sampled_from = []
    original = recovery.self_calibration_text

    def spy(model, *args, **kwargs):
        sampled_from.append(any("lora_" in n for n, _ in model.named_parameters()))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(recovery, "self_calibration_text", spy)
    model, tok, _ = load_model(str(tiny_folder))
    graph = build_graph(model, ["heads", "mlp"])
    before = count_params(model)
    ctx = PruneContext(model, tok, graph, calibration_batches(tok, None, 10, 32, 0), before, int(0.3 * before),
                       "per-layer", ["heads", "mlp"], progress=False)
    options = {**QUICK, "w_alignment": 0.5, "recovery_self_samples": 10, "recovery_rounds": 1, "recovery_steps": 2}
    method = get_method("lorashear", options)
    peft_model, removed = method.run_stages_1_to_3(ctx)
    assert sampled_from == [False, False]
    assert ctx.report["stage3_lhspg"]["max_abs_effective_weight_removed"] == 0.0
    with torch.no_grad():
        expected = peft_model(input_ids=IDS).logits
    peft_model.merge_and_unload()
    pruned, _ = build_pruned_model(ctx.graph, removed, "per-layer")
    with torch.no_grad():
        torch.testing.assert_close(pruned(IDS).logits, expected, rtol=1e-4, atol=1e-4)
    method.after_surgery(pruned, ctx)
    rec = ctx.report["stage4_recovery"]
    assert set(rec["sources"]) == {"pretrain", "instruct", "self"} and rec["self_source"]["samples"] == 10
