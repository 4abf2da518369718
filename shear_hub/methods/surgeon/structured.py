"""``mode=structured``: per shot, each group's cost is the sum over the matrices it touches of the OBS row / column
costs (joint for a group owning several rows of a matrix, e.g. a head); one global threshold picks the groups
(``allocation.allocate``); per matrix all rows / columns removed in the shot get one correlated OBS update; the
removed groups are zeroed in the dense model (the core slices them out afterwards)."""

from __future__ import annotations

import math
from collections import defaultdict
from functools import partial

import torch

from ...allocation import allocate
from ...structures.adapters.base import ATTN_ROLES, DOWN, MLP_ROLES, O
from ...structures.graph import ATTN_BLOCKS, HEADS, LAYERS, MLP, MLP_BLOCKS, QHEADS, Group, zero_groups
from . import obs
from .curvature import Factors
from .lora import lora_update
from .shots import run_shot
from .slices import SliceIndex, alive, dead_slices, positions
from .state import SurgeonRun

_COUPLED = (HEADS, QHEADS, MLP, ATTN_BLOCKS, MLP_BLOCKS, LAYERS)
_PRODUCERS = tuple(r for r in ATTN_ROLES + MLP_ROLES if r not in (O, DOWN))


def select_structured(run: SurgeonRun) -> list[Group]:
    """The shots of structured mode; returns the removed groups (zeroed, and OBS-updated around them, in place)."""
    ctx, cfg = run.ctx, run.config
    graph = ctx.graph
    groups = graph.groups
    counts = partial(slice_counts, run)
    index = SliceIndex(graph, set(run.linears), run.embed_name, run.head_name, counts)
    # coupling=consumer without residual channels needs only o_proj / down_proj factors: skip the others' hooks
    run.needed = {s.param for g in groups for s in g.slices if s.param in run.linears and counts(g, s)}
    removed: set[int] = set()
    T = cfg.shots
    for t in range(1, T + 1):
        costs = torch.zeros(len(groups), dtype=torch.float64)
        dead = dead_slices(groups, removed)
        new: list[int] = []  # filled by _decide: the groups this shot removes
        run_shot(run, partial(score_matrices, run, index, dead, costs), partial(_decide, run, costs, removed, t, new),
                 partial(_update, run, index, dead, new), partial(_zero_embedding_slices, run, new))
        removed.update(new)
        run.zeroed = [groups[i] for i in sorted(removed)]
        zero_groups(ctx.model, run.zeroed)
        run.shot_log[-1].update({"shot": t, "groups_removed": len(removed)})
        if cfg.lora_rank and t < T:
            lora_update(run, [groups[i] for i in removed])
    chosen = [groups[i] for i in sorted(removed)]
    run.report()
    return chosen


def _decide(run: SurgeonRun, costs: torch.Tensor, removed: set[int], t: int, new: list[int]) -> None:
    """Shot ``t``'s allocation: groups (by index) to reach t/T of the target, those removed before excluded."""
    ctx = run.ctx
    groups = ctx.graph.groups
    c = costs.clone()
    if removed:
        c[list(removed)] = -math.inf
    chosen = allocate(ctx.graph, c, int(round(ctx.params_to_remove * t / run.config.shots)), ctx.layout,
                      normalize=run.config.normalize, min_keep=_min_keep(run))
    ids = {id(g): i for i, g in enumerate(groups)}
    new.extend(i for i in (ids[id(g)] for g in chosen) if i not in removed)


def _min_keep(run: SurgeonRun) -> float:
    """The per-layer floor: the configured one, else 0.5 where a norm follows each sublayer (Gemma 2/3), else 0."""
    value = run.config.min_keep
    if value is None:
        value = 0.5 if run.ctx.graph.post_sublayer_norms else 0.0
    run.ctx.report["min_keep"] = value  # the floor used, also when it came from the architecture
    return value


def _update(run: SurgeonRun, index: SliceIndex, dead: dict, new: list[int], names, f: Factors):
    groups = run.ctx.graph.groups
    return update_matrices(run, names, f, index, dead, [groups[i] for i in new])


