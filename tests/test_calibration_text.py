"""The shipped calibration texts: every built-in text loads by its spec name, the mixed-domain text mixes its
sources, has its provenance recorded, and shares no 20-word passage with the held-out evaluation texts."""

from __future__ import annotations

from importlib import resources

import pytest


def _shingles(text: str, n: int = 20) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_builtin_texts_load_by_name():
    from shear_hub.data import BUILTIN_CALIB, BUILTIN_TEXTS, builtin_calibration_text, load_text
    from shear_hub.errors import ShearHubError

    assert BUILTIN_CALIB in BUILTIN_TEXTS and {"builtin:pydocs", "builtin:mixed"} <= set(BUILTIN_TEXTS)
    for spec in BUILTIN_TEXTS:
        assert load_text(spec) == builtin_calibration_text(spec) and len(load_text(spec).split()) > 40_000
    assert load_text(None) == load_text("builtin") == load_text(BUILTIN_CALIB)
    with pytest.raises(ShearHubError, match="built-in"):
        load_text("builtin:nope")


def test_mixed_calibration_text_is_held_out_from_the_eval_texts():
    from shear_hub.data import builtin_calibration_text
    from shear_hub.evaluation.domains import domain_texts

    mixed = builtin_calibration_text("builtin:mixed")
    assert 300_000 <= len(mixed.encode("utf-8")) <= 600_000
    assert sum(not c.isascii() for c in mixed) < 0.01 * len(mixed)  # English (curly quotes, dashes aside)
    shingles = _shingles(mixed)
    for name, text in domain_texts().items():
        assert not shingles & _shingles(text), f"mixed_calib.txt shares a 20-word passage with {name}"
    # It keeps part of the Python documentation text, but is not mostly that.
    pydocs = _shingles(builtin_calibration_text("builtin:pydocs"))
    share = len(shingles & pydocs) / len(shingles)
    assert 0.1 < share < 0.5, share
    notice = resources.files("shear_hub.resources").joinpath("NOTICE.md").read_text(encoding="utf-8")
    assert "mixed_calib.txt" in notice


def test_self_calibration_is_sampled_from_the_model_and_deterministic(tmp_path):
    """--calib self: text sampled from the dense model (temperature falling over the sequence, top-p), the same for
    the same seed, another for another seed; prune records it and measures its held-out slice."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model_factory import save_tiny_model_folder
    from shear_hub.pruning import prune
    from shear_hub.self_calibration import self_calibration_text

    save_tiny_model_folder(tmp_path / "dense", layers=2, intermediate=64)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    tok = AutoTokenizer.from_pretrained(tmp_path / "dense")
    a = self_calibration_text(model, tok, "self", samples=3, seq_len=16, seed=0)
    assert a == self_calibration_text(model, tok, "self", samples=3, seq_len=16, seed=0)
    assert a != self_calibration_text(model, tok, "self", samples=3, seq_len=16, seed=1)
    assert a != self_calibration_text(model, tok, "self:0.5-0.5", samples=3, seq_len=16, seed=0)
    assert len(tok(a.split("\n\n")[0])["input_ids"]) >= 8  # full-length samples, not stopped at an end token
    prune(str(tmp_path / "dense"), tmp_path / "out", calib="self", calib_samples=4, seq_len=32, progress=False)
    report = json.loads((tmp_path / "out" / "pruning_report.json").read_text())
    assert report["calibration"]["spec"] == "self"
    assert report["evaluation"]["heldout_perplexity"]["windows"] > 0


def test_self_calibration_bad_schedule_is_one_line(tmp_path):
    import subprocess
    import sys

    from model_factory import save_tiny_model_folder

    save_tiny_model_folder(tmp_path / "dense", layers=1, intermediate=32)
    done = subprocess.run([sys.executable, "-m", "shear_hub", "prune", str(tmp_path / "dense"), "--output",
                           str(tmp_path / "out"), "--calib", "self:hot-cold", "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "self:1.5-0.8" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
