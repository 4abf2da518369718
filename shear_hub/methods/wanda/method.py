"""Wanda-style baseline (Sun et al. 2023): importance |W_ij| * ||X_j||_2, summed over a group's weights.

Embeddings and the LM head have no input activations in this sense; they count by magnitude scaled to the linear
layers' typical activation norm, so residual channels are still comparable with other groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import PruneContext, ScoringMethod, group_scores, input_norms, prunable_weights


@dataclass
class WandaConfig:
    pass


class WandaMethod(ScoringMethod):
    name = "wanda"
    layer_normalized = True
    config_class = WandaConfig

    def score(self, ctx: PruneContext) -> torch.Tensor:
        weights = prunable_weights(ctx)
        norms = input_norms(ctx, list(weights))
        typical = torch.stack([v.mean() for v in norms.values()]).mean() if norms else torch.tensor(1.0)
        importance = {}
        for name, w in weights.items():
            scale = norms.get(name)
            importance[name] = w.detach().abs().float() * (scale[None, :] if scale is not None else typical)
        return group_scores(ctx.graph, importance)