def _zero_embedding_slices(run: SurgeonRun, new: list[int]) -> None:
    """Layerwise: the new groups' embedding / LM-head columns go before the activations are re-cached."""
    groups = run.ctx.graph.groups
    zero_groups(run.ctx.model, [Group(g.kind, g.layer, g.index, [s for s in g.slices
                if run.role(s.param).layer is None]) for g in (groups[i] for i in new)])


def slice_counts(run: SurgeonRun, group: Group, s) -> bool:
    """Whether slice ``s`` of ``group`` carries a cost and an OBS update. coupling=consumer: a group whose output
    enters the residual only through its consumer (o_proj / down_proj columns, or those whole matrices) is scored
    and compensated there alone -- once those columns are gone the producer rows (q/k/v, gate/up) have no effect,
    so their row costs and updates would count and compensate the same loss a second time."""
    if run.config.coupling != "consumer" or group.kind not in _COUPLED:
        return True
    role = run.role(s.param)
    return role is None or role.role not in _PRODUCERS or not any(
        (r := run.role(x.param)) is not None and r.role in (O, DOWN) for x in group.slices)


def _matrix(run: SurgeonRun, name: str, f: Factors, dead: dict) -> dict | None:
    """Alive sub-matrix of weight ``name`` with its damped factors and their inverses (fp32, compute device)."""
    if name in dead["whole"]:
        return None
    p = run.params[name]
    dev = f.A[name].device
    rows = alive(p.shape[0], dead["rows"].get(name), dev)
    cols = alive(p.shape[1], dead["cols"].get(name), dev)
    if len(rows) == 0 or len(cols) == 0:
        return None
    W = p.detach().to(dev, torch.float32)[rows][:, cols]
    A = obs.damped(f.A[name][cols][:, cols], run.config.damp_a)
    Ai = obs.spd_inverse(A)
    G = Gi = None
    if name in f.G:
        G = obs.damped(f.G[name][rows][:, rows], run.config.damp_g)
        Gi = obs.spd_inverse(G)
    return {"W": W, "A": A, "Ai": Ai, "G": G, "Gi": Gi, "rows": rows, "cols": cols,
            "rpos": positions(p.shape[0], rows), "cpos": positions(p.shape[1], cols)}


def score_matrices(run: SurgeonRun, index: SliceIndex, dead: dict, costs: torch.Tensor, names, f: Factors) -> None:
    """Add the OBS costs of the groups touching the matrices ``names`` into ``costs`` (one entry per group)."""
    joint = run.config.joint_cost
    for name in names:
        m = _matrix(run, name, f, dead)
        if m is None:
            continue
        W, A, Ai, G, Gi = m["W"], m["A"], m["Ai"], m["G"], m["Gi"]
        vec = {0: obs.row_costs(W, A, Gi).double().cpu(), 1: obs.col_costs(W, G, Ai).double().cpu()}
        for dim, pos_key in ((0, "rpos"), (1, "cpos")):
            gidx, idx = index.single.get((name, dim), (None, None))
            if gidx is None:
                continue
            pos = m[pos_key][idx]
            ok = pos >= 0
            costs.index_add_(0, gidx[ok], vec[dim][pos[ok]])
        for gi, dim, idx in index.multi.get(name, []):
            pos = m["rpos" if dim == 0 else "cpos"][list(idx)]
            pos = pos[pos >= 0]
            if len(pos) == 0:
                continue
            if not joint:
                costs[gi] += float(vec[dim][pos].sum())
            elif dim == 0:
                costs[gi] += obs.rows_cost(W, A, Gi, pos.to(W.device))
            else:
                costs[gi] += obs.cols_cost(W, G, Ai, pos.to(W.device))
        for gi in index.whole.get(name, []):
            costs[gi] += obs.whole_cost(W, A, G)
    if run.extras and (f.embed_G is not None or f.token_freq is not None):
        _score_hidden_extras(run, f, index, dead, costs)


