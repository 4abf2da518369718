"""LoRAShear (Chen et al., 2023): LoRA-aware dependency graph, knowledge distribution analysis, progressive LHSPG
pruning with knowledge transfer, and dynamic knowledge recovery after surgery.

``select`` runs stages 1-3 on the dense model (LoRA attached in place, merged back at the end, the redundant groups
exactly zero); core surgery slices them away; ``after_surgery`` runs stage 4 on the smaller model in place.
"""

from __future__ import annotations

import torch

from ...errors import ShearHubError
from ...lora_trainer import merge
from ...progress import write
from ...structures.graph import HEADS, MLP, QHEADS, Group
from ..base import Citation, PruneContext, PruningMethod, register_method
from .config import LoRAShearConfig
from .data import TokenSource, from_windows, split_stream
from .knowledge import knowledge_distribution, mean_loss
from .lhspg import LHSPG, GroupVectors
from .lora_groups import attach_lora, lora_aware_groups, lora_parameters, lora_target_modules
from .recovery import INSTRUCT_DESCRIPTION, SELF_DESCRIPTION, dynamic_recovery, recovery_sources

SUPPORTED_KINDS = (HEADS, QHEADS, MLP)

PAPER_NOTES = {
    "periods": "paper: progressive over several periods (LLaMA-7B, ~2 GPU days in total); ours 4 x 8 steps (CPU)",
    "protected_ratio": "paper: unprunable ratio gamma from the knowledge analysis (value not confirmed); ours 0.1",
    "saliency": "OTO mixes magnitude / Taylor / cosine criteria with equal weights; ours Taylor on W + BA only "
                "(magnitude collapses SmolLM2, see shared notes)",
    "recovery": "paper: two-phase LoRA fine-tuning on pretraining then instruction data subsets chosen by the "
                "per-benchmark gap; ours one loop over a two-source pool, mix from the per-source loss gap, "
                "optimiser as shear-hub recover (r16, lr 1e-3, cosine)",
}


