"""Optimal-brain-surgeon algebra under a Kronecker-factored curvature F ~ G (x) A of one weight W (out x in).

Everything here is pure tensor math in fp32 (callers pass fp32 tensors); ``G is None`` means G = I (layerwise mode).
Costs are the second-order increase of the loss, 1/2 dw^T F dw, at the optimal compensating update.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch


def _chol_inverse(L: torch.Tensor) -> torch.Tensor:
    """(L L^T)^-1 from the Cholesky factor; a triangular solve is several times faster than cholesky_inverse on CPU."""
    Li = torch.linalg.solve_triangular(L, torch.eye(L.shape[0], device=L.device, dtype=L.dtype), upper=False)
    return Li.T @ Li


def _damped_cholesky(M: torch.Tensor, damp: float) -> torch.Tensor:
    """Lower Cholesky factor of M + damp * mean(diag M) * I; the damping grows until the factor is positive definite."""
    n = M.shape[0]
    eye = torch.eye(n, device=M.device, dtype=M.dtype)
    scale = M.diagonal().mean().clamp_min(1e-12)
    lam = max(damp, 1e-8)
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(M + lam * scale * eye)
        if int(info) == 0:
            return L
        lam *= 10
    raise RuntimeError("curvature factor is not positive definite even with strong damping")


def damped_inverse(M: torch.Tensor, damp: float) -> torch.Tensor:
    """(M + damp * mean(diag M) * I)^-1 via Cholesky; the damping grows until the factor is positive definite."""
    return _chol_inverse(_damped_cholesky(M, damp))


def spd_inverse(M: torch.Tensor) -> torch.Tensor:
    """Inverse of an already damped factor; adds jitter only if rounding broke positive definiteness."""
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) == 0:
        return _chol_inverse(L)
    return damped_inverse(M, 1e-4)


def damped(M: torch.Tensor, damp: float) -> torch.Tensor:
    return M + damp * M.diagonal().mean().clamp_min(1e-12) * torch.eye(M.shape[0], device=M.device, dtype=M.dtype)


def row_costs(W: torch.Tensor, A: torch.Tensor, Gi: torch.Tensor | None) -> torch.Tensor:
    """Cost of removing row r alone: W_r A W_r^T / (2 [G^-1]_rr)."""
    num = ((W @ A) * W).sum(1)
    return num / (2 * (Gi.diagonal() if Gi is not None else 1.0))


def col_costs(W: torch.Tensor, G: torch.Tensor | None, Ai: torch.Tensor) -> torch.Tensor:
    """Cost of removing column c alone: W_c^T G W_c / (2 [A^-1]_cc)."""
    GW = G @ W if G is not None else W
    return (GW * W).sum(0) / (2 * Ai.diagonal())


def rows_cost(W: torch.Tensor, A: torch.Tensor, Gi: torch.Tensor | None, rows: torch.Tensor) -> float:
    """Joint cost of removing rows R together: 1/2 tr(([G^-1]_RR)^-1 W_R A W_R^T)."""
    WR = W[rows]
    S = WR @ A @ WR.T
    if Gi is None:
        return 0.5 * float(S.trace())
    return 0.5 * float(torch.linalg.solve(Gi[rows][:, rows], S).trace())


def cols_cost(W: torch.Tensor, G: torch.Tensor | None, Ai: torch.Tensor, cols: torch.Tensor) -> float:
    """Joint cost of removing columns C together: 1/2 tr(([A^-1]_CC)^-1 W_C^T G W_C)."""
    WC = W[:, cols]
    S = WC.T @ (G @ WC if G is not None else WC)
    return 0.5 * float(torch.linalg.solve(Ai[cols][:, cols], S).trace())


def whole_cost(W: torch.Tensor, A: torch.Tensor, G: torch.Tensor | None) -> float:
    """Removing the entire matrix (no compensation possible): 1/2 tr(G W A W^T)."""
    GW = G @ W if G is not None else W
    return 0.5 * float((GW * (W @ A)).sum())


def remove_rows(W: torch.Tensor, Gi: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """W after removing rows R jointly: W - G^-1[:, R] ([G^-1]_RR)^-1 W_R, removed rows exactly zero."""
    if len(rows) == 0:
        return W
    if Gi is not None:
        W = W - Gi[:, rows] @ torch.linalg.solve(Gi[rows][:, rows], W[rows])
    else:
        W = W.clone()
    W[rows] = 0
    return W


def remove_cols(W: torch.Tensor, Ai: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """W after removing columns C jointly: W - W_C ([A^-1]_CC)^-1 A^-1[C, :], removed columns exactly zero."""
    if len(cols) == 0:
        return W
    W = W - W[:, cols] @ torch.linalg.solve(Ai[cols][:, cols], Ai[cols])
    W[:, cols] = 0
    return W


def weight_costs(W: torch.Tensor, Gi: torch.Tensor | None, Ai: torch.Tensor) -> torch.Tensor:
    """Cost of removing each weight alone: W_ij^2 / (2 [G^-1]_ii [A^-1]_jj)."""
    gd = Gi.diagonal()[:, None] if Gi is not None else 1.0
    return W * W / (2 * gd * Ai.diagonal()[None, :])


def two_four_blocks(costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each block of 4 consecutive inputs of a row: the mask of its 2 cheapest weights and their summed cost."""
    out, inp = costs.shape
    blocks = costs.reshape(out, inp // 4, 4)
    order = blocks.argsort(dim=-1)[..., :2]
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, order, True)
    return mask.reshape(out, inp), (blocks * mask).sum(-1)


