"""export-gguf: uniform Llama / Mistral / Qwen2 / Qwen3 folders written as GGUF and read back with transformers' own
GGUF loader (which undoes llama.cpp's conventions: names, q/k rotary permutation, tied output, tokenizer), logits and
token ids compared; dtypes, llama3 rope factors, refusals and the atomic write."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from model_factory import tiny_llama  # noqa: E402
from tiny_models import VOCAB_SIZE, build_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from shear_hub.cli import main  # noqa: E402
from shear_hub.errors import ShearHubError  # noqa: E402
from shear_hub.gguf_export import export_gguf, llama3_rope_factors  # noqa: E402
from shear_hub.structures import build_graph  # noqa: E402
from shear_hub.surgery import build_pruned_model  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. def main(): return sum(range(10))"


def _pruned(model, kinds: list[str], layout: str = "uniform"):
    """One KV group (when heads are asked for) and 8 MLP channels gone from every layer."""
    graph = build_graph(model, kinds)
    removed = [g for g in graph.of_kind("heads") if g.index == 0] if "heads" in kinds else []
    removed += [g for g in graph.of_kind("mlp") if g.index < 8]
    if layout == "per-layer":
        removed = [g for g in removed if g.layer == 0]
    return build_pruned_model(graph, removed, layout)[0]


def _qwen3():
    # transformers' GGUF loader reads no head_dim for qwen3 and falls back to Qwen3Config's 128 (llama.cpp reads
    # attention.key_length), so this tiny Qwen3 keeps head_dim 128 to be checkable through that loader
    from transformers import Qwen3Config

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=128, tie_word_embeddings=True,
                         max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.2)
    return model.eval()


def _model(family: str):
    """A uniform pruned model of ``family``. Llama loses KV heads too (head_dim 8 != hidden/heads 16: the loader takes
    head_dim from rope.dimension_count); Qwen2's loader derives head_dim from hidden/heads, so it loses MLP only."""
    from test_architectures import tiny_model

    if family == "llama":
        return _pruned(tiny_llama(vocab=VOCAB_SIZE, tied=False, layers=2), ["heads", "mlp"])
    if family == "qwen3":
        return _pruned(_qwen3(), ["mlp"])
    return _pruned(tiny_model(family, layers=2), ["mlp"])


def _save(model, path):
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# (family, architecture in the file, positions compared: the tiny Mistral has a sliding window of 5, which llama.cpp
# does not apply, so only the first 5 positions are the same model; the tiny Qwen2's window is on no layer of two)
CASES = [("llama", "llama", None), ("mistral", "llama", 5), ("qwen2", "qwen2", None), ("qwen3", "qwen3", None)]


@pytest.mark.parametrize("family,arch,positions", CASES)
def test_roundtrip_through_transformers_gguf_loader(tmp_path, capsys, family, arch, positions):
    model = _model(family)
    _save(model, tmp_path / "pruned")
    out = tmp_path / "gguf" / "model.gguf"
    assert main(["export-gguf", str(tmp_path / "pruned"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"architecture {arch}" in printed and ("sliding window 5" in printed) == (family == "mistral")
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]  # no temporary left beside it

    reader = gguf.GGUFReader(out)
    fields = {k: v.contents() for k, v in reader.fields.items() if k.startswith(("general.", "tokenizer.ggml.model",
                                                                                 "tokenizer.ggml.pre"))}
    assert fields["general.architecture"] == arch and fields["tokenizer.ggml.model"] == "gpt2"
    # transformers loads the saved tokenizer of a qwen2 folder as Qwen2Tokenizer, which brings the Qwen2 split regex
    assert fields["tokenizer.ggml.pre"] == ("qwen2" if family == "qwen2" else "gpt-2")
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight"} <= names
    assert ("output.weight" in names) == (not model.config.tie_word_embeddings)
    assert ("blk.0.attn_q_norm.weight" in names) == (family == "qwen3")
    assert ("blk.0.attn_q.bias" in names) == (family == "qwen2")

    loaded = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    ids = AutoTokenizer.from_pretrained(tmp_path / "pruned")(TEXT, return_tensors="pt")["input_ids"]
    assert tokenizer(TEXT)["input_ids"] == ids[0].tolist()
    assert tokenizer.decode(ids[0]) == TEXT
    expected, got = _logits(model, ids), _logits(loaded, ids)
    if positions:
        expected, got = expected[:, :positions], got[:, :positions]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype,qtype,atol", [("f16", "F16", 2e-2), ("bf16", "BF16", 1.5e-1)])
def test_half_precision(tmp_path, dtype, qtype, atol):
    model = _model("llama")
    result = export_gguf(model, build_tokenizer(), tmp_path / "m.gguf", dtype=dtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(result.path).tensors}
    assert types["blk.0.attn_k.weight"] == qtype and types["token_embd.weight"] == qtype
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = build_tokenizer()(TEXT, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=atol, rtol=0)


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path):
    """Llama 3.1+ rope scaling is llama.cpp's rope_freqs tensor: each frequency divided by its factor, which must give
    transformers' own llama3 inverse frequencies."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    model = tiny_llama(vocab=VOCAB_SIZE, layers=1, head_dim=64, heads=2, kv_heads=1, hidden=64,
                       rope_parameters=rope)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config)
    default = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    factors = llama3_rope_factors(rope, 64)
    torch.testing.assert_close(default / factors, inv_freq.float(), rtol=1e-5, atol=0)
    result = export_gguf(model, build_tokenizer(), tmp_path / "m.gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(result.path).tensors}
    np.testing.assert_allclose(np.asarray(tensors["rope_freqs.weight"].data), factors.numpy())


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("shear-hub: error:")
    return err[-1]


def test_refusals_write_nothing(tmp_path, capsys):
    from test_architectures import tiny_model

    out = tmp_path / "o.gguf"
    # per-layer folder: refused from its config.json, before the weights are loaded
    per_layer = _save(_pruned(tiny_llama(vocab=VOCAB_SIZE, layers=2), ["heads", "mlp"], "per-layer"), tmp_path / "pl")
    assert main(["export-gguf", str(per_layer), "--output", str(out)]) == 2
    line = _one_line_error(capsys)
    assert "per-layer" in line and "no per-layer widths" in line and "--layout uniform" in line
    # a family llama.cpp conventions are not written for here
    gemma = _save(tiny_model("gemma2", layers=2), tmp_path / "gemma")
    assert main(["export-gguf", str(gemma), "--output", str(out)]) == 2
    assert "Llama, Mistral, Qwen2 and Qwen3" in _one_line_error(capsys)
    with pytest.raises(ShearHubError, match="not opt"):
        export_gguf(tiny_model("opt", layers=2), build_tokenizer(), out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gemma", "pl"]
    # output checks: not a .gguf name, an existing file without --overwrite
    llama = _save(_model("llama"), tmp_path / "llama")
    assert main(["export-gguf", str(llama), "--output", str(tmp_path / "o.bin")]) == 2
    assert ".gguf" in _one_line_error(capsys)
    out.write_bytes(b"keep")
    assert main(["export-gguf", str(llama), "--output", str(out)]) == 2
    assert "--overwrite" in _one_line_error(capsys) and out.read_bytes() == b"keep"
    with pytest.raises(SystemExit) as exit_:  # argparse: one line, exit 2
        main(["export-gguf", str(llama), "--output", str(out), "--dtype", "q4", "--overwrite"])
    assert exit_.value.code == 2 and "invalid choice: 'q4'" in _one_line_error(capsys)
    assert out.read_bytes() == b"keep"


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous")

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(_model("llama"), build_tokenizer(), out, overwrite=True)
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
