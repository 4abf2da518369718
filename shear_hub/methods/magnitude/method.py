"""Magnitude baseline: a group's cost is the sum of |W| over its weights (no data)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import PruneContext, ScoringMethod, group_scores, prunable_weights, register_method


@dataclass
class MagnitudeConfig:
    pass


@register_method
class MagnitudeMethod(ScoringMethod):
    name = "magnitude"
    display_name = "magnitude"  # a baseline without a paper: the card names it as the report does
    list_order = 10
    layer_normalized = True
    config_class = MagnitudeConfig
    needs_calibration = False

    def weight_importance(self, ctx: PruneContext, names: list[str]):
        return lambda name, w: w.detach().abs()

    def score(self, ctx: PruneContext) -> torch.Tensor:
        weights = prunable_weights(ctx)
        importance = self.weight_importance(ctx, list(weights))
        return group_scores(ctx.graph, {n: importance(n, p) for n, p in weights.items()})
