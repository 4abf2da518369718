"""The prune job end to end through the CLI and the Python API on a tiny saved model."""

import json
import subprocess
import sys

import pytest
import torch

from shear_hub.data import load_text
from shear_hub.loading import load_model
from shear_hub.pruning import prune

CLI = [sys.executable, "-m", "shear_hub"]
FAST = ["--seq-len", "32", "--calib-samples", "4", "--no-progress"]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "taylor"])
@pytest.mark.parametrize("layout", ["uniform", "per-layer"])
def test_prune_cli_writes_smaller_model_within_one_percent(tiny_folder, tmp_path, method, layout):
    out = tmp_path / f"{method}-{layout}"
    done = subprocess.run(CLI + ["prune", str(tiny_folder), "--output", str(out), "--method", method, "--layout", layout,
                                 "--sparsity", "0.25", "--structures", "heads,mlp,hidden"] + FAST,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "pruning_report.json").read_text())
    assert abs(report["achieved_sparsity"] - 0.25) <= 0.01
    assert report["params_after"] < report["params_before"]
    assert report["method"] == method and report["layout"] == layout
    assert report["command"].startswith("shear-hub prune")
    assert len(report["dims_after"]["layers"]) == report["dims_after"]["num_hidden_layers"]
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    assert not list(tmp_path.glob(".*tmp-*")), "no temporaries left"
    model, tokenizer, _ = load_model(str(out))
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    ids = tokenizer("def main(): return", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4


def test_prune_api_layers_and_hidden(tiny_folder, tmp_path):
    result = prune(str(tiny_folder), tmp_path / "out", method="wanda", sparsity=0.3, layout="per-layer",
                   structures="layers,hidden,mlp", calib_samples=4, seq_len=32, progress=False)
    assert abs(result.achieved_sparsity - 0.3) <= 0.01
    assert result.report.removed_groups


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_calibration_file_formats(tiny_folder, tmp_path, fmt):
    text = load_text(None)[:20000]
    path = tmp_path / f"calib.{fmt}"
    if fmt == "txt":
        path.write_text(text)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps({"text": p}) for p in text.split("\n\n") if p.strip()))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [p for p in text.split("\n\n") if p.strip()]}), path)
    assert len(load_text(str(path))) > 1000
    result = prune(str(tiny_folder), tmp_path / "out", calib=str(path), calib_samples=4, seq_len=32, progress=False)
    assert result.report.calibration["spec"] == str(path)


def test_same_seed_same_result(tiny_folder, tmp_path):
    a = prune(str(tiny_folder), tmp_path / "a", method="taylor", calib_samples=4, seq_len=32, progress=False)
    b = prune(str(tiny_folder), tmp_path / "b", method="taylor", calib_samples=4, seq_len=32, progress=False)
    assert a.report.dims_after == b.report.dims_after
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_qheads_on_multi_head_model_is_a_one_line_error(tmp_path, capsys):
    from model_factory import save_tiny_model_folder

    from shear_hub.cli import main

    folder = tmp_path / "mha"
    save_tiny_model_folder(folder, heads=4, kv_heads=4, hidden=32)  # no grouped KV heads: no qheads groups
    out = tmp_path / "out"
    code = main(["prune", str(folder), "--output", str(out), "--method", "magnitude", "--structures", "qheads"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no removable qheads groups" in err[-1] and "--structures heads,mlp" in err[-1]
    assert not out.exists()
