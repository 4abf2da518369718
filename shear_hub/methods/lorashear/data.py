"""Training streams and held-out windows for LoRAShear's stages 2-4.

Training samples fresh random windows from a token stream (like ``shear-hub recover``) instead of cycling over a
few fixed calibration windows, which the model memorises within a couple of passes. The held-out windows (knowledge
analysis, stage-4 deviation) are whole chunks spread evenly over the text and cut out of the training stream, so
no training window overlaps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenSource:
    train: torch.Tensor  # 1-D token stream that training windows are sampled from
    held: torch.Tensor  # [n, seq_len] held-out windows, disjoint from ``train``

    def sample(self, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """``batch_size`` windows at random offsets of the training stream."""
        seq_len = min(seq_len, self.train.numel())
        starts = torch.randint(0, self.train.numel() - seq_len + 1, (batch_size,), generator=generator)
        return torch.stack([self.train[s : s + seq_len] for s in starts.tolist()])


def split_stream(tokens: torch.Tensor, seq_len: int, n_held: int) -> TokenSource:
    """Cut ``n_held`` chunks of ``seq_len`` tokens, evenly spread, out of ``tokens`` as held-out windows; the rest
    (joined) is the training stream. Keeps at least two chunks for training."""
    n = tokens.numel() // seq_len
    n_held = max(0, min(n_held, n - 2))
    chunks = tokens[: n * seq_len].view(n, seq_len)
    held_idx = torch.linspace(0, n - 1, n_held + 2)[1:-1].round().long() if n_held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(n, dtype=torch.bool)
    keep[held_idx] = False
    train = torch.cat([chunks[keep].flatten(), tokens[n * seq_len :]])
    return TokenSource(train=train, held=chunks[held_idx])


def from_windows(windows: torch.Tensor, n_held: int) -> TokenSource:
    """Fallback when only fixed windows exist: the last ``n_held`` are held out, the others joined."""
    n_held = max(1, min(n_held, len(windows) - 1))
    return TokenSource(train=windows[:-n_held].flatten(), held=windows[-n_held:])
