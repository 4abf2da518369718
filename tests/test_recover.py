"""Recovery: LoRA training really changes the weights, merged == adapter, both layouts, distillation, resume after
SIGKILL (bit-identical to an uninterrupted run), data parallel with two CPU processes, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model_factory import save_tiny_model_folder
from tiny_models import _CORPUS

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny dense folder, its 30% prune in both layouts, and a training text."""
    from shear_hub.pruning import prune

    root = tmp_path_factory.mktemp("recover")
    save_tiny_model_folder(root / "dense", layers=3, intermediate=48)
    for layout in ("uniform", "per-layer"):
        prune(str(root / "dense"), root / layout, method="magnitude", sparsity=0.3, layout=layout,
              structures="heads,mlp", progress=False, seq_len=16)
    (root / "text.txt").write_text(" ".join(_CORPUS * 30))
    return root


def _cfg(root, **kw):
    from shear_hub.recovery import RecoveryConfig

    base = dict(steps=8, batch_size=4, seq_len=16, lr=1e-2, data=str(root / "text.txt"), save_every=0, log_every=2,
                eval_data=str(root / "text.txt"), eval_windows=6, eval_seq_len=16)
    base.update(kw)
    return RecoveryConfig(**base)


def _logits(folder, ids):
    from shear_hub.loading import load_model

    model, _, _ = load_model(str(folder))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("layout", ["uniform", "per-layer"])
