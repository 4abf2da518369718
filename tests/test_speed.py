"""measure_speed: the timed loop is one prefill then single-token decode steps through the cache, for dense and
per-layer models; throughput figures follow from the timings; bad settings are refused."""

from __future__ import annotations

import pytest
import torch
from model_factory import tiny_llama

from shear_hub.errors import ShearHubError
from shear_hub.evaluation.speed import count_params, measure_speed
from shear_hub.structures import build_graph
from shear_hub.surgery import build_pruned_model


def _per_layer():
    dense = tiny_llama(layers=3)
    graph = build_graph(dense, ["heads", "attn-blocks"])
    removed = [g for g in graph.of_kind("attn-blocks") if g.layer == 1] + graph.of_kind("heads")[:1]
    return build_pruned_model(graph, removed, "per-layer")[0]


def _record_calls(model):
    calls: list[tuple[tuple[int, ...], int]] = []

    def hook(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.24 / earlier
        calls.append((tuple(kwargs["input_ids"].shape), cache.get_seq_length()))

    return calls, model.model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("which", ["dense", "per-layer"])
def test_eager_loop_prefills_once_then_decodes_through_the_cache(which):
    model = tiny_llama(layers=3) if which == "dense" else _per_layer()
    calls, handle = _record_calls(model)
    r = measure_speed(model, None, prompt_len=6, new_tokens=3, batch_size=2, device="cpu", repeats=2, warmup=1)
    handle.remove()
    one_run = [((2, 6), 0), ((2, 1), 6), ((2, 1), 7), ((2, 1), 8)]
    assert calls == one_run * 3  # warm-up + 2 timed runs, each a fresh cache growing one token per step
    assert r["prefill_tok_s"] == pytest.approx(2 * 6 / r["prefill_s"])
    assert r["decode_tok_s"] == pytest.approx(2 * 3 / r["decode_s"])
    assert r["params"] == count_params(model) and r["mode"] == "eager"


def test_count_params_counts_tied_weights_once():
    tied, untied = tiny_llama(tied=True), tiny_llama(tied=False)
    assert count_params(untied) - count_params(tied) == untied.lm_head.weight.numel()


def test_refusals():
    model = tiny_llama(layers=1)
    with pytest.raises(ShearHubError, match="static-compile"):
        measure_speed(model, None, prompt_len=4, new_tokens=2, batch_size=1, device="cpu", mode="fast")
    with pytest.raises(ShearHubError, match=">= 1"):
        measure_speed(model, None, prompt_len=0, new_tokens=2, batch_size=1, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ShearHubError, match="--device cpu"):
            measure_speed(model, None, prompt_len=4, new_tokens=2, batch_size=1, device="cuda")


@pytest.mark.slow
def test_static_compile_per_layer():
    """Static cache + torch.compile also runs the per-layer model (compiling takes about a minute on 2 cores)."""
    r = measure_speed(_per_layer(), None, prompt_len=4, new_tokens=2, batch_size=1, device="cpu",
                      mode="static-compile", repeats=1)
    assert r["decode_tok_s"] > 0 and r["mode"] == "static-compile"
