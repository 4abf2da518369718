"""Stage 2: knowledge distribution analysis.

Each (decoder layer, block) unit -- the attention structures or the MLP channels of one layer -- is taken out
(its groups zeroed) one at a time, and the loss increase on held-out windows measures how much of the model's
knowledge sits there. The most sensitive units are marked unprunable until they hold ``protected_ratio`` of the
prunable parameters (the paper's unprunable ratio gamma). In LLaMA the paper finds the first and last layers most
sensitive; the report lists what this model shows.
"""

from __future__ import annotations

import torch

from ...structures.graph import HEADS, MLP, QHEADS, StructureGraph, zero_groups

FAMILY = {HEADS: "attn", QHEADS: "attn", MLP: "mlp"}


@torch.no_grad()
def mean_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int) -> float:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size].to(device)
        total += float(model(input_ids=ids, labels=ids, use_cache=False).loss) * len(ids)
        count += len(ids)
    return total / max(count, 1)


@torch.no_grad()
def knowledge_distribution(model: torch.nn.Module, graph: StructureGraph, held_out: torch.Tensor,
                           protected_ratio: float, batch_size: int = 4, log=None) -> tuple[torch.Tensor, dict]:
    """A bool mask over ``graph.groups`` (True = unprunable) and the analysis for the report."""
    was_training = model.training
    model.eval()
    units: dict[tuple[int, str], list[int]] = {}
    for i, g in enumerate(graph.groups):
        units.setdefault((g.layer, FAMILY[g.kind]), []).append(i)
    sizes = graph.group_sizes()
    params = dict(model.named_parameters())
    base = mean_loss(model, held_out, batch_size)
    deltas = {}
    for key, members in units.items():
        groups = [graph.groups[i] for i in members]
        names = sorted({s.param for g in groups for s in g.slices})
        saved = {n: params[n].detach().clone() for n in names}
        zero_groups(model, groups)
        deltas[key] = mean_loss(model, held_out, batch_size) - base
        for n, t in saved.items():
            params[n].copy_(t)
        if log:
            log(f"lorashear knowledge: layer {key[0]} {key[1]}: +{deltas[key]:.4f} nats")
    total = float(sizes.sum())
    protected = torch.zeros(len(graph.groups), dtype=torch.bool)
    covered = 0.0
    chosen = []
    for key in sorted(deltas, key=lambda k: -deltas[k]):
        if covered >= protected_ratio * total:
            break
        protected[units[key]] = True
        covered += float(sizes[units[key]].sum())
        chosen.append(key)
    model.train(was_training)
    report = {
        "held_out_windows": int(len(held_out)),
        "base_loss": round(base, 4),
        "protected_ratio": protected_ratio,
        "protected_fraction": round(covered / total, 4) if total else 0.0,
        "protected_units": [{"layer": k[0], "block": k[1], "loss_increase": round(deltas[k], 4)} for k in chosen],
        "loss_increase": {f"{k[0]}.{k[1]}": round(v, 4) for k, v in sorted(deltas.items())},
        "protected_groups": int(protected.sum()),
    }
    return protected, report
