"""The cross-domain perplexity protocol: the same windows as ``perplexity`` on each of several held-out English texts
from domains other than the calibration text (Python documentation), and their geometric mean.

The texts ship in ``shear_hub/resources/eval/`` (sources and licenses in ``shear_hub/resources/NOTICE.md``; rebuilt by
``benchmarks/make_domain_texts.py``). A model that only got better on the calibration domain shows it here.
"""

from __future__ import annotations

import math
from importlib import resources

import torch

from ..data import sequential_windows, tokenize_text
from ..errors import ShearHubError

#: domain name -> file in shear_hub/resources/eval/ (order = report order)
DOMAINS: dict[str, str] = {
    "fiction": "fiction_austen_persuasion.txt",
    "drama": "drama_shakespeare_comedies.txt",
    "encyclopedia": "encyclopedia_factbook_backgrounds.txt",
    "manual": "manual_debian_handbook.txt",
}
PROTOCOL = "domains"


def domain_text(name: str) -> str:
    if name not in DOMAINS:
        raise ShearHubError(f"unknown evaluation domain {name!r}; choose from {', '.join(DOMAINS)}")
    return resources.files("shear_hub.resources").joinpath("eval", DOMAINS[name]).read_text(encoding="utf-8")


def domain_texts(names: list[str] | None = None) -> dict[str, str]:
    """The protocol's texts, ``{domain: text}`` (all domains by default)."""
    return {name: domain_text(name) for name in (names or DOMAINS)}


def geometric_mean(values) -> float:
    values = [float(v) for v in values]
    if not values or any(not v > 0 or math.isinf(v) for v in values):
        raise ValueError(f"geometric mean needs positive finite values, got {values}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _leading_tokens(tokenizer, text: str, windows: int | None, seq_len: int) -> torch.Tensor:
    """The token stream of ``text``, or of a prefix long enough for ``windows`` windows: a tokenizer that splits
    text into words before merging (byte-level BPE, SentencePiece) gives a prefix cut between paragraphs the same
    leading tokens as the whole text (and a margin keeps the cut itself out of the windows). Saves tokenizing
    ~200 kB per domain when few windows are read."""
    if windows is not None:
        need = windows * seq_len
        prefix = text[: need * 8 + 4096]
        prefix = prefix[: prefix.rfind("\n\n") + 1 or None]  # cut between paragraphs
        if len(prefix) < len(text):
            tokens = tokenize_text(tokenizer, prefix)
            if tokens.numel() >= need + 64:
                return tokens[:need]
    return tokenize_text(tokenizer, text)


def domain_perplexity(model, tokenizer, *, seq_len: int = 512, windows: int | None = 48, batch_size: int = 4,
                      domains: list[str] | None = None, progress: bool = False) -> dict:
    """Perplexity (``shear_hub.evaluation.perplexity``, same windows) on each domain text, and their geometric mean.

    Returns ``{"seq_len", "windows", "texts": {domain: {"data", "windows", "value"}}, "geometric_mean"}``; a text
    shorter than ``windows`` windows uses what it has, and its own entry says how many.
    """
    from .perplexity import perplexity

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and seq_len > limit:
        raise ShearHubError(f"--seq-len {seq_len} is longer than the model's {limit} positions; use --seq-len {limit} "
                            "or less")
    texts: dict[str, dict] = {}
    exact: list[float] = []
    for name, text in domain_texts(domains).items():
        tokens = _leading_tokens(tokenizer, text, windows, seq_len)
        ppl = perplexity(model, tokenizer, tokens=tokens, seq_len=seq_len, windows=windows, batch_size=batch_size,
                         progress=progress)
        used = len(sequential_windows(tokens, windows, seq_len))
        texts[name] = {"data": DOMAINS[name].removesuffix(".txt"), "windows": used, "value": round(ppl, 4)}
        exact.append(ppl)
    return {"seq_len": seq_len, "windows": windows, "texts": texts, "geometric_mean": round(geometric_mean(exact), 4)}
