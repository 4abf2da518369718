"""The one LoRA training loop that `shear-hub recover`, LoRAShear (LHSPG and its recovery stage) and the LLM
Surgeon's between-shot update share: attach peft LoRA, step an AdamW optimizer on the LoRA factors, merge back.

A caller plugs its own mechanics into ``LoraTrainer.step`` through hooks (its loss, accelerate's backward and
clipping, LHSPG's gradient collection) and keeps the order of the step, so that every caller trains as it did.
``LRSchedule`` is deliberately not transformers' ``get_cosine_schedule_with_warmup``: that warm-up starts at lr 0 at
step 0, ours at lr / warmup_steps, so the numbers of every trained model would change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .errors import ShearHubError

LossOutput = torch.Tensor | tuple[torch.Tensor, ...]  # the loss, or a tuple whose first item is the loss
LossFn = Callable[[torch.nn.Module, torch.Tensor], LossOutput]


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up over ``warmup_steps`` (from lr / warm at step 0 up to lr), then cosine decay to
    ``lr * min_lr_ratio`` at step ``steps``; a function of the step alone, so resuming needs no state."""

    steps: int
    lr: float
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def lr_at(self, step: int) -> float:
        warm = min(self.warmup_steps, max(self.steps - 1, 0))
        if step < warm:
            return self.lr * (step + 1) / warm
        span = max(self.steps - warm, 1)
        cos = 0.5 * (1 + math.cos(math.pi * (step - warm) / span))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)


def attach_lora(model: torch.nn.Module, targets: str | list[str], *, rank: int, alpha: float, dropout: float = 0.0,
                bias: str = "none", task_type: str | None = None, autocast_adapter_dtype: bool = True
                ) -> tuple[torch.nn.Module, dict[str, torch.nn.Parameter]]:
    """Wrap ``model`` in place with peft LoRA (rank ``rank``, scaling ``alpha / rank``) on the ``targets`` modules
    (names, suffixes or "all-linear"). Returns the peft model and its trainable parameters by name, in the model's
    order (only the LoRA factors: peft freezes the rest)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias=bias, target_modules=targets,
                        task_type=task_type)
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=autocast_adapter_dtype)
    return peft_model, {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


def merge(peft_model: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """Merge the LoRA factors into the base weights (W <- W + s B A) and unload peft; returns ``model``, which peft
    changes in place (its modules are swapped back inside the same object)."""
    merged = peft_model.merge_and_unload()
    if merged is not model:
        raise ShearHubError("internal: LoRA merge returned a different model object")
    return model


def adamw(params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The optimizer every caller trains LoRA with (one parameter group; weight decay given explicitly, since
    torch's default of 0.01 is not what most callers want)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def causal_lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The default loss: next-token cross-entropy of ``ids`` under ``model``."""
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def _loss_backward(loss: torch.Tensor) -> None:
    loss.backward()


@dataclass
class LoraTrainer:
    """One optimizer step at a time on ``model``'s trainable (LoRA) parameters.

    Hooks: ``loss_fn(model, ids)`` (default ``causal_lm_loss``), ``backward(loss)`` (default ``loss.backward()``;
    accelerate's ``Accelerator.backward`` plugs in), ``after_backward()`` (between backward and clipping, e.g. to
    collect gradients of frozen weights) and ``clip(max_norm)`` (default torch's ``clip_grad_norm_`` over the
    optimizer's parameters; accelerate's ``clip_grad_norm_`` plugs in). ``position`` is the schedule's step, advanced
    by every ``step``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule | None = None  # None: the optimizer's lr stays as it is
    max_grad_norm: float | None = None  # None or 0: no clipping
    loss_fn: LossFn = causal_lm_loss
    backward: Callable[[torch.Tensor], object] = _loss_backward
    after_backward: Callable[[], object] | None = None
    clip: Callable[[float], object] | None = None
    position: int = 0

    def forward_backward(self, ids: torch.Tensor) -> LossOutput:
        """``loss_fn`` then ``backward`` on its loss: the gradients of one step, accumulated in ``.grad``."""
        out = self.loss_fn(self.model, ids)
        self.backward(out[0] if isinstance(out, tuple) else out)
        return out

    def step(self, ids: torch.Tensor, *, forward_backward: Callable[[torch.Tensor], LossOutput] | None = None
             ) -> LossOutput:
        """lr from the schedule -> loss and backward -> ``after_backward`` -> clip -> optimizer step ->
        ``zero_grad(set_to_none=True)``. ``forward_backward(ids)`` replaces loss and backward for this step when its
        gradient is not one backward of one loss (LHSPG's per-window backward). Returns what the loss gave."""
        if self.schedule is not None:
            lr = self.schedule.lr_at(self.position)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        out = (forward_backward or self.forward_backward)(ids)
        if self.after_backward is not None:
            self.after_backward()
        if self.max_grad_norm:
            self._clip(self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.position += 1
        return out

    def _clip(self, max_norm: float) -> None:
        if self.clip is not None:
            self.clip(max_norm)
        else:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm)
