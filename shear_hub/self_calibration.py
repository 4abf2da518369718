"""``--calib self``: calibration text sampled from the dense model itself (Williams, Chrysostomou and Aletras,
"Self-calibration for Language Model Quantization and Pruning", NAACL 2025), for users without text of their own.

Each sample starts from the beginning-of-sequence token and is drawn with nucleus sampling (top-p 0.95) under a
temperature that falls linearly over the sequence, from ``start`` (diverse openings) to ``end`` (fluent
continuations). The samples are decoded and joined like paragraphs of a text file, so the rest of the pipeline
(calibration windows, the held-out slice) treats them as any other text. Deterministic for a seed.
"""

from __future__ import annotations

import torch

from .errors import ShearHubError
from .layer_stream import input_device

SPEC = "self"
START_TEMPERATURE = 1.5
END_TEMPERATURE = 0.8
TOP_P = 0.95


def is_self(spec: str | None) -> bool:
    return str(spec or "").split(":", 1)[0] == SPEC


def _temperatures(spec: str) -> tuple[float, float]:
    """``self`` or ``self:START-END`` (e.g. ``self:1.0-1.0`` for plain sampling at temperature 1)."""
    if spec == SPEC:
        return START_TEMPERATURE, END_TEMPERATURE
    try:
        start, end = (float(x) for x in spec.split(":", 1)[1].split("-"))
    except ValueError:
        raise ShearHubError(f"--calib {spec}: give self or self:START-END temperatures, e.g. self:1.5-0.8") from None
    if start <= 0 or end <= 0:
        raise ShearHubError(f"--calib {spec}: temperatures must be > 0, e.g. self:1.5-0.8")
    return start, end


def check_self_spec(spec: str | None) -> None:
    """Refuse a malformed ``self:...`` spec (one line, before anything loads)."""
    if is_self(spec):
        _temperatures(str(spec))


class _TemperatureSchedule:
    """A logits processor (transformers' ``LogitsProcessor`` protocol): divide by a temperature that moves linearly
    from ``start`` at the first generated token to ``end`` at the last."""

    def __init__(self, start: float, end: float, prompt_len: int, new_tokens: int):
        self.start, self.end, self.prompt_len, self.new_tokens = start, end, prompt_len, max(new_tokens - 1, 1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        t = self.start + (self.end - self.start) * min(step / self.new_tokens, 1.0)
        return scores / t


def self_calibration_text(model, tokenizer, spec: str, *, samples: int, seq_len: int, seed: int,
                          batch_size: int = 8) -> str:
    """``samples`` sequences of ``seq_len`` new tokens sampled from ``model``, decoded and joined by blank lines."""
    from transformers import GenerationConfig, LogitsProcessorList, TopPLogitsWarper

    start, end = _temperatures(spec)
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if first is None:
        raise ShearHubError("--calib self needs a tokenizer with a beginning- or end-of-sequence token; give a text")
    device = input_device(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    texts: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for done in range(0, samples, batch_size):
            n = min(batch_size, samples - done)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # generate() samples globally
            prompt = torch.full((n, 1), first, dtype=torch.long, device=device)
            processors = LogitsProcessorList([_TemperatureSchedule(start, end, 1, seq_len), TopPLogitsWarper(TOP_P)])
            # a fresh generation config: none of the checkpoint's own sampling defaults (top-k, penalties) apply, and
            # temperature comes before top-p (transformers appends custom processors after its own warpers)
            config = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=seq_len,
                                      min_new_tokens=seq_len, pad_token_id=first, eos_token_id=None)
            with torch.no_grad():
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config,
                                     logits_processor=processors)
            texts.extend(tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return "\n\n".join(t.strip() for t in texts if t.strip())
