"""Recovery past one device: `accelerate launch --config_file shear_hub/resources/accelerate/fsdp.yaml` shards the
model with FSDP (FULL_SHARD, one unit per decoder layer, LoRA through use_orig_params). Run here as 2 CPU processes on
gloo: the loss curve and the merged model equal a one-process run's.

accelerate 1.x never selects FSDP for CPU processes (its state stays MULTI_CPU); `recover --device cpu` under
ACCELERATE_USE_FSDP selects it itself (trainer._fsdp), so this runs torch's real FullyShardedDataParallel on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _config() -> Path:
    import shear_hub.resources

    return Path(shear_hub.resources.__file__).parent / "accelerate" / "fsdp.yaml"


@pytest.fixture(scope="module")
def folders(make_pruned_folders):
    return make_pruned_folders("recover_fsdp", layers=3, intermediate=48, layout="uniform", pruned="uniform",
                               text_repeats=30)


def _launch(folders, out, *extra):
    return subprocess.run(
        [str(Path(PY).with_name("accelerate")), "launch", "--config_file", str(_config()), "--num_processes", "2",
         "-m", "shear_hub", "recover", str(folders / "uniform"), "--output", str(out), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_shipped_config_is_fsdp_full_shard():
    cfg = yaml.safe_load(_config().read_text())
    assert cfg["distributed_type"] == "FSDP" and cfg["use_cpu"] is False
    fsdp = cfg["fsdp_config"]
    assert fsdp["fsdp_version"] == 1 and fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and fsdp["fsdp_use_orig_params"] is True
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_fsdp_two_cpu_processes_match_one(folders, tmp_path):
    from shear_hub.cli import main
    from shear_hub.loading import load_model

    common = ["--data", str(folders / "text.txt"), "--steps", "6", "--batch-size", "4", "--seq-len", "16",
              "--lr", "0.01", "--log-every", "2", "--save-every", "0", "--device", "cpu"]
    launch = _launch(folders, tmp_path / "fsdp", *common)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert launch.stdout.count("recovered ") == 1
    fsdp = json.loads((tmp_path / "fsdp" / "pruning_report.json").read_text())["recovery"]
    assert fsdp["processes"] == 2 and fsdp["sharding"] == "fsdp"

    assert main(["recover", str(folders / "uniform"), "--output", str(tmp_path / "one"), *common]) == 0
    one = json.loads((tmp_path / "one" / "pruning_report.json").read_text())["recovery"]
    assert one["processes"] == 1 and "sharding" not in one
    assert [p["step"] for p in fsdp["curve"]] == [p["step"] for p in one["curve"]] == [2, 4, 6]
    for p, q in zip(fsdp["curve"], one["curve"]):
        assert p["loss"] == pytest.approx(q["loss"], rel=1e-4)

    ids = torch.randint(0, 150, (2, 12), generator=torch.Generator().manual_seed(1))
    logits = {}
    for name in ("fsdp", "one", "start"):
        model, _, _ = load_model(str(tmp_path / name if name != "start" else folders / "uniform"))
        with torch.no_grad():
            logits[name] = model(input_ids=ids).logits
    torch.testing.assert_close(logits["fsdp"], logits["one"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits["fsdp"], logits["start"], atol=1e-3)  # it did train


def test_fsdp_refuses_checkpoints_in_one_line(folders, tmp_path):
    launch = _launch(folders, tmp_path / "x", "--data", str(folders / "text.txt"), "--steps", "2", "--batch-size", "2",
                     "--seq-len", "16", "--save-every", "1", "--device", "cpu")
    assert launch.returncode != 0
    errors = [line for line in launch.stderr.splitlines() if line.startswith("shear-hub: error")]
    assert errors and all("checkpoints are not supported under FSDP; add --save-every 0" in e for e in errors)
    assert not (tmp_path / "x").exists()
