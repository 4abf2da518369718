"""Wanda-style baseline (Sun et al. 2023): importance |W_ij| * ||X_j||_2, summed over a group's weights.

Embeddings and the LM head have no input activations in this sense; they count by magnitude scaled to the linear
layers' typical activation norm, so residual channels are still comparable with other groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import Citation, PruneContext, ScoringMethod, group_scores, input_norms, prunable_weights, register_method


@dataclass
class WandaConfig:
    pass


@register_method
class WandaMethod(ScoringMethod):
    name = "wanda"
    display_name = "Wanda (structured)"
    citation = Citation(
        "Wanda (Sun et al., 2023, arXiv:2306.11695)",
        "@article{sun2023wanda,\n"
        "  title   = {A Simple and Effective Pruning Approach for Large Language Models},\n"
        "  author  = {Sun, Mingjie and Liu, Zhuang and Bair, Anna and Kolter, J. Zico},\n"
        "  journal = {arXiv preprint arXiv:2306.11695},\n"
        "  year    = {2023}\n"
        "}",
    )
    report_aliases = ("wanda",)
    list_order = 20
    layer_normalized = True
    config_class = WandaConfig

    def weight_importance(self, ctx: PruneContext, names: list[str]):
        norms = input_norms(ctx, names)  # one calibration pass; works through accelerate's offload hooks too
        typical = torch.stack([v.mean() for v in norms.values()]).mean() if norms else torch.tensor(1.0)

        def importance(name: str, w: torch.Tensor) -> torch.Tensor:
            scale = norms.get(name)
            return w.detach().abs().float() * (scale[None, :] if scale is not None else typical)

        return importance

    def score(self, ctx: PruneContext) -> torch.Tensor:
        weights = prunable_weights(ctx)
        importance = self.weight_importance(ctx, list(weights))
        return group_scores(ctx.graph, {n: importance(n, w) for n, w in weights.items()})
