"""Stage 3: LHSPG (LoRA Half-Space Projected Gradient), progressive structured pruning through LoRA.

Only the LoRA factors train (AdamW on the LM loss). Over K periods the redundant set grows to the target: at the
start of period k the lowest-saliency prunable groups are added until k/K of the parameter budget is marked. During a
period of T steps each newly marked group's effective weight x_g = (W + s B A)_g is scaled by (T-t-1)/(T-t) after
step t (its W slices, LoRA B rows and A columns together), so it fades linearly to exactly zero while the other
groups' LoRA keeps training on the same loss and absorbs what the fading groups carried (knowledge transfer).
After every step the half-space projection of HSPG is applied to the marked groups: a group whose trial point
x_hat_g left the half-space {z : <z, x_g> >= epsilon ||x_g||^2} around its previous point x_g is set to zero at once
(a group that crossed zero stays at zero). Finished groups are held at exactly zero until the end.

``zeroing="half-space"`` replaces the fade by HSPG-style zeroing: after each step every marked group takes a
group-lasso shrink step x_hat_g = x_g - lambda_g(t) x_g / ||x_g|| (all its members scaled by one factor), and the
groups whose x_hat_g left the half-space around their pre-step point are set exactly to zero ("projected"); the
groups still non-zero at the end of the period are set to zero there ("forced"). See ``lambda_schedule``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import torch

from ...allocation import allocate
from ...lora_trainer import LoraTrainer, adamw
from ...structures.dims import DimsTracker
from ...structures.graph import WHOLE, Group, StructureGraph
from ..base import group_scores
from .lora_groups import lora_parameters, lora_scaling, peft_names


def _group_dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """<a_g, b_g> for group vectors given one tensor per group."""
    return torch.stack([torch.dot(x.flatten(), y.flatten()) for x, y in zip(a, b)])


def half_space_crossed(previous, trial, epsilon: float, dots=_group_dots) -> torch.Tensor:
    """HSPG's half-space test: the mask of groups whose trial point left {z : <z, x_g> >= epsilon ||x_g||^2} around
    their previous point x_g, i.e. <trial_g, previous_g> < epsilon * <previous_g, previous_g>. ``dots(a, b)`` gives
    the per-group inner products: one tensor per group by default, ``GroupVectors.dots`` on its snapshots in LHSPG."""
    return dots(trial, previous) < epsilon * dots(previous, previous)


def half_space_project(previous: list[torch.Tensor], trial: list[torch.Tensor], epsilon: float
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """HSPG's projection on group vectors: trial_g -> 0 where <trial_g, previous_g> < epsilon * ||previous_g||^2.
    Returns the projected vectors and the mask of groups set to zero."""
    if not previous:
        return [], torch.zeros(0, dtype=torch.bool)
    zeroed = half_space_crossed(previous, trial, epsilon)
    return [torch.zeros_like(x_hat) if z else x_hat for x_hat, z in zip(trial, zeroed.tolist())], zeroed


def lambda_schedule(start_norms: torch.Tensor, t: int, steps: int) -> torch.Tensor:
    """lambda_g at step t of a period of ``steps``: ||x_g at the period start|| * 2 (t + 1) / T^2. OTO's stored
    lhspg.py / dhspg.py have no lambda rule (they fade linearly, like our default), so this is our rule: it grows
    linearly, and its sum over the period is (T + 1) / T ||x_g||, so a group the training does not move crosses
    zero -- and is projected -- at the period's last step (shrink factor -1 there), when the fade reaches zero;
    groups the loss also pushes toward zero cross earlier."""
    return start_norms * (2.0 * (t + 1) / steps**2)


def shrink_factors(sq_norms: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """The group-lasso step x_g - lambda_g x_g / ||x_g|| as one factor on x_g: 1 - lambda_g / ||x_g|| (0 for a group
    already at zero). Negative when the step overshoots zero, which the half-space test then catches."""
    norms = sq_norms.sqrt()
    return torch.where(norms > 0, 1 - lambdas / norms.clamp_min(1e-300), torch.zeros_like(norms))


def shrunk_crossed(previous_dots: torch.Tensor, previous_sq: torch.Tensor, factors: torch.Tensor,
                   epsilon: float) -> torch.Tensor:
    """The half-space test for x_hat_g = factor_g * x_g: <x_hat_g, prev_g> = factor_g <x_g, prev_g> below
    epsilon ||prev_g||^2 (``previous_dots`` = <x_g, prev_g>, ``previous_sq`` = ||prev_g||^2)."""
    return factors * previous_dots < epsilon * previous_sq


def _slice_index(groups: list[Group], what: str) -> dict[tuple[str, int], tuple[list[int], list[int]]]:
    """(tensor, dim) -> (indices, group id of each index) over the groups' row/column slices; ``what`` names the
    caller in the error for a whole-tensor slice."""
    entries: dict[tuple[str, int], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for gi, g in enumerate(groups):
        for s in g.slices:
            if s.dim == WHOLE:
                raise ValueError(f"{what} needs row/column slices, not whole tensors")
            idx, gid = entries[(s.param, s.dim)]
            idx.extend(s.index)
            gid.extend([gi] * len(s.index))
    return entries


class GroupScaler:
    """Each group's slices scaled by its own factor (one index and group-id tensor per (tensor, dim)): the
    half-space zeroing's shrink step on many groups in a few tensor ops."""

    def __init__(self, groups: list[Group]):
        self.entries = [(name, dim, torch.tensor(idx), torch.tensor(gid))
                        for (name, dim), (idx, gid) in _slice_index(groups, "per-group scaling").items()]

    @torch.no_grad()
    def scale(self, model: torch.nn.Module, factors: torch.Tensor) -> None:
        params = dict(model.named_parameters())
        for name, dim, idx, gid in self.entries:
            t = params[name]
            shape = [1] * t.dim()
            shape[dim] = -1
            f = factors[gid].to(device=t.device, dtype=t.dtype).view(shape)
            idx = idx.to(t.device)
            t.index_copy_(dim, idx, t.index_select(dim, idx) * f)