def remove_weights(W: torch.Tensor, Gi: torch.Tensor | None, Ai: torch.Tensor, mask: torch.Tensor,
                   chunk: int = 64) -> torch.Tensor:
    """W after removing the weights in ``mask`` (True = remove) with the Kronecker OBS update dW = -G^-1 M A^-1.

    M_Q = K^-1 w_Q with K_kl = [G^-1]_{r_k r_l} [A^-1]_{c_k c_l}; like the reference code, K is solved per row
    (the cross-row blocks of K are dropped), and the correction of each row is spread over the others through G^-1.
    A batched Cholesky solve handles ``chunk`` rows at once: rows whose mask differs are padded with identity.
    """
    out, inp = W.shape
    M = torch.zeros_like(W)
    rows = torch.nonzero(mask.any(1)).flatten()
    eye = torch.eye(inp, device=W.device, dtype=W.dtype)
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        P = mask[r].to(W.dtype)  # [b, in]
        B = Ai[None] * P[:, :, None] * P[:, None, :] + eye[None] * (1 - P)[:, :, None]
        rhs = (W[r] * P)[:, :, None]
        L, _ = torch.linalg.cholesky_ex(B)
        m = torch.cholesky_solve(rhs, L)[:, :, 0] * P
        if Gi is not None:
            m = m / Gi.diagonal()[r][:, None]
        M[r] = m
    dW = -(Gi @ M if Gi is not None else M) @ Ai
    W = W + dW
    W[mask] = 0
    return W


def _upper_factor(Ai: torch.Tensor) -> torch.Tensor:
    """U with A^-1 = U^T U; A^-1 is already damped, so jitter is added only if rounding broke positive definiteness."""
    L, info = torch.linalg.cholesky_ex(Ai)
    if int(info) != 0:
        L = _damped_cholesky(Ai, 1e-6)
    return L.mT


