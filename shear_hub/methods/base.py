"""What every pruning method sees (PruneContext) and returns (the groups to remove)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..allocation import allocate
from ..structures.graph import WHOLE, Group, StructureGraph


@dataclass
class PruneContext:
    model: torch.nn.Module
    tokenizer: Any
    graph: StructureGraph
    calibration: torch.Tensor | None  # [samples, seq_len] token ids
    params_before: int
    params_to_remove: int
    layout: str
    kinds: list[str]
    device: str = "cpu"
    seed: int = 0
    batch_size: int = 4
    progress: bool = True
    report: dict = field(default_factory=dict)  # method-specific entries land in pruning_report.json["method_report"]
    # the whole tokenized calibration text the windows were cut from (methods that train sample fresh windows)
    calibration_tokens: torch.Tensor | None = None

    def batches(self, desc: str = "calibration"):
        data = self.calibration
        for start in tqdm(range(0, len(data), self.batch_size), desc=desc, disable=not self.progress, leave=False):
            yield data[start : start + self.batch_size].to(self.device)


class PruningMethod(ABC):
    """A method decides which groups go; it may also update the remaining weights in place (e.g. OBS)."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    needs_calibration: ClassVar[bool] = True

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()

    def config_dict(self) -> dict:
        return asdict(self.config)

    @abstractmethod
    def select(self, ctx: PruneContext) -> list[Group]:
        """Groups to remove; ``ctx.model`` may be modified (weight updates) but keeps its shapes."""

    def after_surgery(self, pruned: torch.nn.Module, ctx: PruneContext) -> None:
        """Optional stage on the physically smaller model, in place, before it is saved (e.g. LoRAShear's
        recovery); entries for the report go to ``ctx.report``. Default: nothing."""


class ScoringMethod(PruningMethod):
    """A method that is a cost per group followed by the shared allocator."""

    # Criteria whose scale drifts across depth (|W|, |W|*||X||: activations grow along the residual stream) are not
    # comparable between layers; they are divided by their layer's mean cost per parameter before global ranking.
    layer_normalized: ClassVar[bool] = False

    def select(self, ctx: PruneContext) -> list[Group]:
        costs = self.score(ctx)
        if self.layer_normalized:
            costs = normalize_per_layer(ctx.graph, costs)
        return allocate(ctx.graph, costs, ctx.params_to_remove, ctx.layout)

    @abstractmethod
    def score(self, ctx: PruneContext) -> torch.Tensor:
        """One cost per group of ``ctx.graph.groups`` (lower = removed first)."""


def normalize_per_layer(graph: StructureGraph, costs: torch.Tensor) -> torch.Tensor:
    """Divide each group's cost by the mean cost-per-parameter of all groups of its layer (global groups together)."""
    costs = costs.double().clone()
    sizes = graph.group_sizes().clamp_min(1)
    layers = torch.tensor([-1 if g.layer is None else g.layer for g in graph.groups])
    for layer in layers.unique():
        mask = layers == layer
        scale = (costs[mask] / sizes[mask]).mean()
        if scale > 0:
            costs[mask] = costs[mask] / scale
    return costs


def group_scores(graph: StructureGraph, importance: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum an element-wise importance over each group's slices (params without importance count 0)."""
    reduced: dict[tuple[str, int], np.ndarray] = {}
    totals: dict[str, float] = {}
    for name, imp in importance.items():
        imp = imp.detach().double().cpu()
        totals[name] = float(imp.sum())
        if imp.dim() == 1:
            reduced[(name, 0)] = imp.numpy()
        else:
            reduced[(name, 0)] = imp.sum(dim=tuple(range(1, imp.dim()))).numpy()
            reduced[(name, 1)] = imp.sum(dim=tuple(d for d in range(imp.dim()) if d != 1)).numpy()
    scores = np.zeros(len(graph.groups))
    for i, group in enumerate(graph.groups):
        total = 0.0
        for s in group.slices:
            if s.dim == WHOLE:
                total += totals.get(s.param, 0.0)
            else:
                vec = reduced.get((s.param, s.dim))
                if vec is not None:
                    total += float(vec[list(s.index)].sum())
        scores[i] = total
    return torch.from_numpy(scores)


def prunable_weights(ctx: PruneContext) -> dict[str, torch.nn.Parameter]:
    """The 2-D weights that groups slice (linear projections, embeddings, head)."""
    params = dict(ctx.model.named_parameters())
    return {n: params[n] for n, r in ctx.graph.adapter.roles.items() if n in params and params[n].dim() == 2}


def input_norms(ctx: PruneContext, names: list[str]) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of the named linear weights over all calibration tokens (Wanda's ||X_j||)."""
    modules = {n: m for n, m in ctx.model.named_modules()}
    sq: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        module = modules.get(name.removesuffix(".weight"))
        if not isinstance(module, torch.nn.Linear):
            continue

        def hook(mod, inputs, _out, key=name):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sq[key] = sq.get(key, 0) + (x * x).sum(0)

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for ids in ctx.batches("activations"):
                ctx.model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.sqrt() for k, v in sq.items()}
