"""The LLM Surgeon (van der Ouderaa et al., ICLR 2024) as ``--method surgeon``.

Per shot t = 1..T (target t/T of the final one):
  1. curvature: Kronecker factors A, G of every decoder linear (``curvature.py``), layer chunks bounded by memory;
  2. costs: each group's cost is the sum over the matrices it touches of the OBS row / column costs (joint for a
     group owning several rows of a matrix, e.g. a head) -- ``obs.py``;
  3. allocation: one global threshold over all groups (``allocation.allocate``; uniform = same count per layer);
  4. updates: per matrix, all rows / columns removed in this shot are solved jointly (correlated OBS update), then
     the removed groups are zeroed in the dense model and stay removed; curvature of the next shot is recomputed
     on the remaining (alive) rows and columns only.
The core then slices the removed groups out (surgery). ``mode=unstructured|2:4`` instead masks single weights with
the same curvature and OBS updates; the model keeps its shapes (zeros inside) and no groups are returned.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import psutil
import torch

from ...allocation import allocate
from ...errors import ShearHubError
from ...progress import bar as progress_bar
from ...structures.adapters.base import ATTN_ROLES, DOWN, EMBED, LM_HEAD, MLP_ROLES, O
from ...structures.graph import ATTN_BLOCKS, HEADS, HIDDEN, LAYERS, MLP, MLP_BLOCKS, QHEADS, WHOLE, Group, zero_groups
from ..base import Citation, PruneContext, PruningMethod, register_method
from . import obs
from .config import SurgeonConfig
from .curvature import Factors, LayerwiseRunner, collect_kfac


def kfac_factor_bytes(layer_linears: dict[str, list[tuple[int, int]]], layerwise: bool) -> int:
    """K-FAC factors (float32) of the largest decoder layer, from its projections' (in, out) shapes; layerwise
    keeps only A (input side). Doubled: the factors and their inverses / eigendecompositions."""
    if not layer_linears:
        return 0
    per_layer = [sum(i * i + (0 if layerwise else o * o) for i, o in shapes) * 4 for shapes in layer_linears.values()]
    return 2 * max(per_layer)


@register_method
class SurgeonMethod(PruningMethod):
    name = "surgeon"
    display_name = "LLM Surgeon"
    config_class = SurgeonConfig
    citation = Citation(
        "The LLM Surgeon (van der Ouderaa et al., ICLR 2024, arXiv:2312.17244)",
        "@inproceedings{vanderouderaa2024llmsurgeon,\n"
        "  title     = {The {LLM} Surgeon},\n"
        "  author    = {van der Ouderaa, Tycho F. A. and Nagel, Markus and van Baalen, Mart and Asano, Yuki M.\n"
        "               and Blankevoort, Tijmen},\n"
        "  booktitle = {International Conference on Learning Representations (ICLR)},\n"
        "  year      = {2024},\n"
        "  eprint    = {2312.17244},\n"
        "  archivePrefix = {arXiv}\n"
        "}",
    )
    needs_gradients = True  # K-FAC's G factors; curvature=layerwise needs none
    low_memory_option = "--option curvature=layerwise"
    report_aliases = ("surgeon",)
    list_order = 40

    @classmethod
    def memory_estimate(cls, mem) -> dict[str, int]:
        """Gradients and activations kept for backward (kfac only), and the K-FAC factors of the largest layer
        (the method accumulates layers in passes that fit)."""
        layerwise = str(mem.options.get("curvature", "kfac")) == "layerwise"
        parts = {} if layerwise else {"gradients": mem.weights_bytes}
        parts["curvature"] = kfac_factor_bytes(mem.info.layer_linears, layerwise)
        parts["activations"] = mem.activation_bytes(backward=not layerwise)
        parts["calibration tokens"] = mem.calibration_token_bytes
        return parts

    @classmethod
    def low_memory_hint(cls) -> str | None:
        return f"{cls.low_memory_option} (one layer at a time)"

    # ----- setup --------------------------------------------------------------------------------------------
    def _setup(self, ctx: PruneContext) -> None:
        model, adapter = ctx.model, ctx.graph.adapter
        self.ctx = ctx
        self.roles = adapter.roles
        self.linears: dict[str, torch.nn.Linear] = {}
        self.layer_of: dict[str, int] = {}
        for name, role in adapter.roles.items():
            if role.layer is not None and role.role in ATTN_ROLES + MLP_ROLES and not role.is_bias:
                mod = model.get_submodule(name.removesuffix(".weight"))
                if isinstance(mod, torch.nn.Linear):
                    self.linears[name] = mod
                    self.layer_of[name] = role.layer
        if not self.linears:
            raise ShearHubError(f"{type(model).__name__} has no linear projections the surgeon can use")
        self.params = dict(model.named_parameters())
        self.decoder_layers = model.get_submodule(adapter.layers_prefix)
        self.n_layers = len(self.decoder_layers)
        self.embed_name = next((n for n, r in adapter.roles.items() if r.role == EMBED and not r.is_bias), None)
        self.head_name = next((n for n, r in adapter.roles.items() if r.role == LM_HEAD and not r.is_bias), None)
        self.tied = ctx.graph.dims.tied_embeddings
        self.extras = HIDDEN in ctx.kinds and ctx.graph.of_kind(HIDDEN) != []
        self.compute_device = torch.device(self.config.compute_device or ctx.device)
        self.shot_log: list[dict] = []
        self.needed: set[str] | None = None  # structured mode: only matrices that carry a cost or an update
        self.peak_factor_bytes = 0
        self._bar = None  # the open stage bar that matrix loops advance (_each)
        if ctx.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True  # factor accumulation: TF32 is ample for curvature

    def _batches(self):
        return self.ctx.batches("surgeon curvature")

    def _chunks(self) -> list[list[int]]:
        """Decoder layers per forward/backward pass so that their factors fit in about half the free memory."""
        if self.config.curvature == "layerwise":
            return [[i] for i in range(self.n_layers)]
        per_layer = [0] * self.n_layers
        for name, mod in self.linears.items():
            if self.needed is None or name in self.needed:
                per_layer[self.layer_of[name]] += 4 * (mod.in_features ** 2 + mod.out_features ** 2)
        if self.config.layers_per_pass:
            n = self.config.layers_per_pass
        else:
            dev = self.compute_device
            free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else psutil.virtual_memory().available
            n = max(1, int(0.5 * free // max(max(per_layer), 1)))
        return [list(range(s, min(s + n, self.n_layers))) for s in range(0, self.n_layers, n)]

    def _stage(self, what: str, total: int, unit: str):
        """A bar for one stage of a shot (curvature and costs, updates), below prune's select bar; vanishes when done."""
        shot = f"surgeon shot {len(self.shot_log) + 1}/{self.config.shots}" if self.config.shots > 1 else "surgeon"
        self._bar = progress_bar(f"{shot}: {what}", total, enabled=self.ctx.progress, leave=False, unit=unit)
        return self._bar

    def _each(self, names: list[str]):
        """``names``, advancing the open stage bar after each matrix is done (updates can take minutes per layer)."""
        for name in names:
            yield name
            if self._bar is not None:
                self._bar.update(1)

    def _names(self, layers: list[int]) -> list[str]:
        keep = set(layers)
        return [n for n in self.linears if self.layer_of[n] in keep and (self.needed is None or n in self.needed)]

    # ----- the shot driver (shared by structured and mask modes) ---------------------------------------------
    def _shot(self, score, decide, update, before_updates=None) -> None:
        """score(names, factors) for every chunk; decide(); update(names, factors) -> {name: new weight}."""
        ctx, cfg = self.ctx, self.config
        chunks = self._chunks()
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + len(self.shot_log))
        model = ctx.model
        t0 = time.perf_counter()
        n_matrices = len(self._names(list(range(self.n_layers))))
        if cfg.curvature == "layerwise":
            runner = LayerwiseRunner(model, self.decoder_layers, self._batches(), self.compute_device)
            with self._stage("curvature and costs", self.n_layers, "layer") as bar:
                for i in range(self.n_layers):
                    names = self._names([i])
                    A = runner.collect_A(i, {n: self.linears[n] for n in names}, advance=True)
                    f = Factors(A=A, tokens=runner.tokens)
                    if i == 0 and self.extras:
                        f.token_freq = self._token_freq()
                    self.peak_factor_bytes = max(self.peak_factor_bytes, f.nbytes())
                    score(names, f)
                    bar.update(1)
            t1 = time.perf_counter()
            decide()
            if before_updates is not None:
                before_updates()
            runner = LayerwiseRunner(model, self.decoder_layers, self._batches(), self.compute_device)
            with self._stage("weight updates", n_matrices, "matrix"):
                for i in range(self.n_layers):
                    names = self._names([i])
                    A = runner.collect_A(i, {n: self.linears[n] for n in names}, advance=False)
                    self._apply(update(names, Factors(A=A, tokens=runner.tokens)))
                    runner.run(i, advance=True)  # the next layer sees this layer's updated outputs
        else:
            def collect(k: int, layers: list[int], names: list[str]) -> Factors:
                return collect_kfac(model, self._batches(), {n: self.linears[n] for n in names},
                                    first_layer=self.decoder_layers[layers[0]], fisher=cfg.fisher,
                                    extras=self.extras and k == 0, embed=model.get_input_embeddings(),
                                    head=model.get_output_embeddings(), vocab=ctx.graph.dims.vocab_size, generator=gen)

            kept = None
            with self._stage("curvature and costs", len(chunks), "pass") as bar:
                for k, layers in enumerate(chunks):
                    names = self._names(layers)
                    f = collect(k, layers, names)
                    self.peak_factor_bytes = max(self.peak_factor_bytes, f.nbytes())
                    score(names, f)
                    kept = f if len(chunks) == 1 else None
                    if kept is None:
                        del f
                    bar.update(1)
            t1 = time.perf_counter()
            decide()
            pending: dict[str, torch.Tensor] = {}
            with self._stage("weight updates", n_matrices, "matrix"):
                for k, layers in enumerate(chunks):
                    names = self._names(layers)
                    f = kept
                    if f is None:  # weights are only written after all chunks, so every pass sees the same model
                        f = collect(k, layers, names)
                    new = update(names, f)
                    pending.update({n: w.cpu() if len(chunks) > 1 else w for n, w in new.items()})
                    del f
            kept = None
            self._bar = None
            self._apply(pending)
        self.shot_log.append({"curvature_and_costs_s": round(t1 - t0, 2),
                              "updates_s": round(time.perf_counter() - t1, 2), "passes": len(chunks)})

    def _token_freq(self) -> torch.Tensor:
        counts = torch.bincount(self.ctx.calibration.flatten(), minlength=self.ctx.graph.dims.vocab_size).float()
        return (counts / counts.sum()).to(self.compute_device)

    def _apply(self, new: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, w in new.items():
                p = self.params[name]
                p.copy_(w.to(device=p.device, dtype=p.dtype))

    # ----- structured ---------------------------------------------------------------------------------------
    def select(self, ctx: PruneContext) -> list[Group]:
        self._setup(ctx)
        if self.config.mode != "structured":
            self._select_masks(ctx)
            return []
        graph = ctx.graph
        groups = graph.groups
        index = _SliceIndex(graph, set(self.linears), self.embed_name, self.head_name, self._counts)
        # coupling=consumer without residual channels needs only o_proj / down_proj factors: skip the others' hooks
        self.needed = {s.param for g in groups for s in g.slices if s.param in self.linears and self._counts(g, s)}
        removed: set[int] = set()
        T = self.config.shots
        for t in range(1, T + 1):
            costs = torch.zeros(len(groups), dtype=torch.float64)
            dead = _dead(groups, removed)
            new: list[int] = []

            def score(names, f, costs=costs, dead=dead):
                self._score_structured(names, f, index, dead, costs)

            def decide(costs=costs, t=t, new=new):
                c = costs.clone()
                if removed:
                    c[list(removed)] = -math.inf
                chosen = allocate(graph, c, int(round(ctx.params_to_remove * t / T)), ctx.layout,
                                  normalize=self.config.normalize)
                ids = {id(g): i for i, g in enumerate(groups)}
                new.extend(i for i in (ids[id(g)] for g in chosen) if i not in removed)

            def update(names, f, dead=dead, new=new):
                return self._update_structured(names, f, index, dead, [groups[i] for i in new])

            def before_updates(new=new):  # layerwise: embedding columns go before activations are re-cached
                zero_groups(ctx.model, [Group(g.kind, g.layer, g.index, [s for s in g.slices
                            if self.roles[s.param].layer is None]) for g in (groups[i] for i in new)])

            self._shot(score, decide, update, before_updates)
            removed.update(new)
            zero_groups(ctx.model, [groups[i] for i in removed])
            self.shot_log[-1].update({"shot": t, "groups_removed": len(removed)})
            if self.config.lora_rank and t < T:
                self._lora(ctx, [groups[i] for i in removed])
        chosen = [groups[i] for i in sorted(removed)]
        self._report(ctx)
        return chosen

    def _counts(self, group: Group, s) -> bool:
        """Whether slice ``s`` of ``group`` carries a cost and an OBS update. coupling=consumer: a group whose output
        enters the residual only through its consumer (o_proj / down_proj columns, or those whole matrices) is scored
        and compensated there alone -- once those columns are gone the producer rows (q/k/v, gate/up) have no effect,
        so their row costs and updates would count and compensate the same loss a second time."""
        if self.config.coupling != "consumer" or group.kind not in _COUPLED:
            return True
        role = self.roles.get(s.param)
        return role is None or role.role not in _PRODUCERS or not any(
            (r := self.roles.get(x.param)) is not None and r.role in (O, DOWN) for x in group.slices)

    def _matrix(self, name: str, f: Factors, dead: dict) -> dict | None:
        """Alive sub-matrix of weight ``name`` with its damped factors and their inverses (fp32, compute device)."""
        if name in dead["whole"]:
            return None
        p = self.params[name]
        dev = f.A[name].device
        rows = _alive(p.shape[0], dead["rows"].get(name), dev)
        cols = _alive(p.shape[1], dead["cols"].get(name), dev)
        if len(rows) == 0 or len(cols) == 0:
            return None
        W = p.detach().to(dev, torch.float32)[rows][:, cols]
        A = obs.damped(f.A[name][cols][:, cols], self.config.damp_a)
        Ai = obs.spd_inverse(A)
        G = Gi = None
        if name in f.G:
            G = obs.damped(f.G[name][rows][:, rows], self.config.damp_g)
            Gi = obs.spd_inverse(G)
        return {"W": W, "A": A, "Ai": Ai, "G": G, "Gi": Gi, "rows": rows, "cols": cols,
                "rpos": _positions(p.shape[0], rows), "cpos": _positions(p.shape[1], cols)}

    def _score_structured(self, names, f: Factors, index: "_SliceIndex", dead: dict, costs: torch.Tensor) -> None:
        joint = self.config.joint_cost
        for name in names:
            m = self._matrix(name, f, dead)
            if m is None:
                continue
            W, A, Ai, G, Gi = m["W"], m["A"], m["Ai"], m["G"], m["Gi"]
            vec = {0: obs.row_costs(W, A, Gi).double().cpu(), 1: obs.col_costs(W, G, Ai).double().cpu()}
            for dim, pos_key in ((0, "rpos"), (1, "cpos")):
                gidx, idx = index.single.get((name, dim), (None, None))
                if gidx is None:
                    continue
                pos = m[pos_key][idx]
                ok = pos >= 0
                costs.index_add_(0, gidx[ok], vec[dim][pos[ok]])
            for gi, dim, idx in index.multi.get(name, []):
                pos = m["rpos" if dim == 0 else "cpos"][list(idx)]
                pos = pos[pos >= 0]
                if len(pos) == 0:
                    continue
                if not joint:
                    costs[gi] += float(vec[dim][pos].sum())
                elif dim == 0:
                    costs[gi] += obs.rows_cost(W, A, Gi, pos.to(W.device))
                else:
                    costs[gi] += obs.cols_cost(W, G, Ai, pos.to(W.device))
            for gi in index.whole.get(name, []):
                costs[gi] += obs.whole_cost(W, A, G)
        if self.extras and (f.embed_G is not None or f.token_freq is not None):
            self._score_hidden_extras(f, index, dead, costs)

    def _score_hidden_extras(self, f: Factors, index: "_SliceIndex", dead: dict, costs: torch.Tensor) -> None:
        """Residual channel c also removes embedding column c (a row of the embedding as a linear map of one-hot
        tokens, A = diag(token frequency)) and LM-head column c (cost diag(W^T G W) from the head-input gradients)."""
        H = self.ctx.graph.dims.hidden_size
        dev = self.compute_device
        alive = _alive(H, dead["cols"].get(self.embed_name), dev)
        pos = _positions(H, alive)
        E = self.params[self.embed_name].detach().to(dev, torch.float32)[:, alive]
        freq = f.token_freq.to(dev)
        emb = (freq[:, None] * E * E).sum(0)
        if f.embed_G is not None:
            Gi = obs.damped_inverse(f.embed_G.to(dev)[alive][:, alive], self.config.damp_g)
            emb = emb / (2 * Gi.diagonal())
        else:
            emb = emb / 2
        head = torch.zeros_like(emb)
        if f.head_A is not None and f.head_gsq is not None:
            Ai = obs.damped_inverse(f.head_A.to(dev)[alive][:, alive], self.config.damp_a)
            head = f.head_gsq.to(dev)[alive] / (2 * Ai.diagonal())
        for name, vec in ((self.embed_name, emb + head if self.tied else emb), (self.head_name, head)):
            if name is None:
                continue
            gidx, idx = index.extra.get(name, (None, None))
            if gidx is None:
                continue
            p = pos[idx]
            ok = p >= 0
            costs.index_add_(0, gidx[ok], vec.double().cpu()[p[ok]])

    def _update_structured(self, names, f: Factors, index, dead: dict, new: list[Group]) -> dict[str, torch.Tensor]:
        rows: dict[str, set] = defaultdict(set)
        cols: dict[str, set] = defaultdict(set)
        for g in new:
            for s in g.slices:
                if not self._counts(g, s):
                    continue  # zeroed with the group, no OBS update of its own
                if s.dim == 0:
                    rows[s.param].update(s.index)
                elif s.dim == 1:
                    cols[s.param].update(s.index)
        out: dict[str, torch.Tensor] = {}
        if not self.config.update:
            if self._bar is not None:
                self._bar.update(len(names))
            return out
        for name in self._each(names):
            if name not in rows and name not in cols:
                continue
            m = self._matrix(name, f, dead)
            if m is None:
                continue
            W = m["W"]
            R = m["rpos"][sorted(rows.get(name, ()))]
            C = m["cpos"][sorted(cols.get(name, ()))]
            R, C = R[R >= 0].to(W.device), C[C >= 0].to(W.device)
            if m["Gi"] is not None:
                W = obs.remove_rows(W, m["Gi"], R)
            elif len(R):
                W = W.clone()
                W[R] = 0
            W = obs.remove_cols(W, m["Ai"], C)
            full = self.params[name].detach().to(W.device, torch.float32).clone()
            full[m["rows"][:, None], m["cols"][None, :]] = W
            out[name] = full
        if self.head_name and not self.tied and f.head_A is not None and self.head_name in cols:
            # untied LM head: its input columns get the A-side OBS update (the tied embedding is only zeroed)
            dev = self.compute_device
            H = self.ctx.graph.dims.hidden_size
            alive = _alive(H, dead["cols"].get(self.head_name), dev)
            pos = _positions(H, alive)
            Ai = obs.damped_inverse(f.head_A.to(dev)[alive][:, alive], self.config.damp_a)
            full = self.params[self.head_name].detach().to(dev, torch.float32).clone()
            C = pos[sorted(cols[self.head_name])]
            full[:, alive] = obs.remove_cols(full[:, alive], Ai, C[C >= 0].to(dev))
            out[self.head_name] = full
        return out

    # ----- unstructured / 2:4 -------------------------------------------------------------------------------
    def _select_masks(self, ctx: PruneContext) -> None:
        cfg = self.config
        masks = {n: torch.zeros(self.params[n].shape, dtype=torch.bool) for n in self.linears}
        total = sum(m.numel() for m in masks.values())
        frac = 0.5 if cfg.mode == "2:4" else ctx.params_to_remove / ctx.params_before
        if cfg.mode == "2:4" and any(m.shape[1] % 4 for m in masks.values()):
            raise ShearHubError("2:4 needs every projection's input size divisible by 4; use --option mode=unstructured")
        self.extras = False
        T = cfg.shots
        for t in range(1, T + 1):
            stored: dict[str, torch.Tensor] = {}

            def score(names, f):
                for name in names:
                    W = self.params[name].detach().to(f.A[name].device, torch.float32)
                    Ai = obs.damped_inverse(f.A[name], cfg.damp_a)
                    Gi = obs.damped_inverse(f.G[name], cfg.damp_g) if name in f.G else None
                    stored[name] = obs.weight_costs(W, Gi, Ai).cpu()

            def decide(t=t):
                goal = int(round(frac * total * t / T))
                if cfg.mode == "unstructured":
                    thr = _kth([c[~masks[n]] for n, c in stored.items()], goal - sum(int(m.sum()) for m in masks.values()))
                    for n, c in stored.items():
                        masks[n] |= c <= thr
                else:
                    blocks = {}
                    for n, c in stored.items():
                        pick, bc = obs.two_four_blocks(c)
                        done = masks[n].reshape(c.shape[0], -1, 4).any(-1)
                        bc[done] = -math.inf
                        blocks[n] = (pick, bc)
                    thr = _kth([bc.flatten() for _, bc in blocks.values()], goal // 2)
                    for n, (pick, bc) in blocks.items():
                        done = masks[n].reshape(pick.shape[0], -1, 4).any(-1)
                        fresh = ((bc <= thr) | (t == T)) & ~done  # the last shot makes every block 2:4
                        masks[n] |= fresh.repeat_interleave(4, dim=1) & pick

            def update(names, f):
                out = {}
                for name in self._each(names):  # minutes per matrix on CPU for large models: one tick each
                    dev = f.A[name].device
                    W = self.params[name].detach().to(dev, torch.float32)
                    Ai = obs.damped_inverse(f.A[name], cfg.damp_a)
                    Gi = obs.damped_inverse(f.G[name], cfg.damp_g) if name in f.G else None
                    mask = masks[name].to(dev)
                    if cfg.update:
                        out[name] = obs.remove_weights(W, Gi, Ai, mask, cfg.solve_chunk)
                    else:
                        out[name] = W.masked_fill(mask, 0)
                return out

            self._shot(score, decide, update)
            self.shot_log[-1].update({"shot": t, "masked": sum(int(m.sum()) for m in masks.values())})
        with torch.no_grad():
            for n, m in masks.items():
                self.params[n].masked_fill_(m.to(self.params[n].device), 0)
        masked = sum(int(m.sum()) for m in masks.values())
        ctx.report["mask_sparsity"] = round(masked / total, 6)
        ctx.report["masked_weights"] = masked
        ctx.report["note"] = (f"{cfg.mode} sparsity is a mask of zeros inside dense matrices: the saved model has the "
                              "same shapes and size as the original; achieved_sparsity counts removed structures only")
        self._report(ctx)

    # ----- between shots / report ---------------------------------------------------------------------------
    def _lora(self, ctx: PruneContext, removed: list[Group]) -> None:
        """First-order low-rank update between shots: a short LoRA fit on the calibration windows, merged."""
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        model = ctx.model
        requires = {n: p.requires_grad for n, p in model.named_parameters()}
        modules = sorted({n.removesuffix(".weight") for n in self.linears})
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
        self.params = dict(model.named_parameters())
        zero_groups(model, removed)

    def _report(self, ctx: PruneContext) -> None:
        ctx.report["shots"] = self.shot_log
        ctx.report["peak_factor_mib"] = round(self.peak_factor_bytes / 2**20, 1)
        ctx.report["peak_rss_mib"] = round(psutil.Process().memory_info().rss / 2**20, 1)
        if self.compute_device.type == "cuda":
            ctx.report["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(self.compute_device) / 2**20, 1)


# ----- helpers -----------------------------------------------------------------------------------------------
_COUPLED = (HEADS, QHEADS, MLP, ATTN_BLOCKS, MLP_BLOCKS, LAYERS)
_PRODUCERS = tuple(r for r in ATTN_ROLES + MLP_ROLES if r not in (O, DOWN))


class _SliceIndex:
    """Where each group touches the surgeon's matrices: single rows/columns (vectorized), multi-index slices
    (joint costs), whole matrices, and the embedding / LM-head columns of residual channels."""

    def __init__(self, graph, linears: set[str], embed: str | None, head: str | None, counts=lambda g, s: True):
        single: dict[tuple, list] = defaultdict(list)
        extra: dict[str, list] = defaultdict(list)
        self.multi: dict[str, list] = defaultdict(list)
        self.whole: dict[str, list] = defaultdict(list)
        for gi, g in enumerate(graph.groups):
            for s in g.slices:
                if s.param in linears and not counts(g, s):
                    continue
                if s.param in linears:
                    if s.dim == WHOLE:
                        self.whole[s.param].append(gi)
                    elif len(s.index) == 1:
                        single[(s.param, s.dim)].append((gi, s.index[0]))
                    else:
                        self.multi[s.param].append((gi, s.dim, s.index))
                elif s.param in (embed, head) and s.dim == 1:
                    extra[s.param].extend((gi, c) for c in s.index)
        self.single = {k: _pair(v) for k, v in single.items()}
        self.extra = {k: _pair(v) for k, v in extra.items()}


def _pair(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    a = np.asarray(items, dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(a[:, 0].copy()), torch.from_numpy(a[:, 1].copy())


def _dead(groups: list[Group], removed: set[int]) -> dict:
    rows: dict[str, set] = defaultdict(set)
    cols: dict[str, set] = defaultdict(set)
    whole: set[str] = set()
    for i in removed:
        for s in groups[i].slices:
            if s.dim == WHOLE:
                whole.add(s.param)
            else:
                (rows if s.dim == 0 else cols)[s.param].update(s.index)
    return {"rows": rows, "cols": cols, "whole": whole}


def _alive(n: int, dead: set | None, device) -> torch.Tensor:
    if not dead:
        return torch.arange(n, device=device)
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(dead)] = False
    return torch.nonzero(keep).flatten().to(device)


def _positions(n: int, alive: torch.Tensor) -> torch.Tensor:
    """Original index -> position in the alive sub-matrix (-1 if dead), on CPU."""
    pos = torch.full((n,), -1, dtype=torch.long)
    pos[alive.cpu()] = torch.arange(len(alive))
    return pos


def _kth(parts: list[torch.Tensor], k: int) -> float:
    """The k-th smallest value over several tensors (exact below 5e7 values, else from a 2e7 random sample)."""
    if k <= 0:
        return -math.inf
    total = sum(p.numel() for p in parts)
    if total <= 5e7:
        flat = torch.cat([p.flatten().float() for p in parts])
        return float(flat.kthvalue(min(k, flat.numel())).values)
    rate = 2e7 / total
    gen = torch.Generator().manual_seed(0)
    sample = torch.cat([p.flatten()[torch.rand(p.numel(), generator=gen) < rate].float() for p in parts])
    return float(sample.kthvalue(max(1, min(int(k * sample.numel() / total), sample.numel()))).values)