def _score_hidden_extras(run: SurgeonRun, f: Factors, index: SliceIndex, dead: dict, costs: torch.Tensor) -> None:
    """Residual channel c also removes embedding column c (a row of the embedding as a linear map of one-hot
    tokens, A = diag(token frequency)) and LM-head column c (cost diag(W^T G W) from the head-input gradients)."""
    H = run.ctx.graph.dims.hidden_size
    dev = run.compute_device
    keep = alive(H, dead["cols"].get(run.embed_name), dev)
    pos = positions(H, keep)
    E = run.params[run.embed_name].detach().to(dev, torch.float32)[:, keep]
    freq = f.token_freq.to(dev)
    emb = (freq[:, None] * E * E).sum(0)
    if f.embed_G is not None:
        Gi = obs.damped_inverse(f.embed_G.to(dev)[keep][:, keep], run.config.damp_g)
        emb = emb / (2 * Gi.diagonal())
    else:
        emb = emb / 2
    head = torch.zeros_like(emb)
    if f.head_A is not None and f.head_gsq is not None:
        Ai = obs.damped_inverse(f.head_A.to(dev)[keep][:, keep], run.config.damp_a)
        head = f.head_gsq.to(dev)[keep] / (2 * Ai.diagonal())
    for name, vec in ((run.embed_name, emb + head if run.tied else emb), (run.head_name, head)):
        if name is None:
            continue
        gidx, idx = index.extra.get(name, (None, None))
        if gidx is None:
            continue
        p = pos[idx]
        ok = p >= 0
        costs.index_add_(0, gidx[ok], vec.double().cpu()[p[ok]])


def update_matrices(run: SurgeonRun, names, f: Factors, index: SliceIndex, dead: dict,
                    new: list[Group]) -> dict[str, torch.Tensor]:
    """Correlated OBS updates of the matrices ``names`` for the rows / columns the ``new`` groups remove."""
    rows: dict[str, set] = defaultdict(set)
    cols: dict[str, set] = defaultdict(set)
    for g in new:
        for s in g.slices:
            if not slice_counts(run, g, s):
                continue  # zeroed with the group, no OBS update of its own
            if s.dim == 0:
                rows[s.param].update(s.index)
            elif s.dim == 1:
                cols[s.param].update(s.index)
    out: dict[str, torch.Tensor] = {}
    if not run.config.update:
        if run.bar is not None:
            run.bar.update(len(names))
        return out
    for name in run.each(names):
        if name not in rows and name not in cols:
            continue
        m = _matrix(run, name, f, dead)
        if m is None:
            continue
        W = m["W"]
        R = m["rpos"][sorted(rows.get(name, ()))]
        C = m["cpos"][sorted(cols.get(name, ()))]
        R, C = R[R >= 0].to(W.device), C[C >= 0].to(W.device)
        if m["Gi"] is not None:
            W = obs.remove_rows(W, m["Gi"], R)
        elif len(R):
            W = W.clone()
            W[R] = 0
        W = obs.remove_cols(W, m["Ai"], C)
        full = run.params[name].detach().to(W.device, torch.float32).clone()
        full[m["rows"][:, None], m["cols"][None, :]] = W
        out[name] = full
    if run.head_name and not run.tied and f.head_A is not None and run.head_name in cols:
        out[run.head_name] = _update_head(run, f, dead, cols[run.head_name])
    return out


def _update_head(run: SurgeonRun, f: Factors, dead: dict, removed_cols: set) -> torch.Tensor:
    """Untied LM head: its input columns get the A-side OBS update (the tied embedding is only zeroed)."""
    dev = run.compute_device
    H = run.ctx.graph.dims.hidden_size
    keep = alive(H, dead["cols"].get(run.head_name), dev)
    pos = positions(H, keep)
    Ai = obs.damped_inverse(f.head_A.to(dev)[keep][:, keep], run.config.damp_a)
    full = run.params[run.head_name].detach().to(dev, torch.float32).clone()
    C = pos[sorted(removed_cols)]
    full[:, keep] = obs.remove_cols(full[:, keep], Ai, C[C >= 0].to(dev))
    return full
