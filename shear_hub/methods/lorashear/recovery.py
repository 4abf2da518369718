"""Stage 4: dynamic knowledge recovery of the pruned (physically smaller) model with LoRA.

A pool of data sources -- pretraining-like text (the calibration text) and instruction-style data (question /
answer pairs built from the shipped Python-docs FAQ text, in the tokenizer's chat format) -- each with held-out
windows on which the full model's loss was measured before pruning. Each round measures the pruned model's loss
gap to the full model per source, trains LoRA on a mix that favours the sources with the largest gap
(softmax(gap / temperature), with a floor), and stops when the deviation -- the gap of the source where the pruned
model lags most (the worst one) -- has not improved for ``recovery_patience`` rounds; the best round's LoRA is merged.
Worst, not summed: the instruction source's held-out loss falls far below the full model's within a round or two (the
pairs share one format), and a sum would let that source's drift pick the round (measured: the round chosen by the
sum was 27.40 on pydocs_eval, the round chosen by the worst source 27.27). The optimiser follows ``shear-hub
recover`` (AdamW, linear warm-up then cosine decay over the whole budget, gradient clipping), which is what recovered
best on this budget (benchmarks/README.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from ...data import builtin_calibration_text, sequential_windows, tokenize_text
from ...lora_trainer import LoraTrainer, LRSchedule, adamw, attach_lora, merge
from .data import TokenSource
from .knowledge import mean_loss

INSTRUCT_DESCRIPTION = ("question/answer pairs from the FAQ entries of the shipped pydocs_calib.txt (a paragraph "
                        "ending in '?' is the question, the paragraphs up to the next question the answer), "
                        "formatted with the tokenizer's chat template (plain 'Question:/Answer:' without one)")


def faq_pairs(text: str, max_answer_paragraphs: int = 3) -> list[tuple[str, str]]:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    pairs = []
    for i, p in enumerate(paragraphs):
        if not (p.endswith("?") and len(p) < 200):
            continue
        answer = []
        for q in paragraphs[i + 1 : i + 1 + max_answer_paragraphs]:
            if q.endswith("?") and len(q) < 200:
                break
            answer.append(q)
        if answer:
            pairs.append((p, "\n\n".join(answer)))
    return pairs


def format_pair(tokenizer, question: str, answer: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False)
        except Exception:  # a template that refuses this shape: fall back to plain text
            pass
    return f"Question: {question}\nAnswer: {answer}\n"


def instruct_source(tokenizer, seq_len: int, eval_windows: int) -> tuple[TokenSource, int]:
    """(source, number of pairs): pairs split 90/10 into the training stream and the held-out windows."""
    pairs = faq_pairs(builtin_calibration_text("builtin:pydocs"))  # the FAQ entries live in the pydocs text
    split = max(1, int(len(pairs) * 0.9))
    train_text = "\n".join(format_pair(tokenizer, q, a) for q, a in pairs[:split])
    eval_text = "\n".join(format_pair(tokenizer, q, a) for q, a in pairs[split:])
    eval_tokens = tokenize_text(tokenizer, eval_text)
    window = min(seq_len, max(2, eval_tokens.numel()))  # very short text: shorter windows rather than none
    held = sequential_windows(eval_tokens, eval_windows, window)
    return TokenSource(train=tokenize_text(tokenizer, train_text), held=held), len(pairs)


def recovery_sources(pretrain: TokenSource, tokenizer, seq_len: int, cfg) -> tuple[dict[str, TokenSource], int]:
    """Stage 4's pool: the pretraining-style stream (its first ``recovery_eval_samples`` held-out windows) and, when
    ``cfg.instruct_source``, the instruction-style one. Returns (sources, number of instruction pairs)."""
    sources = {"pretrain": TokenSource(pretrain.train, pretrain.held[: cfg.recovery_eval_samples])}
    pairs = 0
    if cfg.recovery and cfg.instruct_source:
        sources["instruct"], pairs = instruct_source(tokenizer, seq_len, cfg.recovery_eval_samples)
    return sources, pairs


def recovery_targets(model: torch.nn.Module, adapter) -> list[str]:
    """peft target suffixes (``self_attn.q_proj`` ...): the projection modules that ``adapter`` (the family adapter,
    or a StructureGraph) names and ``model`` holds as linear layers."""
    wanted = adapter.projection_modules()
    present = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return [m for m in wanted if any(n.endswith("." + m) for n in present)]


def data_mix(gaps: dict[str, float], names: list[str], temperature: float, min_share: float) -> torch.Tensor:
    """Sampling weights over the sources: softmax(gap / temperature), so the source where the pruned model lags the
    full one most (relative to the others) gets most steps, mixed with a floor of ``min_share`` per source. Relative,
    not absolute: once every source is at or past the full model's loss, steps still go where it is least ahead."""
    logits = torch.tensor([gaps[s] / temperature for s in names], dtype=torch.float64)
    floor = min(min_share, 1.0 / len(names))
    return floor + (1 - floor * len(names)) * torch.softmax(logits, 0)


