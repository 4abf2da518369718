"""`shear-hub eval`: perplexity protocol, size, speed, JSON output, report + card update, lm-eval skip message."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def pruned(make_pruned_folders):
    return make_pruned_folders("eval", layers=2, intermediate=32, layout="per-layer", pruned="pruned", text_repeats=20)


def _run(capsys, *argv):
    from shear_hub.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_json_writes_report_and_card(pruned, capsys):
    from shear_hub.evaluation import perplexity
    from shear_hub.loading import load_model

    folder, text = pruned / "pruned", pruned / "text.txt"
    code, out, err = _run(capsys, "eval", str(folder), "--data", str(text), "--seq-len", "16", "--windows", "5",
                          "--prompt-len", "8", "--new-tokens", "4", "--base", str(pruned / "dense"), "--json",
                          "--tasks", "hellaswag")
    assert code == 0, err
    result = json.loads(out)  # stdout is exactly one JSON object
    model, tok, _ = load_model(str(folder))
    # same protocol (and value) as the benchmarks' perplexity function
    assert result["perplexity"]["value"] == pytest.approx(perplexity(model, tok, str(text), seq_len=16, windows=5),
                                                          rel=1e-4)
    assert result["perplexity"] == {**result["perplexity"], "data": "text", "seq_len": 16, "windows": 5}
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["params"] < result["base"]["params"]
    assert result["file_size_bytes"] == (folder / "model.safetensors").stat().st_size
    for key in ("prefill_tok_s", "decode_tok_s"):
        assert math.isfinite(result["speed"][key]) and result["speed"][key] > 0
    assert result["speed"]["prompt_len"] == 8 and result["speed"]["new_tokens"] == 4
    if "lm_eval" not in sys.modules and not _has_lm_eval():
        messages = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
        assert "pip install lm-eval" in err and len(messages) == 1, messages  # progress bars aside, one line
        assert "pip install lm-eval" in result["zero_shot"]["skipped"]

    report = json.loads((folder / "pruning_report.json").read_text())
    ev = report["evaluation"]
    assert ev["perplexity"]["value"] == result["perplexity"]["value"]
    assert ev["base_perplexity"] == result["base"]["perplexity"]["value"]
    assert ev["speed"]["base_decode_tok_s"] == result["base"]["speed"]["decode_tok_s"]
    assert report["method"] == "magnitude" and report["dims_after"]  # the rest of the report is intact
    card = (folder / "README.md").read_text()
    assert f"{result['perplexity']['value']:.2f}" in card and f"{ev['base_perplexity']:.2f}" in card


def _has_lm_eval() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def test_eval_table_on_plain_folder_writes_nothing(pruned, capsys):
    dense = pruned / "dense"
    before = sorted(p.name for p in dense.iterdir())
    code, out, err = _run(capsys, "eval", str(dense), "--data", str(pruned / "text.txt"), "--seq-len", "16",
                          "--windows", "1000", "--no-speed")
    assert code == 0, err
    assert "perplexity (text," in out and "parameters" in out and "decode" not in out
    # the text has fewer windows than asked: the table says how many were used
    assert "x 16)" in out and " 1000 x" not in out
    assert sorted(p.name for p in dense.iterdir()) == before  # not a shear-hub folder: nothing written


def test_eval_bad_input(pruned, capsys, tmp_path):
    code, _, err = _run(capsys, "eval", str(tmp_path / "missing"))
    assert code == 2 and "not found" in err
    code, _, err = _run(capsys, "eval", str(pruned / "dense"), "--data", str(tmp_path / "none.txt"))
    assert code == 2 and "data file" in err
    code, _, err = _run(capsys, "eval", str(pruned / "dense"), "--windows", "0")
    assert code == 2 and "--windows" in err


def test_zero_shot_skip_message_without_lm_eval(pruned, monkeypatch):
    """lm-eval absent (forced via sys.modules, the way Python reports a missing package): one-line skip."""
    from shear_hub.evaluation.zeroshot import ZeroShotUnavailable, run_zero_shot

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ZeroShotUnavailable, match=r"pip install lm-eval"):
        run_zero_shot(torch.nn.Linear(1, 1), None, ["hellaswag"])
