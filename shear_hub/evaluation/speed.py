"""Prefill and decode throughput of a causal LM, in PyTorch (eager, or static cache + torch.compile) and onnxruntime.

Decode is timed with a plain greedy loop over the model's forward (no ``generate`` bookkeeping), so that at batch 1
the number reflects the weights read per token rather than Python overhead as far as the runtime allows. Inputs are
random token ids: throughput does not depend on the text, and the same ids go to every model compared.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ..compat import cache_keyword
from ..errors import ShearHubError
from ..structures.graph import count_params

MODES = ("eager", "static-compile")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _prompt(vocab: int, batch_size: int, prompt_len: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch_size, prompt_len), generator=g)


def measure_speed(model, tokenizer=None, *, prompt_len: int, new_tokens: int, batch_size: int = 1,
                  device: str = "cpu", mode: str = "eager", repeats: int = 3, warmup: int = 1) -> dict:
    """Median prefill and decode throughput (tokens/s over the whole batch) of ``model`` on ``device``.

    ``mode="static-compile"`` uses a StaticCache and ``torch.compile`` (CUDA: mode "reduce-overhead", i.e. CUDA
    graphs); compilation happens in the warm-up runs and is not timed. ``tokenizer`` is accepted for the eval command's
    convenience and only supplies the vocabulary size when given.
    """
    from transformers import DynamicCache, StaticCache

    if mode not in MODES:
        raise ShearHubError(f"unknown speed mode {mode!r}; use one of {', '.join(MODES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ShearHubError("--device cuda asked but no CUDA GPU is visible; use --device cpu")
    if prompt_len < 1 or new_tokens < 1 or batch_size < 1:
        raise ShearHubError("prompt_len, new_tokens and batch_size must be >= 1")
    model = model.to(device).eval()
    vocab = len(tokenizer) if tokenizer is not None else model.config.vocab_size
    vocab = min(vocab, model.config.vocab_size)
    ids = _prompt(vocab, batch_size, prompt_len).to(device)
    total = prompt_len + new_tokens
    forward = model.forward
    cache_kw = cache_keyword(model)
    if mode == "static-compile":
        compile_mode = "reduce-overhead" if device.startswith("cuda") else None
        forward = torch.compile(model.forward, mode=compile_mode, fullgraph=False, dynamic=False)

    def one_run() -> tuple[float, float]:
        if mode == "static-compile":
            cache = StaticCache(config=model.config, max_cache_len=total)
        else:
            cache = DynamicCache()
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            # prefill through the same forward so compile specializes once per shape
            pos = torch.arange(prompt_len, device=device)
            out = forward(input_ids=ids, **{cache_kw: cache}, use_cache=True, cache_position=pos,
                          position_ids=pos[None].expand(batch_size, -1))
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            _sync(device)
            t1 = time.perf_counter()
            for step in range(new_tokens):
                pos = torch.tensor([prompt_len + step], device=device)
                out = forward(input_ids=nxt, **{cache_kw: cache}, use_cache=True, cache_position=pos,
                              position_ids=pos[None].expand(batch_size, -1))
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            _sync(device)
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    for _ in range(warmup + (2 if mode == "static-compile" else 0)):
        one_run()
    runs = [one_run() for _ in range(repeats)]
    prefill_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    return {
        "runtime": "pytorch", "mode": mode, "device": device, "dtype": str(next(model.parameters()).dtype)[6:],
        "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats,
        "params": count_params(model), "threads": torch.get_num_threads(),
        "prefill_s": prefill_s, "decode_s": decode_s,
        "prefill_tok_s": batch_size * prompt_len / prefill_s,
        "decode_tok_s": batch_size * new_tokens / decode_s,
        "decode_ms_per_step": 1000 * decode_s / new_tokens,
    }


def measure_onnx_speed(runner, *, prompt_len: int, new_tokens: int, batch_size: int = 1, vocab: int | None = None,
                       repeats: int = 3, warmup: int = 1) -> dict:
    """The same measurement for an exported folder run by ``shear_hub.onnx.OnnxCausalLM``."""
    vocab = vocab or 100
    ids = _prompt(vocab, batch_size, prompt_len).numpy()

    def one_run() -> tuple[float, float]:
        t0 = time.perf_counter()
        mask = np.ones((batch_size, prompt_len), dtype=np.int64)
        pos = np.broadcast_to(np.arange(prompt_len), (batch_size, prompt_len))
        logits, past = runner.step(ids, mask, pos, runner.empty_past(batch_size))
        nxt = logits[:, -1].argmax(-1)[:, None]
        t1 = time.perf_counter()
        for step in range(new_tokens):
            mask = np.ones((batch_size, prompt_len + step + 1), dtype=np.int64)
            pos = np.full((batch_size, 1), prompt_len + step, dtype=np.int64)
            logits, past = runner.step(nxt, mask, pos, past)
            nxt = logits[:, -1].argmax(-1)[:, None]
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    for _ in range(warmup):
        one_run()
    runs = [one_run() for _ in range(repeats)]
    prefill_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    return {
        "runtime": "onnxruntime", "mode": "ort", "device": ",".join(runner.session.get_providers()[:1]),
        "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats,
        "prefill_s": prefill_s, "decode_s": decode_s,
        "prefill_tok_s": batch_size * prompt_len / prefill_s,
        "decode_tok_s": batch_size * new_tokens / decode_s,
        "decode_ms_per_step": 1000 * decode_s / new_tokens,
    }
