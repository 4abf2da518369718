"""export-onnx: pruned models (uniform and per-layer, one with a removed attention block) exported with KV cache,
run in onnxruntime for a prefill and decode steps, compared with PyTorch; names, side files and CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from model_factory import tiny_llama  # noqa: E402

from shear_hub.cli import main  # noqa: E402
from shear_hub.errors import ShearHubError  # noqa: E402
from shear_hub.onnx import OnnxCausalLM, export_onnx, io_names, optimum_available  # noqa: E402
from shear_hub.structures import build_graph  # noqa: E402
from shear_hub.surgery import build_pruned_model  # noqa: E402

BACKENDS = ["torch"] + (["optimum"] if optimum_available() else [])
TOL = 1e-4


def _uniform_pruned_folder(path):
    """A uniform-layout pruned model saved like `shear-hub prune` saves one (weights, config, tokenizer)."""
    from tiny_models import VOCAB_SIZE, build_tokenizer

    dense = tiny_llama(layers=3, vocab=VOCAB_SIZE, intermediate=40)
    graph = build_graph(dense, ["mlp", "heads"])
    removed = [g for g in graph.of_kind("heads") if g.index == 0]  # same count per layer -> uniform
    removed += [g for g in graph.of_kind("mlp") if g.index < 8]
    model, dims = build_pruned_model(graph, removed, "uniform")
    assert dims.is_uniform() and dims.layers[0].num_key_value_heads == 1
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return model


def _per_layer_pruned():
    """Per-layer widths: layer 0 loses a KV group, layer 2 loses its whole attention block."""
    dense = tiny_llama(layers=4, seed=1)
    graph = build_graph(dense, ["mlp", "heads", "attn-blocks"])
    heads = [g for g in graph.of_kind("heads") if g.layer == 0 and g.index == 1]
    attn = [g for g in graph.of_kind("attn-blocks") if g.layer == 2]
    mlp = [g for g in graph.of_kind("mlp") if g.layer == 1 and g.index < 5]
    model, dims = build_pruned_model(graph, heads + attn + mlp, "per-layer")
    assert [d.num_key_value_heads for d in dims.layers] == [1, 2, 0, 2]
    return model


def _check_against_pytorch(model, runner: OnnxCausalLM, batch: int = 3, prompt: int = 5, steps: int = 2) -> None:
    """Prefill + greedy decode steps through the ONNX KV cache must give the logits PyTorch computes for the whole
    sequence at once (no cache), i.e. the cache plumbing, masks and positions are all right."""
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g)
    mask = torch.ones_like(ids)
    pos = torch.arange(prompt).expand(batch, prompt)
    logits, past = runner.step(ids.numpy(), mask.numpy(), pos.numpy(), runner.empty_past(batch))
    seq, step_logits = ids, [logits]
    for _ in range(steps):
        nxt = torch.from_numpy(step_logits[-1][:, -1].argmax(-1)).long()[:, None]
        seq = torch.cat([seq, nxt], 1)
        mask = torch.ones_like(seq)
        logits, past = runner.step(nxt.numpy(), mask.numpy(), np.full((batch, 1), seq.shape[1] - 1), past)
        step_logits.append(logits)
    onnx_all = np.concatenate(step_logits, axis=1)
    with torch.no_grad():
        ref = model(input_ids=seq, use_cache=False).logits.numpy()
    assert onnx_all.shape == ref.shape
    assert np.abs(onnx_all - ref).max() < TOL * max(1.0, np.abs(ref).max())
    for name, arr in past.items():  # cache grew by exactly the decoded tokens
        assert arr.shape[2] == prompt + steps, name


def test_uniform_pruned_model_via_cli(tmp_path, capsys):
    src = tmp_path / "pruned"
    model = _uniform_pruned_folder(src)
    out = tmp_path / "onnx_out"
    assert main(["export-onnx", str(src), "--output", str(out), "--backend", BACKENDS[-1]]) == 0
    assert "validated in onnxruntime" in capsys.readouterr().out
    for name in ("onnx/model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    runner = OnnxCausalLM(out)
    inputs, outputs = io_names(3)
    assert runner.input_names == inputs and runner.output_names == outputs
    assert inputs[3:5] == ["past_key_values.0.key", "past_key_values.0.value"] and outputs[1] == "present.0.key"
    assert {tuple(s[1:2] + s[3:]) for s in runner.past_shapes.values()} == {(1, 8)}  # 1 KV head left, head_dim 8
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 1  # stock config: optimum/transformers.js
    assert config["shear_onnx"]["validation"]["passed"] is True
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(out).num_key_value_heads == 1
    assert AutoTokenizer.from_pretrained(out).vocab_size == model.config.vocab_size
    _check_against_pytorch(model, runner)


@pytest.mark.parametrize("backend", ["torch"])
def test_per_layer_with_removed_attention(tmp_path, backend):
    model = _per_layer_pruned()
    result = export_onnx(model, tmp_path / "pl", backend=backend)
    # only the three layers that still have attention get a cache entry, numbered compactly
    assert [(e.index, e.decoder_layer, e.num_key_value_heads) for e in result.past] == [(0, 0, 1), (1, 1, 2), (2, 3, 2)]
    runner = OnnxCausalLM(result.path)
    inputs, outputs = io_names(3)
    assert runner.input_names == inputs and runner.output_names == outputs
    assert runner.past_shapes["past_key_values.0.key"][1] == 1 and runner.past_shapes["past_key_values.2.value"][1] == 2
    config = json.loads((result.path / "config.json").read_text())
    assert [e["decoder_layer"] for e in config["shear_onnx"]["past_key_values"]] == [0, 1, 3]
    assert config["layer_dims"][2]["num_attention_heads"] == 0
    assert (result.path / "configuration_shear.py").is_file()
    _check_against_pytorch(model, runner)
    # the benchmark's onnxruntime loop runs on the ragged cache too
    from shear_hub.evaluation.speed import measure_onnx_speed

    speed = measure_onnx_speed(runner, prompt_len=4, new_tokens=3, batch_size=2, vocab=model.config.vocab_size,
                               repeats=1)
    assert speed["decode_tok_s"] == pytest.approx(2 * 3 / speed["decode_s"]) and speed["runtime"] == "onnxruntime"


def test_refusals(tmp_path, capsys):
    # optimum asked where it cannot run: one-line error, nothing written
    if not optimum_available():
        with pytest.raises(ShearHubError, match="--backend torch"):
            export_onnx(tiny_llama(layers=1), tmp_path / "x", backend="optimum")
        assert not (tmp_path / "x").exists()
    assert main(["export-onnx", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shear-hub: error:") and "\n" not in err and not (tmp_path / "o").exists()
    (tmp_path / "taken").mkdir()
    assert main(["export-onnx", str(tmp_path / "missing"), "--output", str(tmp_path / "taken")]) == 2
    assert "--overwrite" in capsys.readouterr().err


# Every family of the README's architecture table exports (Llama in both layouts above). To keep this fast each other
# family runs in one layout, Phi-3 (fused qkv_proj) in both; export_onnx itself checks a prefill and a cached decode
# step in onnxruntime, and _check_against_pytorch decodes two more tokens past the tiny sliding windows (5).
FAMILY_CASES = [("mistral", "uniform"), ("qwen2", "per-layer"), ("qwen3", "uniform"), ("gemma2", "per-layer"),
                ("gemma3_text", "uniform"), ("phi3", "uniform"), ("phi3", "per-layer")]


def _family_pruned(family: str, layout: str):
    """Three layers. ``uniform``: one KV group and 8 MLP channels gone from every layer; ``per-layer``: layer 0 loses
    a KV group and 5 MLP channels, layer 1 its whole attention block, layer 2 keeps everything."""
    from test_architectures import tiny_model

    model = tiny_model(family, layers=3)
    graph = build_graph(model, ["heads", "mlp", "attn-blocks"])
    if layout == "uniform":
        removed = [g for g in graph.of_kind("heads") if g.index == 0]
        removed += [g for g in graph.of_kind("mlp") if g.index < 8]
    else:
        removed = [g for g in graph.of_kind("heads") if g.layer == 0 and g.index == 0]
        removed += [g for g in graph.of_kind("mlp") if g.layer == 0 and g.index < 5]
        removed += [g for g in graph.of_kind("attn-blocks") if g.layer == 1]
    return build_pruned_model(graph, removed, layout)[0]


@pytest.mark.parametrize("family,layout", FAMILY_CASES)
def test_every_family_exports(tmp_path, family, layout):
    model = _family_pruned(family, layout)
    result = export_onnx(model, tmp_path / "out", backend="torch")
    assert result.validation["passed"] is True
    entries = [(e.index, e.decoder_layer, e.num_key_value_heads, e.head_dim) for e in result.past]
    if layout == "uniform":
        assert entries == [(i, i, 1, 8) for i in range(3)]
    else:  # ragged cache: one KV head, then none (removed block, no graph input), then two
        assert entries == [(0, 0, 1, 8), (1, 2, 2, 8)]
    config = json.loads((result.path / "config.json").read_text())
    assert config["model_type"] == (family if layout == "uniform" else f"shear_{family}")
    _check_against_pytorch(model, OnnxCausalLM(result.path))


def test_opt_refused_up_front(tmp_path, capsys):
    from test_architectures import tiny_model

    with pytest.raises(ShearHubError, match="does not support OPTForCausalLM") as err:
        export_onnx(tiny_model("opt"), tmp_path / "x", backend="torch")
    assert "\n" not in str(err.value) and not (tmp_path / "x").exists()
    src = tmp_path / "opt"
    tiny_model("opt").save_pretrained(src)
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["export-onnx", str(src), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the loader's progress bar
    assert err.startswith("shear-hub: error:") and "does not support OPTForCausalLM" in err
    assert not (tmp_path / "o").exists()
