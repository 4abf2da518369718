"""``mode=unstructured`` and ``mode=2:4``: single weights are masked with the same curvature and OBS updates as
structured mode; the model keeps its shapes (zeros inside) and no groups are removed. ``--layout uniform`` (the
default) masks the same share of every matrix, as SparseGPT and Wanda do; ``per-layer`` pools the K-FAC costs of all
matrices under one threshold (the paper's global allocation: at 50% on SmolLM2 it emptied whole query projections
and was far worse, benchmarks/README.md)."""

from __future__ import annotations

import math
from functools import partial

import torch

from ...errors import ShearHubError
from . import obs
from .curvature import Factors
from .shots import run_shot
from .state import SurgeonRun


def select_masks(run: SurgeonRun) -> None:
    """The shots of the mask modes; the masked weights are zero in ``ctx.model`` afterwards."""
    ctx, cfg = run.ctx, run.config
    masks = {n: torch.zeros(run.params[n].shape, dtype=torch.bool) for n in run.linears}
    total = sum(m.numel() for m in masks.values())
    frac = 0.5 if cfg.mode == "2:4" else ctx.params_to_remove / ctx.params_before
    if cfg.mode == "2:4" and any(m.shape[1] % 4 for m in masks.values()):
        raise ShearHubError("2:4 needs every projection's input size divisible by 4; use --option mode=unstructured")
    run.extras = False
    T = cfg.shots
    adaptive = cfg.select == "adaptive" and cfg.solver == "sequential" and cfg.update
    for t in range(1, T + 1):
        stored: dict[str, torch.Tensor] = {}  # weight costs of this shot, by weight name
        counts: dict[str, int] = {}  # adaptive unstructured: how many weights each matrix holds masked after the shot
        goal = int(round(frac * total * t / T))
        if cfg.mode == "unstructured":
            decide = partial(_decide_unstructured, counts=counts if adaptive else None,
                             per_matrix=ctx.layout == "uniform")
            select = partial(_rate_selector, counts) if adaptive else None
        else:  # the last shot completes every block; adaptive: inside the weight update's pass
            decide = partial(_decide_two_four, last=t == T) if not (adaptive and t == T) else _decide_nothing
            select = (lambda name, W, Gi: obs.TwoFourSelector()) if adaptive and t == T else None
        run_shot(run, partial(_score, run, stored), partial(decide, masks, stored, goal),
                 partial(_update, run, masks, select))
        run.shot_log[-1].update({"shot": t, "masked": sum(int(m.sum()) for m in masks.values())})
    with torch.no_grad():
        for n, m in masks.items():
            run.params[n].masked_fill_(m.to(run.params[n].device), 0)
    masked = sum(int(m.sum()) for m in masks.values())
    ctx.report["mask_sparsity"] = round(masked / total, 6)
    ctx.report["masked_weights"] = masked
    ctx.report["note"] = (f"{cfg.mode} sparsity is a mask of zeros inside dense matrices: the saved model has the "
                          "same shapes and size as the original; achieved_sparsity counts removed structures only")
    run.report()


def _inverses(run: SurgeonRun, name: str, f: Factors):
    """Damped inverses of A and G (None: G = I) of weight ``name``."""
    cfg = run.config
    Ai = obs.damped_inverse(f.A[name], cfg.damp_a)
    Gi = obs.damped_inverse(f.G[name], cfg.damp_g) if name in f.G else None
    return Ai, Gi


def _score(run: SurgeonRun, stored: dict[str, torch.Tensor], names, f: Factors) -> None:
    for name in names:
        W = run.params[name].detach().to(f.A[name].device, torch.float32)
        Ai, Gi = _inverses(run, name, f)
        stored[name] = obs.weight_costs(W, Gi, Ai).cpu()


