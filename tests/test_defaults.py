"""The default path: `shear-hub prune MODEL --output DIR` is the LLM Surgeon in the uniform layout with the structures
that layout can hold for the architecture; refusals that the config alone decides come before any calibration."""

import inspect
import json

import pytest
from fault_injection import make_tiny_foreign_folder

import shear_hub.pruning as pruning
from shear_hub.cli import build_parser, main
from shear_hub.errors import ShearHubError

FAST = ["--seq-len", "32", "--calib-samples", "4", "--no-progress"]


def _structure_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("structures:")]


def test_cli_and_api_defaults_agree():
    args = build_parser().parse_args(["prune", "m", "--output", "o"])
    assert (args.method, args.layout, args.structures) == ("surgeon", "uniform", None)
    params = inspect.signature(pruning.prune).parameters
    assert params["method"].default == "surgeon"
    assert params["layout"].default == "uniform"
    assert params["structures"].default is None


def test_plain_prune_is_surgeon_uniform_and_says_which_structures(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", str(tiny_folder), "--output", str(out), *FAST]) == 0
    lines = _structure_lines(capsys.readouterr().out)
    assert len(lines) == 1 and lines[0].startswith("structures: heads,mlp ") and "uniform layout" in lines[0]
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["method"] == "surgeon" and report["layout"] == "uniform"
    assert report["structures"] == ["heads", "mlp"]
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and not config["model_type"].startswith("shear_")


@pytest.mark.parametrize("layout,expected", [("uniform", ["mlp"]), ("per-layer", ["heads", "mlp"])])
def test_opt_default_structures_follow_the_layout(tmp_path, capsys, layout, expected):
    folder = make_tiny_foreign_folder(tmp_path / "opt", "opt")
    result = pruning.prune(str(folder), tmp_path / "out", method="magnitude", sparsity=0.2, layout=layout,
                           progress=False)
    lines = _structure_lines(capsys.readouterr().out)
    assert lines == [f"structures: {','.join(expected)} (default for opt in the {layout} layout; "
                     "set --structures to choose)"]
    assert result.report.structures == expected


def test_explicit_structures_print_nothing(tiny_folder, tmp_path, capsys):
    pruning.prune(str(tiny_folder), tmp_path / "out", method="magnitude", structures="mlp", progress=False)
    assert not _structure_lines(capsys.readouterr().out)


@pytest.mark.parametrize("family,layout,structures,message", [
    ("opt", "uniform", "heads,mlp", "cannot hold pruned heads; use --layout per-layer, or --structures from "),
    ("opt", "per-layer", "hidden,mlp", "'hidden' is not supported for opt"),
    ("llama", "uniform", "mlp,attn-blocks", "different shapes, which a stock (uniform) config cannot hold; "
                                            "use --layout per-layer"),
])
def test_config_decided_refusals_come_before_calibration(tmp_path, tiny_folder, monkeypatch, family, layout,
                                                          structures, message):
    """A spy on the calibration loader: the refusal must be raised before it is ever called."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("calibration data was loaded before a refusal the config alone decides")

    monkeypatch.setattr(pruning, "load_text", spy)
    monkeypatch.setattr(pruning, "tokenize_text", spy)
    folder = make_tiny_foreign_folder(tmp_path / "opt", "opt") if family == "opt" else tiny_folder
    out = tmp_path / "out"
    with pytest.raises(ShearHubError) as err:
        pruning.prune(str(folder), out, method="surgeon", layout=layout, structures=structures, calib_samples=4,
                      seq_len=32, progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not calls and not out.exists()


def test_calibration_size_defaults_to_the_methods_own():
    args = build_parser().parse_args(["prune", "m", "--output", "o"])
    assert (args.calib_samples, args.seq_len) == (None, None)
    assert pruning.calibration_size("surgeon", None, None) == (128, 512)
    assert pruning.calibration_size("taylor", None, None) == (32, 256)
    assert pruning.calibration_size("surgeon", 8, None) == (8, 512)
    assert pruning.calibration_size("surgeon", None, 64) == (128, 64)
    with pytest.raises(ShearHubError, match="unknown method"):
        pruning.prune("m", "o", method="nope")