class SliceSet:
    """Slices of many groups compiled to one index tensor per (tensor, dim): zeroing / scaling thousands of groups
    is a few hundred tensor ops instead of one per slice."""

    def __init__(self, groups: list[Group]):
        index: dict[tuple[str, int], set[int]] = defaultdict(set)
        self.whole: set[str] = set()
        for g in groups:
            for s in g.slices:
                if s.dim == WHOLE:
                    self.whole.add(s.param)
                else:
                    index[(s.param, s.dim)].update(s.index)
        self.index = {k: torch.tensor(sorted(v), dtype=torch.long) for k, v in index.items()}

    @torch.no_grad()
    def scale(self, model: torch.nn.Module, factor: float) -> None:
        params = dict(model.named_parameters())
        for name in self.whole:
            params[name].mul_(factor)
        for (name, dim), idx in self.index.items():
            t = params[name]
            idx = idx.to(t.device)
            if factor == 0.0:
                t.index_fill_(dim, idx, 0.0)
            else:
                t.index_copy_(dim, idx, t.index_select(dim, idx) * factor)


class GroupVectors:
    """The effective weights x_g = (W + s B A)_g of a list of groups (base parameter names), gathered per
    (tensor, dim) so that all groups' inner products are a few matrix ops."""

    def __init__(self, peft_model: torch.nn.Module, groups: list[Group]):
        self.params = dict(peft_model.named_parameters())
        self.n = len(groups)
        self.entries = []
        for (name, dim), (idx, gid) in _slice_index(groups, "LHSPG").items():
            names = peft_names(peft_model, name, self.params)
            scaling = lora_scaling(peft_model, names.module) if names.module else 0.0
            self.entries.append((names, dim, torch.tensor(idx), torch.tensor(gid), scaling))

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        """One [n_indices, fan] tensor per entry: the selected rows (or columns, transposed) of W + s B A."""
        out = []
        for names, dim, idx, _, scaling in self.entries:
            w = self.params[names.weight]
            idx = idx.to(w.device)
            if dim == 0:
                x = w.index_select(0, idx)
                x = x.unsqueeze(1) if x.dim() == 1 else x.clone()
                if names.lora_b is not None:
                    x += scaling * self.params[names.lora_b].index_select(0, idx) @ self.params[names.lora_a]
            else:
                x = w.index_select(1, idx).t().clone()
                if names.lora_b is not None:
                    x += scaling * (self.params[names.lora_b] @ self.params[names.lora_a].index_select(1, idx)).t()
            out.append(x.float())
        return out

    def dots(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        """<a_g, b_g> for every group g."""
        total = torch.zeros(self.n, dtype=torch.float64)
        for (_, _, _, gid, _), xa, xb in zip(self.entries, a, b):
            total.index_add_(0, gid, (xa * xb).sum(1).double().cpu())
        return total


def effective_weights(peft_model: torch.nn.Module, graph: StructureGraph) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(W, s B A) for every base weight that groups slice (the LoRA part is 0 where none is attached)."""
    params = dict(peft_model.named_parameters())
    names = {s.param for g in graph.groups for s in g.slices}
    out = {}
    with torch.no_grad():
        for name in names:
            pn = peft_names(peft_model, name, params)
            w = params[pn.weight].detach()
            if pn.lora_b is not None and w.dim() == 2:
                d = lora_scaling(peft_model, pn.module) * (params[pn.lora_b] @ params[pn.lora_a])
            else:
                d = torch.zeros_like(w)
            out[name] = (w, d)
    return out


def saliency(peft_model: torch.nn.Module, graph: StructureGraph, grads: dict[str, torch.Tensor],
             weights: dict[str, float], normalize: bool, fisher: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """One importance per group (higher = keep): weighted sum of L2-normalised criteria, per parameter when
    ``normalize``. Criteria: taylor |x * g| (g = accumulated dL/dx), magnitude x^2, cosine (1 + cos(W_g, BA_g)) / 2,
    alignment |<W_g, BA_g>| (OTO's LHSPG criterion: how far the LoRA update leans on the frozen weight),
    fisher sum_i (sum_g x * dL_i/dx)^2 over windows i (the empirical Fisher of a mask on the group, Kwon et al. 2022,
    "A Fast Post-Training Pruning Framework for Transformers"; passed in, collected during the steps)."""
    eff = effective_weights(peft_model, graph)
    sizes = graph.group_sizes().clamp_min(1)
    scores: dict[str, torch.Tensor] = {}
    if weights.get("taylor", 0) > 0:
        imp = {n: ((w + d) * grads[n]).abs() for n, (w, d) in eff.items() if n in grads}
        scores["taylor"] = group_scores(graph, imp)
    if weights.get("magnitude", 0) > 0:
        scores["magnitude"] = group_scores(graph, {n: (w + d) ** 2 for n, (w, d) in eff.items()})
    if weights.get("fisher", 0) > 0:
        if fisher is None:
            raise RuntimeError("internal: the Fisher criterion needs per-window gradients from at least one step")
        scores["fisher"] = fisher
    if weights.get("alignment", 0) > 0:
        scores["alignment"] = group_scores(graph, {n: w * d for n, (w, d) in eff.items()}).abs()
    if normalize:
        scores = {k: v / sizes for k, v in scores.items()}
    if weights.get("cosine", 0) > 0:
        wd = group_scores(graph, {n: w * d for n, (w, d) in eff.items()})
        ww = group_scores(graph, {n: w * w for n, (w, d) in eff.items()})
        dd = group_scores(graph, {n: d * d for n, (w, d) in eff.items()})
        scores["cosine"] = (1 + wd / (ww.sqrt() * dd.sqrt()).clamp_min(1e-30)) / 2
    total = torch.zeros(len(graph.groups), dtype=torch.float64)
    for k, v in scores.items():
        total += weights[k] * v / v.norm().clamp_min(1e-30)
    return total, {k: float(v.norm()) for k, v in scores.items()}


class LHSPG:
    """Runs stage 3 on a peft-wrapped model; ``run`` returns the groups that ended exactly at zero."""

    def __init__(self, peft_model, graph: StructureGraph, lora_groups: list[Group], protected: torch.Tensor,
                 params_to_remove: int, layout: str, config, log=None):
        self.model = peft_model
        self.graph = graph
        self.lora_groups = lora_groups  # graph.groups with LoRA members, peft names
        self.protected = protected
        self.params_to_remove = params_to_remove
        self.layout = layout
        self.cfg = config
        self.log = log or (lambda msg: None)
        self.lora = lora_parameters(peft_model)
        for p in peft_model.parameters():
            p.requires_grad_(False)
        for p in self.lora:
            p.requires_grad_(True)
        # only the LoRA factors train (no schedule, no clipping); frozen-weight gradients are taken after backward
        self.trainer = LoraTrainer(peft_model, adamw(self.lora, lr=config.lr, weight_decay=0.0),
                                   after_backward=self._take_base_grads)
        params = dict(peft_model.named_parameters())
        slice_params = {s.param for g in graph.groups for s in g.slices}
        # the frozen weights whose gradient feeds the Taylor saliency (dL/dW = dL/dx for x = W + s B A)
        self.base_weights = {n: params[peft_names(peft_model, n, params).weight] for n in slice_params}
        self.grads: dict[str, torch.Tensor] = {}
        self.fisher: torch.Tensor | None = None  # per-group sum of squared per-window mask gradients
        self.step = 0
        self.losses: list[float] = []

    def _train_step(self, ids: torch.Tensor, collect: bool) -> float:
        """One LoRA step; when ``collect``, the frozen weights' gradients of the step feed the saliency."""
        for p in self.base_weights.values():
            p.requires_grad_(collect)
        per_window = self._backward_per_window if collect and self.cfg.w_fisher > 0 else None
        loss = self.trainer.step(ids, forward_backward=per_window)
        self.step += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def _take_base_grads(self) -> None:
        """After backward: add the frozen weights' gradients (present only on collecting steps, when they require
        grad) to ``self.grads`` and freeze the weights again."""
        for n, p in self.base_weights.items():
            if p.grad is not None:
                self.grads[n] = self.grads[n] + p.grad if n in self.grads else p.grad.detach().clone()
                p.grad = None
            p.requires_grad_(False)

    def _saliency_backward(self, ids: torch.Tensor) -> torch.Tensor:
        """The step's backward when its gradients feed the saliency: per window when the Fisher criterion needs it."""
        return self._backward_per_window(ids) if self.cfg.w_fisher > 0 else self.trainer.forward_backward(ids)

    def _backward_per_window(self, ids: torch.Tensor) -> torch.Tensor:
        """The same step's gradient as one batched backward (LoRA grads accumulate), one window at a time, so the
        Fisher criterion gets one squared mask gradient per window: (sum over the group of x * dL_i/dx)^2."""
        eff = {n: w + d for n, (w, d) in effective_weights(self.model, self.graph).items()}
        total = 0.0
        window_grads: dict[str, torch.Tensor] = {}
        for row in ids:
            window = row.unsqueeze(0)
            loss = self.model(input_ids=window, labels=window, use_cache=False).loss / len(ids)
            loss.backward()
            total += float(loss.detach())
            mask_grad = {}
            for n, p in self.base_weights.items():
                if p.grad is None:
                    continue
                g = p.grad - window_grads[n] if n in window_grads else p.grad.clone()
                window_grads[n] = p.grad.clone()
                mask_grad[n] = eff[n] * g * len(ids)  # d loss_i / d (scale of x) per element, summed per group
            fisher = group_scores(self.graph, mask_grad) ** 2
            self.fisher = fisher if self.fisher is None else self.fisher + fisher
        return torch.tensor(total)

    def _select(self, redundant: set[int], fraction: float) -> tuple[list[int], dict]:
        weights = self.cfg.saliency_weights()
        if (weights.get("taylor", 0) > 0 or weights.get("fisher", 0) > 0) and not self.grads:
            raise RuntimeError("internal: Taylor saliency needs gradients from at least one step")
        importance, norms = saliency(self.model, self.graph, self.grads, weights, self.cfg.normalize, self.fisher)
        self.grads = {}
        self.fisher = None
        cost = importance.clone()
        cost[self.protected] = math.inf
        if redundant:
            cost[list(redundant)] = -math.inf
        target = int(round(self.params_to_remove * fraction))
        chosen = allocate(self.graph, cost, target, self.layout, normalize=False)
        index = {id(g): i for i, g in enumerate(self.graph.groups)}
        chosen_idx = [index[id(g)] for g in chosen]
        dropped = redundant - set(chosen_idx)  # uniform re-balancing may not keep every earlier pick
        new = sorted(set(chosen_idx) - redundant)
        info = {"criteria_norms": norms, "dropped_earlier_picks": len(dropped),
                "protected_picked": int(self.protected[chosen_idx].sum()) if chosen_idx else 0}
        return new, info

    def run(self, batches) -> tuple[list[Group], list[dict], dict]:
        """``batches``: an endless iterator of token-id batches. Returns (removed groups, per-period log, summary)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        for t in range(cfg.warmup_steps):
            self._train_step(next(batches), collect=t >= cfg.warmup_steps - cfg.saliency_steps)
        warmup_loss = sum(self.losses) / len(self.losses) if self.losses else None
        redundant: set[int] = set()
        periods = []
        params_before = DimsTracker(self.graph).params()
        for k in range(1, cfg.periods + 1):
            if not self.grads:  # no warm-up: one gradient-only pass so the first selection has a saliency
                self._collect_only(next(batches))
            new, info = self._select(redundant, k / cfg.periods)
            losses, zeroing = self._run_period(new, redundant, batches)
            redundant |= set(new)
            tracker = DimsTracker(self.graph)
            for i in redundant:
                tracker.add(self.graph.groups[i])
            kinds: dict[str, int] = {}
            for i in new:
                kinds[self.graph.groups[i].kind] = kinds.get(self.graph.groups[i].kind, 0) + 1
            entry = {"period": k, "target_params": int(round(self.params_to_remove * k / cfg.periods)),
                     "removed_params": params_before - tracker.params(),
                     "sparsity": round((params_before - tracker.params()) / params_before, 6),
                     "new_groups": kinds, **zeroing,
                     "mean_loss": round(sum(losses) / len(losses), 4), "last_loss": round(losses[-1], 4),
                     "elapsed_s": round(time.perf_counter() - t0, 1), **info}
            periods.append(entry)
            self.log(f"lorashear LHSPG period {k}/{cfg.periods}: sparsity {entry['sparsity']:.4f}, "
                     f"loss {entry['mean_loss']:.3f}, projected {entry['half_space_projected']}"
                     + (f", forced {entry['forced_to_zero']}" if "forced_to_zero" in entry else ""))
        for p in self.base_weights.values():
            p.requires_grad_(False)
        removed = [self.graph.groups[i] for i in sorted(redundant)]
        check = GroupVectors(self.model, removed)
        snap = check.snapshot()
        max_abs = max((float(x.abs().max()) for x in snap if x.numel()), default=0.0)
        summary = {"steps": self.step, "warmup_mean_loss": None if warmup_loss is None else round(warmup_loss, 4),
                   "max_abs_effective_weight_removed": max_abs, "seconds": round(time.perf_counter() - t0, 1)}
        return removed, periods, summary

    def _run_period(self, new: list[int], redundant: set[int], batches) -> tuple[list[float], dict]:
        """One period's steps, zeroing the newly marked groups ``new``; returns (losses, the log's zeroing counts)."""
        if self.cfg.zeroing == "half-space":
            return self._half_space_period(new, redundant, batches)
        return self._fade_period(new, redundant, batches)

    def _fade_period(self, new: list[int], redundant: set[int], batches) -> tuple[list[float], dict]:
        """The linear fade (paper / OTO): scale by (T-t-1)/(T-t) after step t, half-space projection on the side."""
        cfg = self.cfg
        active = SliceSet([self.lora_groups[i] for i in new])
        vectors = GroupVectors(self.model, [self.graph.groups[i] for i in new])
        done = SliceSet([self.lora_groups[i] for i in sorted(redundant)])
        projected = torch.zeros(len(new), dtype=torch.bool)
        losses = []
        T = cfg.period_steps
        for t in range(T):
            previous = vectors.snapshot() if new else []
            losses.append(self._train_step(next(batches), collect=t >= T - cfg.saliency_steps))
            done.scale(self.model, 0.0)  # finished groups stay exactly zero
            active.scale(self.model, (T - t - 1) / (T - t))  # linear fade: exactly zero after the last step
            if new and t < T - 1:  # the last step's fade to zero is the schedule, not a projection
                trial = vectors.snapshot()
                cross = half_space_crossed(previous, trial, cfg.epsilon, dots=vectors.dots)
                cross &= ~projected
                if cross.any():  # half-space projection: these groups are set to zero now
                    SliceSet([self.lora_groups[new[i]] for i in cross.nonzero().flatten().tolist()]).scale(self.model, 0.0)
                    projected |= cross
                    # keep them at zero for the rest of the period
                    done = SliceSet([self.lora_groups[i] for i in sorted(redundant)]
                                    + [self.lora_groups[new[i]] for i in projected.nonzero().flatten().tolist()])
        return losses, {"half_space_projected": int(projected.sum())}

    def _half_space_period(self, new: list[int], redundant: set[int], batches) -> tuple[list[float], dict]:
        """HSPG-style zeroing: after each step a group-lasso shrink of every marked group (``lambda_schedule``), then
        the half-space projection on the shrunk point; what is left non-zero at the end is forced to zero."""
        cfg = self.cfg
        T = cfg.period_steps
        vectors = GroupVectors(self.model, [self.graph.groups[i] for i in new])
        scaler = GroupScaler([self.lora_groups[i] for i in new])
        start = vectors.snapshot()
        start_norms = vectors.dots(start, start).sqrt()
        done = SliceSet([self.lora_groups[i] for i in sorted(redundant)])
        projected = torch.zeros(len(new), dtype=torch.bool)
        losses = []
        for t in range(T):
            previous = vectors.snapshot() if new else []
            losses.append(self._train_step(next(batches), collect=t >= T - cfg.saliency_steps))
            done.scale(self.model, 0.0)  # finished and projected groups stay exactly zero
            if not new:
                continue
            trial = vectors.snapshot()  # x_g after the optimizer step, before the shrink
            sq = vectors.dots(trial, trial)
            factors = shrink_factors(sq, lambda_schedule(start_norms, t, T))
            cross = shrunk_crossed(vectors.dots(trial, previous), vectors.dots(previous, previous), factors,
                                   cfg.epsilon)
            cross = (cross | (sq == 0)) & ~projected
            keep = ~(cross | projected)
            scaler.scale(self.model, torch.where(keep, factors, torch.ones_like(factors)))
            if cross.any():  # the projection: exactly zero now and for the rest of the period
                projected |= cross
                done = SliceSet([self.lora_groups[i] for i in sorted(redundant)]
                                + [self.lora_groups[new[i]] for i in projected.nonzero().flatten().tolist()])
                done.scale(self.model, 0.0)
        forced = ~projected
        if forced.any():  # the period ends: the groups the projection did not reach go to zero here
            SliceSet([self.lora_groups[new[i]] for i in forced.nonzero().flatten().tolist()]).scale(self.model, 0.0)
        return losses, {"half_space_projected": int(projected.sum()), "forced_to_zero": int(forced.sum()),
                        "zeroing": "half-space"}

    def _collect_only(self, ids: torch.Tensor) -> None:
        """Gradients for the saliency without a step (``self.grads`` is empty here: it takes a copy of them)."""
        for p in self.base_weights.values():
            p.requires_grad_(True)
        self._saliency_backward(ids)
        self._take_base_grads()
        self.trainer.optimizer.zero_grad(set_to_none=True)