def _decide_unstructured(masks: dict[str, torch.Tensor], stored: dict[str, torch.Tensor], goal: int, *,
                         counts: dict[str, int] | None = None, per_matrix: bool = False) -> None:
    """Mask the cheapest weights until ``goal`` weights are masked: over all matrices (global allocation), or in
    every matrix the same share (``per_matrix``, the uniform layout); with ``counts``, only how many each matrix
    should hold masked (the update's pass then chooses which)."""
    total = sum(m.numel() for m in masks.values())
    if not per_matrix:
        thr = _kth([c[~masks[n]] for n, c in stored.items()], goal - sum(int(m.sum()) for m in masks.values()))
    for n, c in stored.items():
        want = int(round(goal * c.numel() / total))
        if per_matrix and counts is not None:
            counts[n] = max(want, int(masks[n].sum()))
            continue
        if per_matrix:
            thr = _kth([c[~masks[n]]], want - int(masks[n].sum()))
        if counts is None:
            masks[n] |= c <= thr
        else:
            counts[n] = int(masks[n].sum()) + int(((c <= thr) & ~masks[n]).sum())


def _decide_nothing(masks, stored, goal) -> None:
    """Adaptive 2:4, last shot: the update's pass chooses every remaining pair."""


def _rate_selector(counts: dict[str, int], name: str, W: torch.Tensor, Gi: torch.Tensor | None) -> obs.RateSelector:
    """SparseGPT's in-pass choice at this matrix's share of the global decision, errors scaled by 1 / [G^-1]_rr."""
    return obs.RateSelector(rate=counts[name] / W.numel(), row_scale=None if Gi is None else 1 / Gi.diagonal())


def _decide_two_four(masks: dict[str, torch.Tensor], stored: dict[str, torch.Tensor], goal: int, *,
                     last: bool) -> None:
    """Mask the cheapest pair of every chosen block of 4 inputs until ``goal`` weights are masked (blocks already
    masked stay as they are); the ``last`` shot makes every block 2:4."""
    blocks = {}
    for n, c in stored.items():
        pick, bc = obs.two_four_blocks(c)
        done = masks[n].reshape(c.shape[0], -1, 4).any(-1)
        bc[done] = -math.inf
        blocks[n] = (pick, bc)
    thr = _kth([bc.flatten() for _, bc in blocks.values()], goal // 2)
    for n, (pick, bc) in blocks.items():
        done = masks[n].reshape(pick.shape[0], -1, 4).any(-1)
        fresh = ((bc <= thr) | last) & ~done
        masks[n] |= fresh.repeat_interleave(4, dim=1) & pick


def _update(run: SurgeonRun, masks: dict[str, torch.Tensor], select, names, f: Factors) -> dict[str, torch.Tensor]:
    """New weights of ``names``; ``select(name, W, Gi)`` (adaptive) makes the sequential pass choose the mask, which
    is written back to ``masks``."""
    cfg = run.config
    out = {}
    for name in run.each(names):  # solver=joint takes minutes per matrix on CPU: one tick each
        dev = f.A[name].device
        W = run.params[name].detach().to(dev, torch.float32)
        Ai, Gi = _inverses(run, name, f)
        mask = masks[name].to(dev)
        if not cfg.update:
            out[name] = W.masked_fill(mask, 0)
        elif cfg.solver == "joint":
            out[name] = obs.remove_weights(W, Gi, Ai, mask, cfg.solve_chunk)
        else:
            spread = Gi if cfg.spread else None
            out[name], removed = obs.remove_weights_sequential(
                W, spread, Ai, mask, select=None if select is None else select(name, W, Gi))
            masks[name] = removed.cpu()
    return out


def _kth(parts: list[torch.Tensor], k: int) -> float:
    """The k-th smallest value over several tensors (exact below 5e7 values, else from a 2e7 random sample)."""
    if k <= 0:
        return -math.inf
    total = sum(p.numel() for p in parts)
    if total <= 5e7:
        flat = torch.cat([p.flatten().float() for p in parts])
        return float(flat.kthvalue(min(k, flat.numel())).values)
    rate = 2e7 / total
    gen = torch.Generator().manual_seed(0)
    sample = torch.cat([p.flatten()[torch.rand(p.numel(), generator=gen) < rate].float() for p in parts])
    return float(sample.kthvalue(max(1, min(int(k * sample.numel() / total), sample.numel()))).values)
