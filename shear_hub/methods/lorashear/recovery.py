"""Stage 4: dynamic knowledge recovery of the pruned (physically smaller) model with LoRA.

A pool of data sources -- pretraining-like text (the calibration windows) and instruction-style data (question /
answer pairs built from the shipped Python-docs FAQ text, in the tokenizer's chat format) -- each with held-out
windows on which the full model's loss was measured before pruning. Each round measures the pruned model's loss
gap to the full model per source, trains LoRA on a mix that favours the sources with the largest gap
(softmax(gap / temperature)), and stops when the summed gap stops improving; the best round's LoRA is merged.
"""

from __future__ import annotations

import math
import time

import torch

from ...data import builtin_calibration_text, tokenize_text
from ...structures.adapters.base import ATTN_ROLES, MLP_ROLES
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


def _windows(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    seq_len = min(seq_len, max(2, tokens.numel()))
    n = max(1, tokens.numel() // seq_len)
    return tokens[: n * seq_len].view(n, seq_len)


def instruct_source(tokenizer, seq_len: int, eval_windows: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train windows, held-out windows, number of pairs): pairs split 90/10 before packing into windows."""
    pairs = faq_pairs(builtin_calibration_text())
    split = max(1, int(len(pairs) * 0.9))
    train_text = "\n".join(format_pair(tokenizer, q, a) for q, a in pairs[:split])
    eval_text = "\n".join(format_pair(tokenizer, q, a) for q, a in pairs[split:])
    train = _windows(tokenize_text(tokenizer, train_text), seq_len)
    held = _windows(tokenize_text(tokenizer, eval_text), seq_len)[:eval_windows]
    return train, held, len(pairs)


def recovery_targets(model: torch.nn.Module, adapter) -> list[str]:
    """peft target suffixes (``self_attn.q_proj`` ...) from the family adapter's module roles."""
    wanted = [m for m, r in adapter.module_roles.items() if r in ATTN_ROLES or r in MLP_ROLES]
    present = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return [m for m in wanted if any(n.endswith("." + m) for n in present)]


def dynamic_recovery(model: torch.nn.Module, adapter, sources: dict[str, tuple[torch.Tensor, torch.Tensor]],
                     dense_loss: dict[str, float], cfg, batch_size: int, seed: int, log=None) -> dict:
    """Fine-tune ``model`` in place (LoRA merged at the end); returns the round log for the report."""
    from peft import LoraConfig, get_peft_model

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                        target_modules=recovery_targets(model, adapter))
    peft_model = get_peft_model(model, config)
    lora = [p for n, p in peft_model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    names = list(sources)

    def gaps() -> dict[str, float]:
        return {s: mean_loss(peft_model, sources[s][1], batch_size) - dense_loss[s] for s in names}

    current = gaps()
    best_total, best_state = sum(current.values()), [p.detach().clone() for p in lora]
    rounds = [{"round": 0, "loss_gap": {k: round(v, 4) for k, v in current.items()}, "total_gap": round(best_total, 4)}]
    log(f"lorashear recovery round 0: gap {rounds[0]['loss_gap']}")
    stopped = "max_rounds"
    for r in range(1, cfg.recovery_rounds + 1):
        logits = torch.tensor([current[s] / cfg.recovery_temperature for s in names], dtype=torch.float64)
        mix = torch.softmax(logits, 0)
        peft_model.train()
        counts = {s: 0 for s in names}
        losses = []
        for _ in range(cfg.recovery_steps):
            s = names[int(torch.multinomial(mix, 1, generator=gen))]
            train = sources[s][0]
            pick = torch.randint(0, len(train), (min(batch_size, len(train)),), generator=gen)
            ids = train[pick].to(device)
            loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counts[s] += 1
            losses.append(float(loss.detach()))
        peft_model.eval()
        current = gaps()
        total = sum(current.values())
        entry = {"round": r, "mix": {s: round(float(m), 4) for s, m in zip(names, mix)}, "steps": counts,
                 "mean_train_loss": round(sum(losses) / len(losses), 4),
                 "loss_gap": {k: round(v, 4) for k, v in current.items()}, "total_gap": round(total, 4)}
        rounds.append(entry)
        log(f"lorashear recovery round {r}: mix {entry['mix']}, gap {entry['loss_gap']}")
        improved = best_total - total
        if total < best_total:
            best_total, best_state = total, [p.detach().clone() for p in lora]
        if improved < cfg.recovery_min_delta:
            stopped = "deviation stopped improving"
            break
    with torch.no_grad():
        for p, saved in zip(lora, best_state):
            p.copy_(saved)
    merged = peft_model.merge_and_unload()
    assert merged is model  # peft swaps modules back inside the same object
    best_round = min(rounds, key=lambda e: e["total_gap"])["round"]
    return {"rounds": rounds, "best_round": best_round, "stopped": stopped,
            "sources": {s: {"train_windows": int(len(sources[s][0])), "eval_windows": int(len(sources[s][1])),
                            "dense_loss": round(dense_loss[s], 4)} for s in names},
            "seconds": round(time.perf_counter() - t0, 1), "final_total_gap": round(best_total, 4),
            "note": None if math.isfinite(best_total) else "non-finite loss gap"}
