"""What `shear-hub prune` shows: stage bars (no library bars), a closing summary with sizes and held-out perplexity
before / after, the same numbers in the report and the card; the held-out windows never overlap calibration."""

import json
import subprocess
import sys

import pytest
import torch

from shear_hub.data import held_out_windows, load_text, random_windows, split_calibration, tokenize_text
from shear_hub.pruning import prune

CLI = [sys.executable, "-m", "shear_hub"]
FAST = ["--method", "wanda", "--sparsity", "0.25", "--seq-len", "32", "--calib-samples", "4"]
LIBRARY_BARS = ("Loading weights", "Writing model shards", "de-quantizing")


def _ranges_overlap(a: int, alen: int, b: int, blen: int) -> bool:
    return a < b + blen and b < a + alen


@pytest.mark.parametrize("samples,seq_len,held,held_len", [(32, 256, 8, 256), (4, 32, 8, 128), (128, 512, 8, 256)])
def test_held_out_windows_are_disjoint_from_calibration(samples, seq_len, held, held_len):
    from tiny_models import build_tokenizer

    tokens = tokenize_text(build_tokenizer(), load_text(None))
    positions = torch.arange(tokens.numel())  # same length; values say where each token came from
    calibration, stream, held_out, starts = split_calibration(positions, samples, seq_len, 0, held, held_len)
    # the calibration windows are exactly the ones prune always used (no change to any method's input)
    assert torch.equal(calibration, random_windows(positions, samples, seq_len, 0))
    assert 0 < len(held_out) <= held and held_out.shape[1] == held_len
    calib_starts = calibration[:, 0].tolist()
    for window, start in zip(held_out, starts):
        assert window.tolist() == list(range(start, start + held_len))
        assert not any(_ranges_overlap(start, held_len, c, seq_len) for c in calib_starts)
    assert not set(held_out.flatten().tolist()) & set(calibration.flatten().tolist())
    # the stream a method may train on has the held-out tokens cut out, and nothing else
    assert not set(held_out.flatten().tolist()) & set(stream.tolist())
    assert stream.numel() == tokens.numel() - held_out.numel()
    if len(held_out) == held:  # spread over the text, not bunched at one end
        assert starts[-1] - starts[0] > tokens.numel() // 2


def test_held_out_windows_when_calibration_covers_everything():
    tokens = torch.arange(100)
    windows, starts = held_out_windows(tokens, 8, 10, exclude=[(0, 50), (55, 100)])
    assert starts == [] and windows.shape == (0, 10)
    windows, starts = held_out_windows(tokens, 8, 10, exclude=[(0, 30), (60, 100)])
    assert starts == [30, 40, 50] and windows[0].tolist() == list(range(30, 40))


def _run(args, cwd):
    done = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr.replace("\r", "\n")


def test_cli_prune_prints_stage_bars_and_a_summary_without_library_bars(tiny_folder, tmp_path):
    out = tmp_path / "out"
    stdout, stderr = _run(["prune", str(tiny_folder), "--output", str(out)] + FAST, tmp_path)
    for text in LIBRARY_BARS:
        assert text not in stderr and text not in stdout
    for stage in ("load model", "calibration data", "perplexity before (held-out)", "select (wanda)", "surgery",
                  "perplexity after (held-out)", "save"):
        assert stage in stderr
    report = json.loads((out / "pruning_report.json").read_text())
    held = report["evaluation"]["heldout_perplexity"]
    assert held["what"] == "held-out slice of the calibration text" and held["windows"] == 8
    assert held["seq_len"] == 128  # the tiny model's 128 positions cap the default 256
    assert held["value"] > 1 and held["base"] > 1
    lines = stdout.splitlines()
    assert len(lines) <= 12  # one screen
    assert any(line.startswith("parameters") and f"{report['params_before']:,}" in line
               and f"{report['params_after']:,}" in line for line in lines)
    assert any(line.startswith("weights on disk") for line in lines)
    ppl = next(line for line in lines if line.startswith("perplexity"))
    assert f"{held['base']:.2f}" in ppl and f"{held['value']:.2f}" in ppl
    assert "held-out slice of the calibration text" in stdout
    card = (out / "README.md").read_text()
    assert "Not measured yet" not in card
    assert f"| {held['value']:.2f} | {held['base']:.2f} |" in card and "held-out slice of the calibration text" in card
    assert "heldout_perplexity.value" not in card  # a quality row, not a raw number list

    # a later `shear-hub eval` adds its own perplexity (separate text) beside prune's and the card shows both
    from shear_hub.evaluation.report import record_evaluation

    result = {"perplexity": {"data": "other", "seq_len": 16, "windows": 2, "value": 123.456}, "params": 1}
    assert record_evaluation(out, result, {"perplexity": {"value": 100.0}})
    ev = json.loads((out / "pruning_report.json").read_text())["evaluation"]
    assert ev["heldout_perplexity"] == held and ev["perplexity"]["value"] == 123.456 and ev["base_perplexity"] == 100.0
    card = (out / "README.md").read_text()
    assert "| 123.46 | 100.00 | +23.5% |" in card and f"| {held['value']:.2f} | {held['base']:.2f} |" in card

    # --debug keeps the library bars (which is what the default hides)
    _, debug_err = _run(["--debug", "prune", str(tiny_folder), "--output", str(tmp_path / "dbg")] + FAST, tmp_path)
    assert "Loading weights" in debug_err


def test_no_eval_leaves_the_numbers_out_and_the_model_unchanged(tiny_folder, tmp_path):
    from safetensors.torch import load_file

    a = prune(str(tiny_folder), tmp_path / "a", method="wanda", structures="heads,mlp", calib_samples=4, seq_len=32,
              progress=False)
    b = prune(str(tiny_folder), tmp_path / "b", method="wanda", structures="heads,mlp", calib_samples=4, seq_len=32,
              progress=False, evaluate=False)
    assert a.perplexity_after == a.report.evaluation["heldout_perplexity"]["value"] == pytest.approx(
        json.loads((tmp_path / "a" / "pruning_report.json").read_text())["evaluation"]["heldout_perplexity"]["value"])
    assert b.perplexity_before is None and "heldout_perplexity" not in b.report.evaluation
    assert "heldout_perplexity" not in json.loads((tmp_path / "b" / "pruning_report.json").read_text())["evaluation"]
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    stdout, _ = _run(["prune", str(tiny_folder), "--output", str(tmp_path / "c"), "--no-eval", "--no-progress"]
                     + FAST, tmp_path)
    lines = stdout.splitlines()
    assert not [line for line in lines if line.startswith("perplexity")] and "held-out" not in stdout
    assert any(line.startswith("parameters") for line in lines)


def test_api_without_progress_is_silent(tiny_folder, tmp_path, capfd):
    prune(str(tiny_folder), tmp_path / "out", method="wanda", structures="heads,mlp", calib_samples=4, seq_len=32,
          progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    from transformers.utils import logging as tf_logging

    assert tf_logging.is_progress_bar_enabled()  # library bars are put back as they were


def test_surgeon_unstructured_updates_show_progress(tiny_folder, tmp_path, capfd):
    prune(str(tiny_folder), tmp_path / "out", method="surgeon", structures="mlp", calib_samples=4, seq_len=32,
          method_options={"mode": "unstructured"}, evaluate=False)
    err = capfd.readouterr().err.replace("\r", "\n")
    assert "surgeon: curvature and costs" in err
    updates = [line for line in err.splitlines() if "surgeon: weight updates" in line]
    assert any("/28" in line for line in updates)  # 4 layers x 7 projections, one tick each
    assert "select (surgeon)" in err and "Loading weights" not in err
