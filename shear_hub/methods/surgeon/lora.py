"""Optional first-order low-rank update between structured shots (``lora_rank`` > 0): a short peft LoRA fit on
the calibration windows, merged into the weights; the removed groups are zeroed again afterwards."""

from __future__ import annotations

import torch

from ...errors import ShearHubError
from ...structures.graph import Group, zero_groups
from .state import SurgeonRun


def lora_update(run: SurgeonRun, removed: list[Group]) -> None:
    """Fit, merge (the model object stays the same) and re-zero ``removed``; refreshes ``run.params``."""
    from peft import LoraConfig, get_peft_model

    cfg = run.config
    ctx = run.ctx
    model = ctx.model
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    modules = sorted({n.removesuffix(".weight") for n in run.linears})
    peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, lora_dropout=0.0,
                                                  target_modules=modules))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lora_lr)
    peft_model.train()
    step = 0
    while step < cfg.lora_steps:
        for ids in ctx.batches("surgeon lora"):
            loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step >= cfg.lora_steps:
                break
    merged = peft_model.merge_and_unload()
    merged.eval()
    if merged is not model:
        raise ShearHubError("internal: LoRA merge returned a different model object")
    for n, p in model.named_parameters():
        p.requires_grad_(requires.get(n, False))
    run.params = dict(model.named_parameters())
    zero_groups(model, removed)
