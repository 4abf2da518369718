"""Allocation: which groups go, given one cost per group (lower = cheaper to remove) and a parameter budget.

- per-layer layout: one global threshold over all groups (cost per parameter), so layers end up with their own
  widths (the LLM Surgeon's dynamic allocation).
- uniform layout: the same global ranking decides how much each structure kind gives; then every layer removes the
  same number of its cheapest groups of each kind, and the finest kind is adjusted to land on the budget.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ShearHubError
from .structures.dims import DimsTracker
from .structures.graph import ATTN_BLOCKS, HEADS, HIDDEN, LAYERS, MLP, MLP_BLOCKS, QHEADS, Group, StructureGraph

PER_LAYER_KINDS = (HEADS, QHEADS, MLP)
FINEST_FIRST = (MLP, QHEADS, HEADS, HIDDEN, LAYERS)


def allocate(graph: StructureGraph, costs: torch.Tensor, params_to_remove: int, layout: str,
             normalize: bool = True, min_keep: float = 0.0) -> list[Group]:
    """Groups to remove so that about ``params_to_remove`` parameters go; ``min_keep``: the fraction of each
    layer's MLP channels, KV groups and query heads per group that the global threshold must leave (per-layer
    layout: a floor against emptying a layer)."""
    if layout == "uniform" and any(g.kind in (ATTN_BLOCKS, MLP_BLOCKS) for g in graph.groups):
        raise ShearHubError("attn-blocks / mlp-blocks give layers different shapes; use --layout per-layer")
    # the floor is a per-layer matter: uniform takes its kind split from the unconstrained global ranking
    chosen = allocate_global(graph, costs, params_to_remove, normalize, min_keep if layout != "uniform" else 0.0)
    if layout == "uniform":
        chosen = uniformize(graph, costs, chosen, params_to_remove)
    return chosen


def _order(graph: StructureGraph, costs: torch.Tensor, normalize: bool) -> np.ndarray:
    costs = costs.detach().double().cpu()
    if normalize:
        costs = costs / graph.group_sizes().clamp_min(1)
    return np.argsort(costs.numpy(), kind="stable")


def allocate_global(graph: StructureGraph, costs: torch.Tensor, params_to_remove: int,
                    normalize: bool = True, min_keep: float = 0.0) -> list[Group]:
    tracker = DimsTracker(graph)
    start = tracker.params()
    limits = _limits(graph, min_keep)
    taken: dict[tuple, int] = {}
    chosen: list[Group] = []
    slack = 0.002 * start  # a coarse group that would overshoot by more than this is skipped for finer ones
    for i in _order(graph, costs, normalize):
        removed = start - tracker.params()
        if removed >= params_to_remove:
            break
        group = graph.groups[int(i)]
        if removed + graph.group_size(int(i)) > params_to_remove + slack:
            continue
        key = (group.kind, group.layer)
        if taken.get(key, 0) >= limits.get(key, 1 << 60):
            continue
        if group.kind == LAYERS and sum(tracker.layer_gone) >= len(tracker.layer_gone) - 1:
            continue  # keep at least one decoder layer
        taken[key] = taken.get(key, 0) + 1
        tracker.add(group)
        chosen.append(group)
    return chosen


def _limits(graph: StructureGraph, min_keep: float = 0.0) -> dict[tuple, int]:
    """Keep every model runnable: one KV group / query slot per layer, half the residual stream, one layer; with
    ``min_keep`` > 0 also that fraction (rounded up) of each layer's MLP channels, KV groups and query slots."""
    dims = graph.dims
    limits: dict[tuple, int] = {(HIDDEN, None): dims.hidden_size // 2, (LAYERS, None): 0}

    def most(n: int) -> int:  # how many of n may go
        return max(n - 1, 0) if min_keep <= 0 else max(min(n - 1, int(n * (1 - min_keep))), 0)

    for i, d in enumerate(dims.layers):
        limits[(HEADS, i)] = most(d.num_key_value_heads)
        limits[(QHEADS, i)] = most(d.num_attention_heads // max(d.num_key_value_heads, 1))
        if min_keep > 0:
            limits[(MLP, i)] = int(d.intermediate_size * (1 - min_keep))
        limits[(LAYERS, i)] = 1
    limits.pop((LAYERS, None))
    return limits


def uniformize(graph: StructureGraph, costs: torch.Tensor, chosen: list[Group], params_to_remove: int) -> list[Group]:
    kinds = {g.kind for g in graph.groups}
    removed_layers = {g.layer for g in chosen if g.kind == LAYERS}
    kept = [i for i in range(len(graph.dims.layers)) if i not in removed_layers]
    per_kind = {k: 0 for k in PER_LAYER_KINDS}
    for g in chosen:
        if g.kind in per_kind and g.layer in kept:
            per_kind[g.kind] += 1
    counts = {k: int(round(per_kind[k] / max(len(kept), 1))) for k in PER_LAYER_KINDS}
    hidden = [g for g in chosen if g.kind == HIDDEN]
    layers = [g for g in chosen if g.kind == LAYERS]
    by_layer_kind: dict[tuple, list[int]] = {}
    for idx, g in enumerate(graph.groups):
        if g.kind in PER_LAYER_KINDS:
            by_layer_kind.setdefault((g.kind, g.layer), []).append(idx)
    cost = costs.detach().double().cpu().numpy()
    for key in by_layer_kind:
        by_layer_kind[key].sort(key=lambda j: cost[j])
    dims = graph.dims

    def max_count(kind: str) -> int:
        d = dims.layers[kept[0]] if kept else dims.layers[0]
        if kind == HEADS:
            return d.num_key_value_heads - 1
        if kind == QHEADS:
            return d.num_attention_heads // max(d.num_key_value_heads, 1) - 1
        return d.intermediate_size - 1

    def build(c: dict[str, int]) -> tuple[list[Group], int]:
        sel = list(layers) + list(hidden)
        for kind in PER_LAYER_KINDS:
            for layer in kept:
                sel.extend(graph.groups[j] for j in by_layer_kind.get((kind, layer), [])[: c[kind]])
        tracker = DimsTracker(graph)
        before = tracker.params()
        for g in sel:
            tracker.add(g)
        return sel, before - tracker.params()

    for kind in PER_LAYER_KINDS:
        counts[kind] = min(counts[kind], max(max_count(kind), 0)) if kind in kinds else 0
    fine = next((k for k in FINEST_FIRST if k in kinds and k in PER_LAYER_KINDS), None)
    selection, removed = build(counts)
    if fine is not None:
        # walk the finest per-layer kind to the count whose total is closest to the budget
        best = (abs(removed - params_to_remove), dict(counts), selection)
        step = 1 if removed < params_to_remove else -1
        while 0 <= counts[fine] + step <= max_count(fine):
            counts[fine] += step
            selection, removed = build(counts)
            gap = abs(removed - params_to_remove)
            if gap <= best[0]:
                best = (gap, dict(counts), selection)
            if (step > 0 and removed >= params_to_remove) or (step < 0 and removed <= params_to_remove):
                break
        selection = best[2]
    return selection
