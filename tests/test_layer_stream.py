"""shear_hub/layer_stream.py: layer-by-layer passes must reproduce the model's own forward and backward exactly, for
every family (per-layer masks and position embeddings: Gemma 2/3 sliding vs full layers, Qwen2's sliding layers)."""

import pytest
import torch

from shear_hub.layer_stream import LayerStream, capture_layer_inputs
from shear_hub.methods.surgeon.curvature import LayerwiseRunner
from test_architectures import tiny_model

FAMILIES = ["gemma3_text", "gemma2", "qwen2", "mistral", "phi3", "qwen3"]


def _batches(model) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 24), generator=gen)  # longer than the sliding windows (5)
    return [ids[:2], ids[2:]]


def _final_norm_inputs(model, batches) -> list[torch.Tensor]:
    got = []
    norm = model.model.norm
    hook = norm.register_forward_pre_hook(lambda mod, args: got.append(args[0].detach()))
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
    finally:
        hook.remove()
    return got


@pytest.mark.parametrize("family", FAMILIES)
def test_layerwise_runner_reproduces_the_forward(family):
    """The surgeon's layerwise runner (curvature=layerwise) gives each layer its own arguments: pushing the inputs
    through every layer gives the model's own last hidden states. Before, layer 0's mask and position embeddings
    were reused for all layers (Gemma 3's full-attention layers got the sliding ones: max difference 10.3)."""
    model = tiny_model(family).eval()
    batches = _batches(model)
    expected = _final_norm_inputs(model, batches)
    runner = LayerwiseRunner(model, model.model.layers, batches, torch.device("cpu"))
    for i in range(len(model.model.layers)):
        runner.run(i, advance=True)
    for got, want in zip(runner.inputs, expected):
        assert torch.equal(got, want), (family, float((got - want).abs().max()))


def test_capture_records_each_layer_type():
    model = tiny_model("gemma3_text").eval()
    _, calls = capture_layer_inputs(model, model.model.layers, _batches(model))
    types = model.config.layer_types
    sliding, full = types.index("sliding_attention"), types.index("full_attention")
    cos_sliding = calls[sliding][0][1]["position_embeddings"][0]
    cos_full = calls[full][0][1]["position_embeddings"][0]
    assert not torch.equal(cos_sliding, cos_full)  # local vs global rotary base


@pytest.mark.parametrize("family", ["gemma3_text", "qwen2"])
def test_streamed_backward_gives_the_full_gradients(family, tmp_path):
    """Parameter gradients from the layer-by-layer backward equal those of one backward through the whole model
    (same loss: the model's own, with Gemma's final logit soft-capping)."""
    model = tiny_model(family).eval()
    batches = _batches(model)
    layers = model.model.layers
    n = len(batches)

    def loss_fn(logits, ids):
        return model.loss_function(logits=logits, labels=ids, vocab_size=logits.shape[-1]) / n

    for ids in batches:
        (model(input_ids=ids, labels=ids, use_cache=False).loss / n).backward()
    expected = {name: p.grad.clone() for name, p in layers.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    layers.requires_grad_(True)
    stream = LayerStream(model, layers, batches, tmp_path)
    stream.forward()
    stream.backward(loss_fn)
    got = {name: p.grad for name, p in layers.named_parameters()}
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-7), (name, (got[name] - expected[name]).abs().max())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"in{i}.safetensors" for i in sorted(range(len(layers)), key=str)]
