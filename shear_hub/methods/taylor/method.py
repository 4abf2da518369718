"""First-order Taylor baseline (LLM-Pruner's element-wise criterion): importance |W_ij * dL/dW_ij| with the gradient
of the language-modelling loss over the calibration windows, summed over a group's weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import PruneContext, ScoringMethod, group_scores, prunable_weights


@dataclass
class TaylorConfig:
    pass


class TaylorMethod(ScoringMethod):
    name = "taylor"
    config_class = TaylorConfig

    def score(self, ctx: PruneContext) -> torch.Tensor:
        weights = prunable_weights(ctx)
        model = ctx.model
        requires = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in weights.values():
            p.requires_grad_(True)
            p.grad = None
        n_batches = max(1, -(-len(ctx.calibration) // ctx.batch_size))
        try:
            for ids in ctx.batches("gradients"):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss / n_batches
                loss.backward()
            importance = {n: (p.detach() * p.grad).abs().float() for n, p in weights.items() if p.grad is not None}
        finally:
            for n, p in model.named_parameters():
                p.grad = None
                p.requires_grad_(requires[n])
        return group_scores(ctx.graph, importance)
