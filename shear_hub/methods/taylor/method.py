"""First-order Taylor baseline (LLM-Pruner's element-wise criterion): importance |W_ij * dL/dW_ij| with the gradient
of the language-modelling loss over the calibration windows, summed over a group's weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import (Citation, PruneContext, ScoringMethod, group_scores, prunable_weights, register_method,
                    report_letters)


@dataclass
class TaylorConfig:
    pass


@register_method
class TaylorMethod(ScoringMethod):
    name = "taylor"
    display_name = "Taylor importance (LLM-Pruner criterion)"
    config_class = TaylorConfig
    citation = Citation(
        "LLM-Pruner (Ma et al., 2023, arXiv:2305.11627)",
        "@inproceedings{ma2023llmpruner,\n"
        "  title     = {{LLM-Pruner}: On the Structural Pruning of Large Language Models},\n"
        "  author    = {Ma, Xinyin and Fang, Gongfan and Wang, Xinchao},\n"
        "  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},\n"
        "  year      = {2023},\n"
        "  eprint    = {2305.11627},\n"
        "  archivePrefix = {arXiv}\n"
        "}",
    )
    needs_gradients = True
    report_aliases = ("llmpruner", "taylor")
    list_order = 30

    @classmethod
    def card_name(cls, reported: str) -> str | None:
        """Reports naming LLM-Pruner itself ("LLM-Pruner", "pruner") are carded as LLM-Pruner, whose importance is
        this Taylor score; a name with "taylor" in it as this criterion."""
        if "taylor" in reported.lower():
            return cls.display_name
        letters = report_letters(reported)
        return "LLM-Pruner" if letters == "pruner" or any(a in letters for a in cls.report_aliases) else None

    def gradient_importance(self, ctx: PruneContext):
        return lambda name, w, grad: (w.detach() * grad).abs().float()

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
        importance_of = self.gradient_importance(ctx)
        try:
            for ids in ctx.batches("gradients"):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss / n_batches
                loss.backward()
            importance = {n: importance_of(n, p, p.grad) for n, p in weights.items() if p.grad is not None}
        finally:
            for n, p in model.named_parameters():
                p.grad = None
                p.requires_grad_(requires[n])
        return group_scores(ctx.graph, importance)
