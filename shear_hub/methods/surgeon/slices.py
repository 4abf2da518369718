"""Index helpers of structured mode: where each group touches the surgeon's matrices, which rows / columns earlier
shots removed, and the map from original indices to positions in the alive sub-matrices."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ...structures.graph import WHOLE, Group


class SliceIndex:
    """Where each group touches the surgeon's matrices: single rows/columns (vectorized), multi-index slices
    (joint costs), whole matrices, and the embedding / LM-head columns of residual channels."""

    def __init__(self, graph, linears: set[str], embed: str | None, head: str | None, counts=lambda g, s: True):
        single: dict[tuple, list] = defaultdict(list)
        extra: dict[str, list] = defaultdict(list)
        self.multi: dict[str, list] = defaultdict(list)
        self.whole: dict[str, list] = defaultdict(list)
        for gi, g in enumerate(graph.groups):
            for s in g.slices:
                if s.param in linears and not counts(g, s):
                    continue
                if s.param in linears:
                    if s.dim == WHOLE:
                        self.whole[s.param].append(gi)
                    elif len(s.index) == 1:
                        single[(s.param, s.dim)].append((gi, s.index[0]))
                    else:
                        self.multi[s.param].append((gi, s.dim, s.index))
                elif s.param in (embed, head) and s.dim == 1:
                    extra[s.param].extend((gi, c) for c in s.index)
        self.single = {k: _pair(v) for k, v in single.items()}
        self.extra = {k: _pair(v) for k, v in extra.items()}


def _pair(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    a = np.asarray(items, dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(a[:, 0].copy()), torch.from_numpy(a[:, 1].copy())


def dead_slices(groups: list[Group], removed: set[int]) -> dict:
    """Rows, columns (by weight name) and whole matrices of the groups removed so far."""
    rows: dict[str, set] = defaultdict(set)
    cols: dict[str, set] = defaultdict(set)
    whole: set[str] = set()
    for i in removed:
        for s in groups[i].slices:
            if s.dim == WHOLE:
                whole.add(s.param)
            else:
                (rows if s.dim == 0 else cols)[s.param].update(s.index)
    return {"rows": rows, "cols": cols, "whole": whole}


def alive(n: int, dead: set | None, device) -> torch.Tensor:
    if not dead:
        return torch.arange(n, device=device)
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(dead)] = False
    return torch.nonzero(keep).flatten().to(device)


def positions(n: int, alive: torch.Tensor) -> torch.Tensor:
    """Original index -> position in the alive sub-matrix (-1 if dead), on CPU."""
    pos = torch.full((n,), -1, dtype=torch.long)
    pos[alive.cpu()] = torch.arange(len(alive))
    return pos