def dynamic_recovery(model: torch.nn.Module, adapter, sources: dict[str, TokenSource], dense_loss: dict[str, float],
                     cfg, batch_size: int, seq_len: int, seed: int, log=None,
                     on_round: Callable[[torch.nn.Module, int], None] | None = None) -> dict:
    """Fine-tune ``model`` in place (LoRA merged at the end); returns the round log for the report.
    ``adapter`` names the projections LoRA goes on (the StructureGraph, or a family adapter: ``recovery_targets``).
    ``on_round(peft_model, round)`` runs after each round's deviation measurement (round 0 = before training), e.g.
    to evaluate other text per round (benchmarks/bench_lorashear_rounds.py); it must not train the model."""
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    peft_model, lora = _attach_recovery_lora(model, adapter, cfg)
    schedule = LRSchedule(steps=cfg.recovery_rounds * cfg.recovery_steps, lr=cfg.recovery_lr,
                          warmup_steps=cfg.recovery_warmup_steps, min_lr_ratio=0.1)
    trainer = LoraTrainer(peft_model, adamw(lora, lr=cfg.recovery_lr, weight_decay=0.0), schedule=schedule,
                          max_grad_norm=cfg.recovery_max_grad_norm)
    gen = torch.Generator().manual_seed(seed)
    names = list(sources)

    def gaps() -> dict[str, float]:
        return {s: mean_loss(peft_model, sources[s].held, batch_size) - dense_loss[s] for s in names}

    current = gaps()
    best_worst, best_state = max(current.values()), [p.detach().clone() for p in lora]
    rounds = [{"round": 0, "loss_gap": {k: round(v, 4) for k, v in current.items()}, "worst_gap": round(best_worst, 4)}]
    log(f"lorashear recovery round 0: gap {rounds[0]['loss_gap']}")
    if on_round:
        on_round(peft_model, 0)
    stopped = "max_rounds"
    stale = 0  # rounds since the worst source's gap last improved by recovery_min_delta
    for r in range(1, cfg.recovery_rounds + 1):
        mix = data_mix(current, names, cfg.recovery_temperature, cfg.recovery_min_share)
        counts, losses = _train_round(trainer, sources, mix, cfg.recovery_steps, gen, batch_size, seq_len, device)
        current = gaps()
        worst = max(current.values())
        entry = {"round": r, "mix": {s: round(float(m), 4) for s, m in zip(names, mix)}, "steps": counts,
                 "mean_train_loss": round(sum(losses) / len(losses), 4),
                 "loss_gap": {k: round(v, 4) for k, v in current.items()}, "worst_gap": round(worst, 4)}
        rounds.append(entry)
        log(f"lorashear recovery round {r}: mix {entry['mix']}, gap {entry['loss_gap']}")
        if on_round:
            on_round(peft_model, r)
        stale = 0 if worst < best_worst - cfg.recovery_min_delta else stale + 1
        if worst < best_worst:
            best_worst, best_state = worst, [p.detach().clone() for p in lora]
        if stale >= cfg.recovery_patience:
            stopped = "deviation stopped improving"
            break
    _merge_best(peft_model, model, lora, best_state)
    return _recovery_log(rounds, stopped, best_worst, cfg, schedule, sources, dense_loss, batch_size, seq_len, t0)


def _attach_recovery_lora(model: torch.nn.Module, adapter, cfg) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """(peft model, its trainable LoRA factors): LoRA of rank ``cfg.recovery_rank`` on every projection."""
    peft_model, trainable = attach_lora(model, recovery_targets(model, adapter), rank=cfg.recovery_rank,
                                        alpha=cfg.recovery_alpha, dropout=0.0, bias="none")
    return peft_model, list(trainable.values())


def _train_round(trainer: LoraTrainer, sources: dict[str, TokenSource], mix: torch.Tensor, steps: int,
                 gen: torch.Generator, batch_size: int, seq_len: int,
                 device: torch.device) -> tuple[dict[str, int], list[float]]:
    """One round of ``steps`` steps, each on a batch of a source drawn from ``mix`` (the trainer's schedule runs on
    over the rounds). Returns (steps per source, training losses)."""
    names = list(sources)
    trainer.model.train()
    counts = {s: 0 for s in names}
    losses = []
    for _ in range(steps):
        s = names[int(torch.multinomial(mix, 1, generator=gen))]
        ids = sources[s].sample(batch_size, seq_len, gen).to(device)
        loss = trainer.step(ids)
        counts[s] += 1
        losses.append(float(loss.detach()))
    trainer.model.eval()
    return counts, losses


def _merge_best(peft_model: torch.nn.Module, model: torch.nn.Module, lora: list[torch.nn.Parameter],
                best_state: list[torch.Tensor]) -> None:
    """Put the best round's LoRA factors back and merge them into ``model`` (in place)."""
    with torch.no_grad():
        for p, saved in zip(lora, best_state):
            p.copy_(saved)
    merge(peft_model, model)


def _recovery_log(rounds: list[dict], stopped: str, best_worst: float, cfg, schedule: LRSchedule,
                  sources: dict[str, TokenSource], dense_loss: dict[str, float], batch_size: int, seq_len: int,
                  t0: float) -> dict:
    """The report's record of stage 4: rounds, the round kept, why it stopped, optimiser and sources."""
    best_round = min(rounds, key=lambda e: e["worst_gap"])["round"]
    return {"rounds": rounds, "best_round": best_round, "stopped": stopped,
            "optimizer": {"lora_rank": cfg.recovery_rank, "lora_alpha": cfg.recovery_alpha, "lr": cfg.recovery_lr,
                          "warmup_steps": schedule.warmup_steps, "schedule": "linear warm-up, cosine decay to 0.1 lr",
                          "max_grad_norm": cfg.recovery_max_grad_norm, "batch_size": batch_size, "seq_len": seq_len},
            "sources": {s: {"train_tokens": int(sources[s].train.numel()), "eval_windows": int(len(sources[s].held)),
                            "dense_loss": round(dense_loss[s], 4)} for s in sources},
            "seconds": round(time.perf_counter() - t0, 1), "final_worst_gap": round(best_worst, 4),
            "note": None if math.isfinite(best_worst) else "non-finite loss gap"}
