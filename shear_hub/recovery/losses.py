"""Losses of a recovery step: next-token cross entropy and distillation from the dense teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy (the same quantity perplexity exponentiates)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token on temperature-softened logits, times T^2 (Hinton et al.) so that the
    gradient scale does not depend on the temperature. Averaged over tokens."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (p.exp() * (p - s)).sum(-1)
    return kl.mean() * t * t


def mixed_loss(student_logits, ids, teacher_logits=None, *, alpha: float = 0.5, temperature: float = 1.0):
    """(total, lm, kd): alpha * LM + (1 - alpha) * KD when a teacher is given, else LM alone."""
    lm = lm_loss(student_logits, ids)
    if teacher_logits is None:
        return lm, lm, None
    kd = kd_loss(student_logits, teacher_logits, temperature)
    return alpha * lm + (1.0 - alpha) * kd, lm, kd