def test_recover_merged_and_adapter_agree(folders, tmp_path, layout):
    from peft import AutoPeftModelForCausalLM

    from shear_hub.recovery import recover
    from shear_hub.report import read_report

    src = folders / layout
    merged = recover(str(src), tmp_path / "merged", _cfg(folders))
    rec = merged.report.recovery
    # training helped on the text it trained on, and the report says so
    assert rec["perplexity_after"] < rec["perplexity_before"]
    assert [p["step"] for p in rec["curve"]] == [2, 4, 6, 8]
    assert rec["curve"][-1]["loss"] < rec["curve"][0]["loss"]
    report = read_report(tmp_path / "merged")
    assert report.layout == layout and report.recovery["merged"] is True
    assert report.evaluation["perplexity"]["value"] == pytest.approx(rec["perplexity_after"])
    assert report.method == "magnitude"  # the pruning history is kept
    cfg_in = json.loads((src / "config.json").read_text())
    cfg_out = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert cfg_out["architectures"] == cfg_in["architectures"] and cfg_out.get("auto_map") == cfg_in.get("auto_map")
    if layout == "per-layer":
        assert (tmp_path / "merged" / "modeling_shear.py").is_file()
    # same shapes, different weights
    before, after = load_file(src / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before if "proj" in k)
    assert not list(tmp_path.glob(".merged.recover-ckpt"))  # checkpoint removed once finished

    # the same run saved as an adapter on top of the pruned folder gives the same model
    recover(str(src), tmp_path / "adapter", _cfg(folders, merge=False, eval_data=None))
    adapter_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert Path(adapter_cfg["base_model_name_or_path"]) == src.resolve()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "adapter").glob("*.bin"))
    # as the adapter's README says: trust_remote_code=True (a per-layer base ships its modeling code)
    assert "trust_remote_code=True" in (tmp_path / "adapter" / "README.md").read_text()
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"), trust_remote_code=True).eval()
    ids = torch.randint(0, 150, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        via_peft = peft_model(input_ids=ids).logits
    torch.testing.assert_close(via_peft, _logits(tmp_path / "merged", ids), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(via_peft, _logits(src, ids), atol=1e-3)


def test_distillation_loss_and_run(folders, tmp_path):
    from shear_hub.recovery import recover
    from shear_hub.recovery.losses import kd_loss, mixed_loss

    a = torch.randn(2, 5, 11)
    assert kd_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(a, a + torch.randn_like(a)).item() > 0.01
    ids = torch.randint(0, 11, (2, 5))
    total, lm, kd = mixed_loss(a, ids, a * 2, alpha=0.25, temperature=2.0)
    assert total.item() == pytest.approx(0.25 * lm.item() + 0.75 * kd.item(), rel=1e-5)

    result = recover(str(folders / "uniform"), tmp_path / "kd", _cfg(folders, teacher=str(folders / "dense"),
                                                                       kd_alpha=0.0, eval_data=None))
    curve = result.report.recovery["curve"]
    assert result.report.recovery["method"] == "lora+distillation"
    assert all("kd_loss" in p for p in curve)
    assert curve[-1]["kd_loss"] < curve[0]["kd_loss"]  # pure KD (alpha 0) pulls the student towards the teacher
    assert curve[-1]["loss"] == pytest.approx(curve[-1]["kd_loss"], rel=1e-4)


def _cli(*args, env=None, **kw):
    return subprocess.run([PY, "-m", "shear_hub", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kw)


def test_resume_after_sigkill_matches_uninterrupted_run(folders, tmp_path):
    from shear_hub.recovery import recover
    from shear_hub.recovery.checkpoint import checkpoint_dir

    out = tmp_path / "resumed"
    args = ["recover", str(folders / "uniform"), "--output", str(out), "--data", str(folders / "text.txt"),
            "--steps", "60", "--batch-size", "4", "--seq-len", "16", "--lr", "0.01", "--save-every", "5",
            "--log-every", "5", "--lora-dropout", "0.1", "--threads", "1"]
    ckpt = checkpoint_dir(out)
    proc = subprocess.Popen([PY, "-m", "shear_hub", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300  # generous: a loaded machine takes long to import torch
    while not (ckpt / "latest").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt / "latest").is_file(), "no checkpoint was written before the kill"
    assert not out.exists()  # the output only appears when complete
    killed_at = int((ckpt / "latest").read_text().split("-")[1])
    assert 0 < killed_at < 60

    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    assert "resuming from checkpoint at step" in done.stderr
    assert not ckpt.exists()
    report = json.loads((out / "pruning_report.json").read_text())
    resumed_from = report["recovery"]["resumed_from_step"]
    assert resumed_from is not None and resumed_from >= killed_at
    assert [p["step"] for p in report["recovery"]["curve"]] == list(range(5, 61, 5))

    # an uninterrupted run with the same settings (dropout on: RNG state must be restored too) gives the same weights
    from shear_hub.recovery import RecoveryConfig

    torch.set_num_threads(1)
    try:
        recover(str(folders / "uniform"), tmp_path / "straight", RecoveryConfig(
            steps=60, batch_size=4, seq_len=16, lr=0.01, save_every=0, log_every=5, lora_dropout=0.1,
            data=str(folders / "text.txt")))
    finally:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_changed_settings_refuse_checkpoint(folders, tmp_path):
    from shear_hub.errors import ShearHubError
    from shear_hub.recovery import recover
    from shear_hub.recovery.checkpoint import checkpoint_dir

    out = tmp_path / "o"
    _make_checkpoint(folders, out)
    assert (checkpoint_dir(out) / "latest").is_file() and not out.exists()
    with pytest.raises(ShearHubError, match="other settings"):
        recover(str(folders / "uniform"), out, _cfg(folders, lr=0.5, eval_data=None))
    recover(str(folders / "uniform"), out, _cfg(folders, lr=0.5, eval_data=None), resume=False)  # --no-resume
    assert (out / "model.safetensors").is_file() and not checkpoint_dir(out).exists()


def _make_checkpoint(folders, out):
    """A real checkpoint of a different run, left behind by an 'interrupted' run (save, then fail on purpose)."""
    from shear_hub.recovery import checkpoint, recover

    real_save = checkpoint.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(*a, **kw):
        real_save(*a, **kw)
        raise Stop

    import shear_hub.recovery.trainer as trainer

    trainer.save_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            recover(str(folders / "uniform"), out, _cfg(folders, save_every=2, eval_data=None))
    finally:
        trainer.save_checkpoint = real_save


def test_accelerate_two_cpu_processes_match_one(folders, tmp_path):
    """Data parallel: 2 processes each take half of every batch; DDP averages gradients -> the same training.

    accelerate 1.x runs `--cpu --num_processes N` as one process unless MPI is set up; its torchrun path
    (`--multi_gpu`) with `--device cpu` gives N CPU processes on gloo.
    """
    from shear_hub.cli import main

    common = ["--data", str(folders / "text.txt"), "--steps", "6", "--batch-size", "4", "--seq-len", "16",
              "--lr", "0.01", "--log-every", "3", "--save-every", "3", "--device", "cpu"]
    launch = subprocess.run(
        [str(Path(PY).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "shear_hub", "recover",
         str(folders / "per-layer"), "--output", str(tmp_path / "ddp"), *common],
        cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launch.returncode == 0, launch.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "pruning_report.json").read_text())
    assert report["recovery"]["processes"] == 2
    assert launch.stdout.count("recovered ") == 1  # one summary line: only the main process prints

    assert main(["recover", str(folders / "per-layer"), "--output", str(tmp_path / "one"), *common]) == 0
    one = json.loads((tmp_path / "one" / "pruning_report.json").read_text())["recovery"]
    assert one["processes"] == 1
    for p, q in zip(report["recovery"]["curve"], one["curve"]):
        assert p["loss"] == pytest.approx(q["loss"], rel=1e-3)
    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


def test_bad_input_is_one_line(folders, tmp_path, capsys, monkeypatch):
    from shear_hub.cli import main

    def err(*argv):
        code = main(list(argv))
        return code, capsys.readouterr().err

    code, text = err("recover", str(folders / "uniform"), "--output", str(tmp_path / "x"), "--steps", "0")
    assert code == 2 and "--steps must be >= 1" in text and len(text.strip().splitlines()) == 1
    code, text = err("recover", str(folders / "uniform"), "--output", str(tmp_path / "x"), "--teacher", str(tmp_path / "nope"))
    assert code == 2 and "not found" in text
    code, text = err("recover", str(folders / "uniform"), "--output", str(folders / "dense"))
    assert code == 2 and "already exists" in text
    monkeypatch.setenv("SHEAR_HUB_SKIP_RESOURCE_CHECK", "1")  # the memory pre-check would refuse this first
    code, text = err("recover", str(folders / "uniform"), "--output", str(tmp_path / "x"), "--batch-size", "3",
                     "--seq-len", "100000000")
    assert code == 2 and "fewer than --seq-len" in text
    assert not (tmp_path / "x").exists()
