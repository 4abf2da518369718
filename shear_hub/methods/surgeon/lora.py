"""Optional first-order low-rank update between structured shots (``lora_rank`` > 0): a short peft LoRA fit on
the calibration windows, merged into the weights; the removed groups are zeroed again afterwards."""

from __future__ import annotations

from ...lora_trainer import LoraTrainer, adamw, attach_lora, merge
from ...structures.graph import Group, zero_groups
from .state import SurgeonRun


def lora_update(run: SurgeonRun, removed: list[Group]) -> None:
    """Fit, merge (the model object stays the same) and re-zero ``removed``; refreshes ``run.params``."""
    cfg = run.config
    ctx = run.ctx
    model = ctx.model
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    modules = sorted({n.removesuffix(".weight") for n in run.linears})
    peft_model, trainable = attach_lora(model, modules, rank=cfg.lora_rank, alpha=cfg.lora_rank, dropout=0.0)
    # weight decay 0.01: torch's AdamW default, which this update has always used
    trainer = LoraTrainer(peft_model, adamw(trainable.values(), lr=cfg.lora_lr, weight_decay=0.01))
    peft_model.train()
    while trainer.position < cfg.lora_steps:
        for ids in ctx.batches("surgeon lora"):
            trainer.step(ids)
            if trainer.position >= cfg.lora_steps:
                break
    merge(peft_model, model).eval()
    for n, p in model.named_parameters():
        p.requires_grad_(requires.get(n, False))
    run.params = dict(model.named_parameters())
    zero_groups(model, removed)