class Selector(Protocol):
    """Chooses the mask of ``width`` columns inside the sequential pass from the weights as updated so far."""

    width: int

    def __call__(self, Wt: torch.Tensor, d: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor: ...


@dataclass
class RateSelector:
    """Unstructured: in each block, the ``rate`` share of its weights with the smallest OBS error w^2 / d^2 (times a
    per-row scale: 1 / [G^-1]_rr under K-FAC) go, weights already masked first (SparseGPT's adaptive mask)."""

    rate: float
    width: int = 128
    row_scale: torch.Tensor | None = None

    def __call__(self, Wt: torch.Tensor, d: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        score = Wt * Wt / (d * d)[:, None]
        if self.row_scale is not None:
            score = score * self.row_scale[None, :]
        score = score.masked_fill(fixed, -math.inf).flatten()
        k = max(int(round(self.rate * score.numel())), int(fixed.sum()))
        chosen = torch.zeros_like(score, dtype=torch.bool)
        chosen[score.topk(k, largest=False).indices] = True
        return chosen.view_as(Wt)


@dataclass
class TwoFourSelector:
    """2:4: in each group of 4 inputs of a row, the 2 weights with the smallest OBS error w^2 / d^2 go (weights already
    masked first)."""

    width: int = 4

    def __call__(self, Wt: torch.Tensor, d: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        score = (Wt * Wt / (d * d)[:, None]).masked_fill(fixed, -math.inf)
        return torch.zeros_like(fixed).scatter_(0, score.topk(2, dim=0, largest=False).indices, True)


def _sequential_row_updates(W: torch.Tensor, U: torch.Tensor, mask: torch.Tensor, block: int,
                            select: Selector | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """W after the SparseGPT column pass with the A-only curvature (every row independently, columns left to
    right) and the mask it removed: ``mask`` itself, or what ``select`` chose (``mask`` then holds the weights that
    must go whatever it chooses)."""
    Wt = W.T.contiguous()  # column j is a contiguous row of Wt: in-place updates of strided columns are far slower
    Mt = mask.T.contiguous()
    Pt = Mt.to(W.dtype)
    d = U.diagonal()
    inp = W.shape[1]
    for b0 in range(0, inp, block):
        b1 = min(b0 + block, inp)
        Err = torch.empty(b1 - b0, W.shape[0], device=W.device, dtype=W.dtype)
        with _one_cpu_thread(W.device):
            for j in range(b0, b1):
                if select is not None and (j - b0) % select.width == 0:
                    g1 = min(j + select.width, b1)  # chosen on the weights as the columns before them left them
                    Mt[j:g1] = select(Wt[j:g1], d[j:g1], Mt[j:g1])
                    Pt[j:g1] = Mt[j:g1].to(W.dtype)
                err = Wt[j] * Pt[j] / U[j, j]  # OBS step for w_j given the columns after it are still free
                Wt[j:b1].addr_(U[j, j:b1], err, alpha=-1)
                Err[j - b0] = err
        Wt[b1:] -= U[b0:b1, b1:].T @ Err  # lazy update of the later blocks: one matmul instead of per column
    return Wt.T, Mt.T


@contextmanager
def _one_cpu_thread(device: torch.device):
    """The per-column steps are vector-sized: on CPU, threads only add synchronisation (measured up to 80x slower
    with 2 threads on a loaded 2-core machine); the block matmul after them keeps every thread."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def remove_weights_sequential(W: torch.Tensor, Gi: torch.Tensor | None, Ai: torch.Tensor, mask: torch.Tensor,
                              block: int = 128, select: Selector | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """W after removing the weights in ``mask`` (True = remove) with a SparseGPT-style sequential pass, and the mask
    removed (``select``: chosen inside the pass, ``mask`` forced into it; else ``mask``).

    Per row, the masked columns are removed left to right with single-weight OBS steps on the columns after them
    (U = upper Cholesky factor of A^-1), so a removed column only updates the columns after it: the result is the
    exact per-row OBS of ``remove_weights`` when every removed column of a row precedes its kept ones, and an
    approximation otherwise, at O(out * in^2) per matrix instead of in^3 per row. With G, the per-row update
    D_r = -m_r A^-1 is spread over the rows like ``remove_weights`` does: dW = G^-1 (D / diag(G^-1)).
    """
    block = block if select is None else max(select.width, block - block % select.width)
    new, removed = _sequential_row_updates(W, _upper_factor(Ai), mask, block, select)
    D = new - W
    if Gi is not None:
        D = Gi @ (D / Gi.diagonal()[:, None])
    W = W + D
    W[removed] = 0
    return W, removed
