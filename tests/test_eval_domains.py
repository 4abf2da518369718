"""The cross-domain evaluation protocol (`shear-hub eval --domains`): shipped texts, per-domain perplexity with the
same windows as `perplexity`, their geometric mean, CLI JSON / table, report and card."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from model_factory import tiny_llama

from shear_hub.data import BUILTIN_CALIB

PROTOCOL_TOKENS = 48 * 512  # the protocol's default windows x seq_len


def _shingles(text: str, n: int = 20) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_protocol_texts_are_distinct_large_enough_and_held_out():
    from shear_hub.data import builtin_calibration_text
    from shear_hub.evaluation.domains import DOMAINS, domain_texts

    texts = domain_texts()
    assert len(texts) >= 3 and set(texts) == set(DOMAINS)
    assert len(set(DOMAINS.values())) == len(DOMAINS)
    calib = _shingles(builtin_calibration_text())
    notice = resources.files("shear_hub.resources").joinpath("NOTICE.md").read_text(encoding="utf-8")
    shingles = {name: _shingles(text) for name, text in texts.items()}
    for name, text in texts.items():
        # Llama-style tokenizers (byte-level BPE, SentencePiece) give every whitespace-separated word at least one
        # token, so the word count is a lower bound on the token count (SmolLM2: 1.26-1.79 tokens per word).
        assert len(text.split()) >= PROTOCOL_TOKENS * 1.3, name
        assert len(text.encode("utf-8")) < 500_000, name  # a modest slice
        assert sum(not c.isascii() for c in text) < 0.01 * len(text), name  # English (curly quotes, dashes aside)
        assert not shingles[name] & calib, f"{name} shares a 20-word passage with the calibration text"
        for other in texts:
            if other != name:
                assert not shingles[name] & shingles[other], (name, other)
        assert f"eval/{DOMAINS[name]}" in notice  # provenance and license recorded


def test_geometric_mean():
    from shear_hub.evaluation import geometric_mean

    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert geometric_mean([1.0, 10.0, 100.0]) == pytest.approx(10.0)
    assert geometric_mean([7.5]) == pytest.approx(7.5)
    for bad in ([], [0.0, 3.0], [-1.0], [float("inf"), 2.0], [float("nan")]):
        with pytest.raises(ValueError):
            geometric_mean(bad)


def test_domain_perplexity_matches_perplexity_per_text_and_geometric_mean():
    from tiny_models import VOCAB_SIZE, build_tokenizer

    from shear_hub.evaluation import domain_perplexity, perplexity
    from shear_hub.evaluation.domains import DOMAINS, domain_text

    model, tok = tiny_llama(vocab=VOCAB_SIZE, layers=2, intermediate=32), build_tokenizer()
    result = domain_perplexity(model, tok, seq_len=16, windows=3, batch_size=2)
    assert list(result["texts"]) == list(DOMAINS) and result["seq_len"] == 16 and result["windows"] == 3
    values = []
    for name, entry in result["texts"].items():
        assert entry["windows"] == 3 and entry["data"] == DOMAINS[name].removesuffix(".txt")
        expected = perplexity(model, tok, text=domain_text(name), seq_len=16, windows=3)
        assert entry["value"] == pytest.approx(expected, rel=1e-4)
        values.append(entry["value"])
    assert len(set(values)) == len(values)  # different texts, different numbers
    assert result["geometric_mean"] == pytest.approx(math.exp(sum(map(math.log, values)) / len(values)), rel=1e-4)
    assert min(values) < result["geometric_mean"] < max(values)

    part = domain_perplexity(model, tok, seq_len=16, windows=2, domains=["drama"])
    assert list(part["texts"]) == ["drama"] and part["geometric_mean"] == part["texts"]["drama"]["value"]


@pytest.fixture(scope="module")
def folders(make_pruned_folders):
    return make_pruned_folders("domains", layers=2, intermediate=32, layout="per-layer", pruned="pruned")


def _run(capsys, *argv):
    from shear_hub.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_domains_json_report_and_card(folders, capsys):
    from shear_hub.evaluation.domains import DOMAINS

    folder = folders / "pruned"
    code, out, err = _run(capsys, "eval", str(folder), "--domains", "--json", "--seq-len", "16", "--windows", "2",
                          "--no-speed", "--base", str(folders / "dense"))
    assert code == 0, err
    result = json.loads(out)
    for res in (result, result["base"]):
        dom = res["domains"]
        assert set(dom["texts"]) == set(DOMAINS) and dom["seq_len"] == 16
        values = [e["value"] for e in dom["texts"].values()]
        assert all(math.isfinite(v) and v > 1 for v in values) and all(e["windows"] == 2 for e in dom["texts"].values())
        assert dom["geometric_mean"] == pytest.approx(math.exp(sum(map(math.log, values)) / len(values)), rel=1e-4)
    assert result["perplexity"]["data"] == BUILTIN_CALIB  # the single-text number is still there

    report = json.loads((folder / "pruning_report.json").read_text())
    assert report["evaluation"]["domains"] == result["domains"]
    assert report["evaluation"]["base_domains"] == result["base"]["domains"]
    card = (folder / "README.md").read_text()
    assert "geometric mean of 4 domains" in card and f"{result['domains']['geometric_mean']:.2f}" in card
    assert f"{result['domains']['texts']['fiction']['value']:.2f}" in card


def test_cli_domains_table(folders, capsys):
    code, out, err = _run(capsys, "eval", str(folders / "dense"), "--domains", "--seq-len", "16", "--windows", "2",
                          "--no-speed")
    assert code == 0, err
    for name in ("fiction", "drama", "encyclopedia", "manual"):
        assert f"perplexity ({name}: " in out
    assert "geometric mean of 4 domains" in out


def test_cli_without_domains_has_none(folders, capsys):
    code, out, err = _run(capsys, "eval", str(folders / "dense"), "--json", "--seq-len", "16", "--windows", "1",
                          "--no-speed")
    assert code == 0, err
    assert "domains" not in json.loads(out)


@pytest.mark.slow
def test_protocol_texts_fill_the_windows_with_the_demo_tokenizer():
    from transformers import AutoTokenizer

    from shear_hub.data import tokenize_text
    from shear_hub.evaluation.domains import domain_texts
    from shear_hub.loading import demo_model_dir

    tok = AutoTokenizer.from_pretrained(str(demo_model_dir()))
    for name, text in domain_texts().items():
        assert tokenize_text(tok, text).numel() >= PROTOCOL_TOKENS, name
