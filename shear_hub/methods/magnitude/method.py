"""Magnitude baseline: a group's cost is the sum of |W| over its weights (no data)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import PruneContext, ScoringMethod, group_scores, prunable_weights


@dataclass
class MagnitudeConfig:
    pass


class MagnitudeMethod(ScoringMethod):
    name = "magnitude"
    layer_normalized = True
    config_class = MagnitudeConfig
    needs_calibration = False

    def score(self, ctx: PruneContext) -> torch.Tensor:
        return group_scores(ctx.graph, {n: p.detach().abs() for n, p in prunable_weights(ctx).items()})
