"""LLM Surgeon end to end on a tiny saved model: the sliced model equals the dense model after the method's OBS
updates and zeroing (masked equivalence), for both layouts and both curvature modes; mask modes stay dense."""

import json
import subprocess
import sys

import pytest
import torch

from shear_hub.data import calibration_batches
from shear_hub.errors import ShearHubError
from shear_hub.loading import load_model
from shear_hub.methods import PruneContext, get_method
from shear_hub.pruning import count_params, prune
from shear_hub.structures import build_graph
from shear_hub.surgery import build_pruned_model

IDS = torch.tensor([[5, 17, 3, 88, 41, 9, 60, 2, 33, 71]])


def _run_method(folder, kinds, layout, sparsity=0.3, **options):
    model, tok, _ = load_model(str(folder))
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    graph = build_graph(model, kinds)
    before = count_params(model)
    ctx = PruneContext(model, tok, graph, calibration_batches(tok, None, 8, 32, 0), before,
                       int(sparsity * before), layout, kinds, progress=False)
    method = get_method("surgeon", options)
    removed = method.select(ctx)
    return model, graph, removed, original, ctx


@pytest.mark.parametrize("layout,kinds,options", [
    ("per-layer", ["heads", "mlp", "hidden"], {"shots": 2}),
    ("uniform", ["heads", "mlp"], {"shots": 3}),
    ("per-layer", ["qheads", "mlp", "layers"], {"shots": 2, "curvature": "layerwise"}),
    ("per-layer", ["heads", "mlp", "hidden"], {"shots": 2, "propagate": True}),
])
def test_pruned_model_equals_updated_and_zeroed_dense(tiny_folder, layout, kinds, options):
    dense, graph, removed, original, ctx = _run_method(tiny_folder, kinds, layout, **options)
    assert removed, "something must be removed"
    pruned, dims = build_pruned_model(graph, removed, layout)
    with torch.no_grad():
        expected = dense(IDS).logits
        got = pruned(IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    achieved = 1 - count_params(pruned) / ctx.params_before
    assert abs(achieved - 0.3) <= 0.01
    if layout == "uniform":
        assert dims.is_uniform()
    # the OBS updates really changed kept weights (not only zeroing)
    changed = [n for n, p in dense.named_parameters() if n.endswith("proj.weight")
               and ((p != original[n]) & (p != 0)).any()]
    assert changed
    assert len(ctx.report["shots"]) == options["shots"]


def test_propagate_updates_later_layers_on_the_pruned_inputs(tiny_folder):
    """propagate=true: same decision (one shot, same K-FAC costs); layer 0 sees the same inputs either way, so its
    update is the same; a later layer's A comes from the pruned layers below, so its update differs."""
    runs = {}
    for propagate in (False, True):
        model, _, removed, _, _ = _run_method(tiny_folder, ["heads", "mlp"], "uniform", shots=1, propagate=propagate)
        runs[propagate] = (sorted(g.name for g in removed), dict(model.named_parameters()))
    assert runs[False][0] == runs[True][0]
    first = "model.layers.0.mlp.down_proj.weight"
    last = max((n for n in runs[False][1] if n.endswith("mlp.down_proj.weight")), key=lambda n: int(n.split(".")[2]))
    torch.testing.assert_close(runs[True][1][first], runs[False][1][first], rtol=1e-4, atol=1e-5)
    assert (runs[True][1][last] - runs[False][1][last]).abs().max() > 1e-4


def test_propagate_default_follows_the_mode():
    """Unset, the mask modes propagate (measured win at 2:4) and structured does not (a tie for more time)."""
    from shear_hub.methods.surgeon.config import SurgeonConfig

    assert SurgeonConfig(mode="2:4").propagates and SurgeonConfig(mode="unstructured").propagates
    assert not SurgeonConfig().propagates
    assert SurgeonConfig(propagate=True).propagates and not SurgeonConfig(mode="2:4", propagate=False).propagates


def test_obs_updates_improve_on_zeroing(tiny_folder):
    """Same structures, with and without the weight updates: the updates lower the calibration loss."""
    losses = {}
    for update in (True, False):
        model, _, removed, _, ctx = _run_method(tiny_folder, ["heads", "mlp"], "per-layer", 0.3, shots=1,
                                                update=update)
        with torch.no_grad():
            losses[update] = float(model(input_ids=ctx.calibration, labels=ctx.calibration).loss)
        names = sorted(g.name for g in removed)
        losses.setdefault("names", names)
        assert names == losses["names"]  # one shot: the choice does not depend on the update
    assert losses[True] < losses[False]


def test_cli_surgeon_writes_smaller_model(tiny_folder, tmp_path):
    layout = "uniform"  # per-layer goes through the same code path in test_pruned_model_equals_...
    out = tmp_path / layout
    done = subprocess.run([sys.executable, "-m", "shear_hub", "prune", str(tiny_folder), "--output", str(out),
                           "--method", "surgeon", "--layout", layout, "--sparsity", "0.25", "--structures",
                           "heads,mlp", "--seq-len", "32", "--calib-samples", "4", "--no-progress",
                           "--option", "shots=2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "pruning_report.json").read_text())
    assert abs(report["achieved_sparsity"] - 0.25) <= 0.01
    assert report["method_config"]["shots"] == 2 and report["method_report"]["shots"]
    model, _, _ = load_model(str(out))
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]


@pytest.mark.parametrize("mode,options,layout", [("unstructured", {}, "per-layer"), ("unstructured", {}, "uniform"),
                                                 ("2:4", {"spread": True}, "uniform"),
                                                 ("2:4", {"curvature": "layerwise"}, "uniform"),
                                                 ("2:4", {"select": "costs", "solver": "joint"}, "uniform")])
def test_mask_modes_keep_shapes_and_give_valid_masks(tiny_folder, tmp_path, mode, options, layout):
    """per-layer: one global allocation over all matrices; uniform: every matrix masks the same share."""
    result = prune(str(tiny_folder), tmp_path / "m", method="surgeon", sparsity=0.3, layout=layout,
                   structures="mlp", calib_samples=8, seq_len=32, progress=False, return_model=True,
                   method_options={"mode": mode, "shots": 2, **options})
    rep = result.report.method_report
    assert result.params_after == result.params_before  # the file stays dense
    weights = {n: p for n, p in result.model.named_parameters() if n.endswith("proj.weight")}
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert zeros / total == pytest.approx(rep["mask_sparsity"], abs=1e-3)
    if mode == "2:4":
        for w in weights.values():
            assert ((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all()
        assert rep["mask_sparsity"] == pytest.approx(0.5, abs=1e-3)
    else:
        assert rep["mask_sparsity"] == pytest.approx(0.3, abs=0.01)
        shares = [float((w == 0).float().mean()) for w in weights.values()]
        if layout == "uniform":
            assert max(shares) - min(shares) < 0.02
        else:
            assert max(shares) - min(shares) > 0.05  # the global costs do not split evenly
    assert "same shapes" in rep["note"]


def test_bad_options_are_one_line_errors():
    with pytest.raises(ShearHubError, match="curvature"):
        get_method("surgeon", {"curvature": "diagonal"})
    with pytest.raises(ShearHubError, match="shots"):
        get_method("surgeon", {"shots": 0})
    with pytest.raises(ShearHubError, match="has no option .nonsense."):
        get_method("surgeon", {"nonsense": 1})


def test_multi_pass_curvature_chooses_the_same_groups_as_one_pass(tiny_folder):
    """Models whose factors do not fit at once are curved in several forward/backward passes (layers_per_pass);
    forced on CPU, every pass count must remove exactly the groups the single pass removes, with the same updates."""
    runs = {}
    for per_pass in (0, 1):  # 0: all layers in one pass (memory permits on the tiny model)
        dense, graph, removed, _, ctx = _run_method(tiny_folder, ["heads", "mlp", "hidden"], "per-layer", shots=2,
                                                    layers_per_pass=per_pass)
        n_layers = len(graph.dims.layers)
        assert {s["passes"] for s in ctx.report["shots"]} == {1 if per_pass == 0 else -(-n_layers // per_pass)}
        with torch.no_grad():
            runs[per_pass] = (sorted(g.name for g in removed), dense(IDS).logits)
    assert runs[1][0] == runs[0][0]
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=1e-5, atol=1e-5)
