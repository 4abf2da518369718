"""The shared LoRA loop: the warm-up + cosine schedule, the order of a step's stages and its hooks, merging."""

from __future__ import annotations

import math

import pytest
import torch

from model_factory import tiny_llama

from shear_hub.errors import ShearHubError
from shear_hub.lora_trainer import LoraTrainer, LRSchedule, adamw, attach_lora, merge

IDS = torch.tensor([[5, 17, 3, 88, 41, 9, 60, 2], [33, 71, 4, 19, 8, 50, 22, 6]])


def test_schedule_warms_up_from_lr_over_warm_then_decays_to_the_floor():
    s = LRSchedule(steps=10, lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [s.lr_at(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]  # not 0 at step 0 (unlike transformers')
    assert s.lr_at(4) == 1.0  # cosine starts at the top
    assert s.lr_at(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert s.lr_at(10) == pytest.approx(0.1)
    decay = [s.lr_at(t) for t in range(4, 11)]
    assert decay == sorted(decay, reverse=True)
    # no warm-up, and a one-step run (the warm-up is capped at steps - 1)
    assert LRSchedule(steps=5, lr=2.0).lr_at(0) == 2.0
    assert LRSchedule(steps=1, lr=2.0, warmup_steps=10).lr_at(0) == 2.0


def test_recovery_config_schedule_is_the_shared_one():
    from shear_hub.recovery import RecoveryConfig

    cfg = RecoveryConfig(steps=20, lr=3e-3, warmup_steps=5, min_lr_ratio=0.2)
    assert cfg.schedule() == LRSchedule(steps=20, lr=3e-3, warmup_steps=5, min_lr_ratio=0.2)


class _Recorder(torch.optim.SGD):
    def __init__(self, params, events):
        super().__init__(params, lr=99.0)
        self.events = events

    def step(self, closure=None):
        self.events.append(("step", self.param_groups[0]["lr"]))
        return super().step(closure)

    def zero_grad(self, set_to_none=True):
        self.events.append(("zero_grad", set_to_none))
        super().zero_grad(set_to_none=set_to_none)


def test_step_runs_its_stages_in_order_with_the_hooks():
    w = torch.nn.Parameter(torch.ones(3))
    events: list = []

    def loss_fn(model, ids):
        events.append("loss")
        loss = (w * ids.float()).sum()
        return loss, loss.detach() * 2

    def backward(loss):
        events.append("backward")
        loss.backward()

    def clip(max_norm):
        events.append(("clip", max_norm, w.grad is not None))

    trainer = LoraTrainer(torch.nn.Identity(), _Recorder([w], events), schedule=LRSchedule(4, 1.0, warmup_steps=2),
                          max_grad_norm=0.5, loss_fn=loss_fn, backward=backward,
                          after_backward=lambda: events.append("after_backward"), clip=clip, position=1)
    out = trainer.step(torch.tensor([1, 2, 3]))
    assert isinstance(out, tuple) and float(out[1]) == 12.0  # what the loss gave, extras included
    assert events == ["loss", "backward", "after_backward", ("clip", 0.5, True), ("step", 1.0), ("zero_grad", True)]
    assert w.grad is None and trainer.position == 2
    torch.testing.assert_close(w.detach(), torch.tensor([0.0, -1.0, -2.0]))  # lr 1.0 (schedule step 1), not 99

    events.clear()
    trainer.step(torch.tensor([1, 1, 1]), forward_backward=lambda ids: events.append("fb") or torch.tensor(0.0))
    assert events[0] == "fb" and "loss" not in events and "backward" not in events  # replaced for that step


def test_default_step_clips_the_optimizer_parameters_and_no_schedule_keeps_lr():
    w = torch.nn.Parameter(torch.zeros(4))
    seen = []
    trainer = LoraTrainer(torch.nn.Identity(), adamw([w], lr=0.125, weight_decay=0.0), max_grad_norm=1e-3,
                          loss_fn=lambda m, ids: (w * ids).sum(), after_backward=lambda: seen.append(w.grad.norm()))
    trainer.step(torch.full((4,), 10.0))
    assert float(seen[0]) == pytest.approx(20.0)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.125
    assert trainer.optimizer.state[w]["exp_avg"].norm() < 1e-3  # the moment saw the clipped gradient
    v = torch.nn.Parameter(torch.zeros(4))
    unclipped = LoraTrainer(torch.nn.Identity(), adamw([v], lr=0.1, weight_decay=0.0), max_grad_norm=0.0,
                            loss_fn=lambda m, ids: (v * ids).sum())
    unclipped.step(torch.full((4,), 10.0))
    assert unclipped.optimizer.state[v]["exp_avg"].norm() == pytest.approx(2.0)  # (1 - beta1) * 20: not clipped


def test_attach_train_merge_changes_the_same_model_object():
    model = tiny_llama(layers=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model, trainable = attach_lora(model, ["q_proj", "v_proj"], rank=2, alpha=4)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    trainer = LoraTrainer(peft_model, adamw(trainable.values(), lr=1e-2, weight_decay=0.0))
    losses = [float(trainer.step(IDS).detach()) for _ in range(3)]
    assert losses[-1] < losses[0]
    assert merge(peft_model, model) is model
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)
    other, _ = attach_lora(tiny_llama(layers=1), ["q_proj"], rank=2, alpha=4)
    with pytest.raises(ShearHubError, match="different model object"):
        merge(other, model)
