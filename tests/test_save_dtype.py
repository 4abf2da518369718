"""Storage dtype: a bf16 base gives a smaller bf16 folder, --save-dtype overrides, bad values fail before any model work.

The computation stays in --dtype (float32 here); only what is written follows the base checkpoint's dtype.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import shear_hub.pruning as pruning
from shear_hub.errors import ShearHubError
from shear_hub.report import format_bytes as _fmt_bytes
from shear_hub.loading import ModelSource
from shear_hub.save_dtype import base_dtype, resolve_save_dtype

CLI = [sys.executable, "-m", "shear_hub"]
SPARSITY = 0.3


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory) -> Path:
    """A tiny Llama saved in bfloat16, wide enough that safetensors headers are well under 1% of the weights."""
    from model_factory import tiny_llama
    from tiny_models import VOCAB_SIZE, build_tokenizer

    path = tmp_path_factory.mktemp("base") / "bf16"
    tiny_llama(layers=4, intermediate=256, vocab=VOCAB_SIZE).to(torch.bfloat16).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _tensor_dtypes(folder: Path) -> set[torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


def _config_dtype(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text())["dtype"]


def _prune_cli(base: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["prune", str(base), "--output", str(out), "--method", "magnitude", "--layout",
                                 "uniform", "--sparsity", str(SPARSITY), "--no-progress", *extra],
                          capture_output=True, text=True, timeout=300)


def test_bf16_base_gives_smaller_bf16_folder(bf16_folder, tmp_path):
    out = tmp_path / "pruned"
    done = _prune_cli(bf16_folder, out)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "pruning_report.json").read_text())
    before, after = _weights_bytes(bf16_folder), _weights_bytes(out)
    achieved = report["achieved_sparsity"]
    assert abs(achieved - SPARSITY) <= 0.01
    # smaller by the pruned fraction: at most base x (1 - achieved) + 1% of the base
    assert after <= before * (1 - achieved) + 0.01 * before
    assert after == pytest.approx(before * (1 - achieved), rel=0.02)
    assert report["dtype"] == "float32"  # computed in float32 ...
    assert report["save_dtype"] == report["base_dtype"] == "bfloat16"  # ... saved like the base
    assert report["weights_bytes_before"] == before and report["weights_bytes_after"] == after
    assert _config_dtype(out) == "bfloat16"
    assert _tensor_dtypes(out) == {torch.bfloat16}
    size_row = next(line for line in (out / "README.md").read_text().splitlines() if "Weights on disk" in line)
    assert _fmt_bytes(before) in size_row and _fmt_bytes(after) in size_row and "estimated" not in size_row


def test_save_dtype_float32_overrides(bf16_folder, tmp_path):
    result = pruning.prune(str(bf16_folder), tmp_path / "f32", method="magnitude", sparsity=SPARSITY,
                           save_dtype="float32", progress=False, return_model=True)
    out = tmp_path / "f32"
    assert result.report.save_dtype == "float32" and result.report.base_dtype == "bfloat16"
    assert _config_dtype(out) == "float32" and _tensor_dtypes(out) == {torch.float32}
    before = _weights_bytes(bf16_folder)
    assert _weights_bytes(out) == pytest.approx(2 * before * (1 - result.achieved_sparsity), rel=0.02)
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}  # handed back in the compute dtype


def test_float32_base_stays_float32_and_bfloat16_halves_it(tiny_folder, tmp_path):
    kept = pruning.prune(str(tiny_folder), tmp_path / "auto", method="magnitude", sparsity=SPARSITY, progress=False)
    assert kept.report.save_dtype == "float32" and _config_dtype(tmp_path / "auto") == "float32"
    halved = pruning.prune(str(tiny_folder), tmp_path / "bf16", method="magnitude", sparsity=SPARSITY,
                           save_dtype="bf16", progress=False)
    assert halved.report.save_dtype == "bfloat16" and _tensor_dtypes(tmp_path / "bf16") == {torch.bfloat16}
    assert _weights_bytes(tmp_path / "bf16") < 0.55 * _weights_bytes(tmp_path / "auto")


@pytest.mark.parametrize("value,base,expect", [
    ("int8", "bf16", ["unknown --save-dtype", "auto"]),
    ("float64", "bf16", ["unknown --save-dtype", "bfloat16"]),
    ("float16", "bf16", ["--save-dtype float16 cannot hold the bfloat16", "--save-dtype auto"]),
    ("float16", "fp32", ["--save-dtype float16 cannot hold the float32", "float32"]),
])
def test_bad_save_dtype_is_one_line_exit_2_nothing_written(bf16_folder, tiny_folder, tmp_path, value, base, expect):
    out = tmp_path / "out"
    done = _prune_cli(bf16_folder if base == "bf16" else tiny_folder, out, "--save-dtype", value)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shear-hub: error:") and "Traceback" not in done.stderr
    assert all(e.lower() in lines[0].lower() for e in expect), lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*")), "nothing written"


@pytest.mark.parametrize("value", ["int8", "float16"])
def test_bad_save_dtype_fails_before_loading(bf16_folder, tmp_path, monkeypatch, value):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --save-dtype was checked")

    monkeypatch.setattr(pruning, "load_model", no_loading)
    with pytest.raises(ShearHubError, match="--save-dtype"):
        pruning.prune(str(bf16_folder), tmp_path / "out", method="magnitude", save_dtype=value, progress=False)
    assert not (tmp_path / "out").exists()


def test_gguf_is_saved_as_bfloat16():
    source = ModelSource("model.gguf", ".", gguf_file="model.gguf")
    assert base_dtype(source) == "bfloat16"
    assert resolve_save_dtype("auto", base_dtype(source), "float32") == "bfloat16"
    with pytest.raises(ShearHubError, match="float16 cannot hold"):
        resolve_save_dtype("float16", base_dtype(source), "float32")
    assert resolve_save_dtype("auto", None, "fp32") == "float32"  # unknown base: the compute dtype, as before


def test_recover_keeps_the_pruned_folders_dtype(bf16_folder, tmp_path):
    """bf16 in -> bf16 out through the whole pipeline: recover (computing in float32) saves the merged model in the
    dtype of the folder it was given."""
    from safetensors import safe_open

    from shear_hub.pruning import prune
    from shear_hub.recovery import RecoveryConfig, recover

    pruned = tmp_path / "pruned"
    prune(str(bf16_folder), pruned, method="magnitude", sparsity=0.3, structures="mlp", progress=False,
          evaluate=False, seq_len=16)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 200))
    out = tmp_path / "recovered"
    recover(str(pruned), out, RecoveryConfig(steps=2, batch_size=2, seq_len=16, data=str(text), save_every=0,
                                             eval_data=None))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert _weights_bytes(out) == _weights_bytes(pruned)
