"""Perplexity over consecutive windows of a text (the protocol every number in benchmarks/ uses)."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..data import load_text, sequential_windows, tokenize_text


@torch.no_grad()
def perplexity(model, tokenizer, data: str | None = None, *, seq_len: int = 512, windows: int | None = 48,
               batch_size: int = 4, text: str | None = None, progress: bool = False,
               tokens: torch.Tensor | None = None) -> float:
    """exp(mean next-token NLL) over ``windows`` consecutive ``seq_len``-token windows of ``data`` (or of ``text``, or
    of the already tokenized stream ``tokens``)."""
    if tokens is None:
        tokens = tokenize_text(tokenizer, text if text is not None else load_text(data))
    batches = sequential_windows(tokens, windows, seq_len)
    with tqdm(total=len(batches), desc="perplexity", disable=not progress) as bar:
        return windows_perplexity(model, batches, batch_size=batch_size, bar=bar)


@torch.no_grad()
def windows_perplexity(model, batches: torch.Tensor, *, batch_size: int = 4, bar=None) -> float:
    """exp(mean next-token NLL) over the token windows ``batches`` [n, seq_len]; ``bar`` (tqdm) advances per window."""
    from ..layer_stream import input_device

    device = input_device(model)  # the CPU for a model dispatched with disk offload (--max-memory)
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    for start in range(0, len(batches), batch_size):
        ids = batches[start : start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += ids[:, 1:].numel()
        if bar is not None:
            bar.update(len(ids))
    model.train(was_training)
    return math.exp(total_nll / total_tokens)