def endless_batches(source: TokenSource, batch_size: int, seq_len: int, seed: int, device: str):
    """Fresh random windows of the training stream, forever."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield source.sample(batch_size, seq_len, gen).to(device)


@register_method
class LoRAShearMethod(PruningMethod):
    name = "lorashear"
    display_name = "LoRAShear"
    config_class = LoRAShearConfig
    citation = Citation(
        "LoRAShear (Chen et al., 2023, arXiv:2310.18356)",
        "@article{chen2023lorashear,\n"
        "  title   = {{LoRAShear}: Efficient Large Language Model Structured Pruning and Knowledge Recovery},\n"
        "  author  = {Chen, Tianyi and Ding, Tianyu and Yadav, Badal and Zharkov, Ilya and Liang, Luming},\n"
        "  journal = {arXiv preprint arXiv:2310.18356},\n"
        "  year    = {2023}\n"
        "}",
    )
    needs_gradients = True
    report_aliases = ("lorashear",)
    cited_for_recovery = "lora"  # its LoRA knowledge-recovery stage: cited whenever LoRA recovery was run
    list_order = 50

    def __init__(self, config=None):
        super().__init__(config)
        self._recovery_data: dict | None = None

    def _log(self, ctx: PruneContext):
        return write if ctx.progress else None  # stderr lines that do not tear prune's open stage bar

    def check(self, ctx: PruneContext) -> None:
        bad = [k for k in ctx.kinds if k not in SUPPORTED_KINDS]
        if bad:
            raise ShearHubError(f"lorashear prunes heads, qheads and mlp channels, not {bad[0]!r}; "
                                "use --structures heads,mlp")
        if ctx.calibration is None or len(ctx.calibration) < 2:
            raise ShearHubError("lorashear trains on the calibration windows and needs at least 2; "
                                "use --calib-samples 32 or more")

    def run_stages_1_to_3(self, ctx: PruneContext):
        """Stages 1-3; returns (peft model with LoRA still attached, removed groups). The removed groups' effective
        weights (frozen W + LoRA update) are exactly zero."""
        self.check(ctx)
        cfg: LoRAShearConfig = self.config
        log = self._log(ctx)
        seq_len = ctx.calibration.shape[1]
        n_held = cfg.held_out_windows()
        pretrain = (split_stream(ctx.calibration_tokens, seq_len, n_held) if ctx.calibration_tokens is not None
                    else from_windows(ctx.calibration, n_held))
        held = pretrain.held[: cfg.knowledge_samples]
        model = ctx.model
        ctx.report["stage1_dependency_graph"] = {}  # filled below; keeps the report in stage order

        # references of the full model for stage 4 (measured before anything changes)
        # (the self source is sampled here too: the model is still the dense one)
        sources, instruct_pairs = recovery_sources(pretrain, ctx.tokenizer, seq_len, cfg, model, ctx.seed)
        dense_loss = {s: mean_loss(model, sources[s].held, ctx.batch_size) for s in sources}
        self._recovery_data = {"sources": sources, "dense_loss": dense_loss, "instruct_pairs": instruct_pairs,
                               "seq_len": seq_len}

        # stage 2: knowledge distribution -> unprunable groups
        protected, knowledge = knowledge_distribution(model, ctx.graph, held, cfg.protected_ratio, ctx.batch_size, log)
        ctx.report["stage2_knowledge"] = knowledge

        # stage 1: LoRA on every projection; each group also owns its LoRA B rows / A columns
        peft_model = attach_lora(model, ctx.graph, cfg.lora_rank, cfg.lora_alpha)
        groups = lora_aware_groups(ctx.graph.groups, peft_model)
        kinds: dict[str, int] = {}
        for g in ctx.graph.groups:
            kinds[g.kind] = kinds.get(g.kind, 0) + 1
        ctx.report["stage1_dependency_graph"] = {
            "groups": kinds,
            "lora_modules": len(lora_target_modules(ctx.graph)),
            "lora_parameters": sum(p.numel() for p in lora_parameters(peft_model)),
            "slices_per_group": {k: len(next(g for g in groups if g.kind == k).slices) for k in kinds},
            "note": "each group = its rows/columns of the frozen W plus the matching LoRA B rows / A columns",
        }

        # stage 3: LHSPG
        lhspg = LHSPG(peft_model, ctx.graph, groups, protected, ctx.params_to_remove, ctx.layout, cfg, log)
        removed, periods, summary = lhspg.run(endless_batches(pretrain, ctx.batch_size, seq_len, ctx.seed, ctx.device))
        if summary["max_abs_effective_weight_removed"] != 0.0:
            raise ShearHubError("internal: LHSPG left removed groups non-zero; please report this")
        ctx.report["stage3_lhspg"] = {"periods": periods, **summary}
        return peft_model, removed

    def select(self, ctx: PruneContext) -> list[Group]:
        peft_model, removed = self.run_stages_1_to_3(ctx)
        merged = merge(peft_model, ctx.model)  # W <- W + s B A; the removed groups stay exactly zero
        for p in merged.parameters():
            p.requires_grad_(False)
        leftover = GroupVectors(merged, removed).snapshot()
        if any(x.numel() and float(x.abs().max()) != 0.0 for x in leftover):
            raise ShearHubError("internal: merged weights of removed groups are not zero; please report this")
        ctx.report["paper_notes"] = PAPER_NOTES
        return removed

    def after_surgery(self, pruned: torch.nn.Module, ctx: PruneContext) -> None:
        cfg: LoRAShearConfig = self.config
        data = self._recovery_data
        if not cfg.recovery or cfg.recovery_rounds == 0 or data is None:
            ctx.report["stage4_recovery"] = {"skipped": True}
            return
        report = dynamic_recovery(pruned, ctx.graph, data["sources"], data["dense_loss"], cfg,
                                  ctx.batch_size, data["seq_len"], ctx.seed, self._log(ctx))
        for p in pruned.parameters():
            p.requires_grad_(True)
        if "instruct" in data["sources"]:
            report["instruct_source"] = {"description": INSTRUCT_DESCRIPTION, "pairs": data["instruct_pairs"]}
        if "self" in data["sources"]:
            report["self_source"] = {"description": SELF_DESCRIPTION, "samples": cfg.recovery_self_samples}
        report["pretrain_source"] = ("random windows of the whole calibration text, minus held-out chunks spread "
                                     "evenly over it (the deviation and knowledge-analysis windows)")
        ctx.report["stage4_recovery"] = report
