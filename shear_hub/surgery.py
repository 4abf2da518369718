"""Surgery: physically remove groups from a model — slice its tensors, compute its new widths, rebuild it."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from .errors import ShearHubError
from .structures.adapters.base import ATTN_ROLES, LM_HEAD, MLP_ROLES
from .structures.graph import (
    ATTN_BLOCKS, HEADS, HIDDEN, LAYERS, MLP, MLP_BLOCKS, QHEADS, WHOLE, Group, LayerDims, ModelDims, StructureGraph,
)

LAYOUTS = ("uniform", "per-layer")


class DimsTracker:
    """Widths of the model as groups are removed one by one (what allocation needs to count parameters fast)."""

    def __init__(self, graph: StructureGraph):
        self.graph = graph
        self.base = graph.dims
        n = len(self.base.layers)
        self.kv_removed = [set() for _ in range(n)]
        self.slots_removed = [set() for _ in range(n)]
        self.mlp_removed = [0] * n
        self.attn_gone = [False] * n
        self.mlp_gone = [False] * n
        self.layer_gone = [False] * n
        self.hidden_removed = 0
        adapter = graph.adapter
        self._layer_cost = [adapter.layer_params(i, self.layer_dims(i), self.base.hidden_size, self.base.head_dim) for i in range(n)]
        self._global = adapter.global_params(self.base.hidden_size, self.base.tied_embeddings)

    def layer_dims(self, i: int) -> LayerDims:
        base = self.base.layers[i]
        if self.attn_gone[i] or base.num_key_value_heads == 0:
            heads = kv = 0
        else:
            rep = base.num_attention_heads // base.num_key_value_heads
            kv = base.num_key_value_heads - len(self.kv_removed[i])
            per_group = rep - len(self.slots_removed[i])
            heads = kv * per_group
            if heads == 0:
                kv = 0
        inter = 0 if self.mlp_gone[i] else base.intermediate_size - self.mlp_removed[i]
        return LayerDims(heads, kv, inter)

    def add(self, group: Group) -> None:
        i = group.layer
        if group.kind == HEADS:
            self.kv_removed[i].add(group.index)
        elif group.kind == QHEADS:
            self.slots_removed[i].add(group.index)
        elif group.kind == MLP:
            self.mlp_removed[i] += 1
        elif group.kind == ATTN_BLOCKS:
            self.attn_gone[i] = True
        elif group.kind == MLP_BLOCKS:
            self.mlp_gone[i] = True
        elif group.kind == LAYERS:
            self.layer_gone[i] = True
        elif group.kind == HIDDEN:
            self.hidden_removed += 1
            self._refresh_all()
            return
        else:
            raise ValueError(group.kind)
        self._refresh(i)

    def _refresh(self, i: int) -> None:
        self._layer_cost[i] = 0 if self.layer_gone[i] else self.graph.adapter.layer_params(
            i, self.layer_dims(i), self.hidden_size, self.base.head_dim)

    def _refresh_all(self) -> None:
        self._global = self.graph.adapter.global_params(self.hidden_size, self.base.tied_embeddings)
        for i in range(len(self.base.layers)):
            self._refresh(i)

    @property
    def hidden_size(self) -> int:
        return self.base.hidden_size - self.hidden_removed

    def params(self) -> int:
        return self._global + sum(self._layer_cost)

    def dims(self) -> ModelDims:
        kept = [i for i in range(len(self.base.layers)) if not self.layer_gone[i]]
        return ModelDims(self.hidden_size, self.base.head_dim, self.base.vocab_size,
                         [self.layer_dims(i) for i in kept], self.base.tied_embeddings,
                         [self.base.original_index[i] for i in kept])


def dims_after(graph: StructureGraph, removed: list[Group]) -> ModelDims:
    tracker = DimsTracker(graph)
    for group in removed:
        tracker.add(group)
    return tracker.dims()


def slice_state_dict(graph: StructureGraph, state: dict[str, torch.Tensor], removed: list[Group],
                     new_dims: ModelDims) -> dict[str, torch.Tensor]:
    """The pruned model's tensors, named as the pruned model names them (kept layers renumbered)."""
    adapter = graph.adapter
    drop: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    whole: set[str] = set()
    for group in removed:
        for s in group.slices:
            if s.dim == WHOLE:
                whole.add(s.param)
            else:
                drop[s.param][s.dim].update(s.index)
    kept_layers = dict(zip(new_dims.original_index, range(len(new_dims.layers))))
    layer_dims = dict(zip(new_dims.original_index, new_dims.layers))
    old_hidden = graph.dims.hidden_size
    norm_scale = math.sqrt(old_hidden / new_dims.hidden_size)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        role = adapter.roles.get(name)
        if role is None:
            continue  # buffers etc. are rebuilt by the new model
        if role.role == LM_HEAD and new_dims.tied_embeddings and not role.is_bias:
            continue
        if role.layer is not None:
            if role.layer not in kept_layers:
                continue
            d = layer_dims[role.layer]
            if (role.role in ATTN_ROLES or role.attn_fixed) and d.num_attention_heads == 0:
                continue
            if role.role in MLP_ROLES and d.intermediate_size == 0:
                continue
        if name in whole:
            raise ShearHubError(f"internal: {name} fully removed but its block is kept")
        t = tensor
        for dim, index in drop.get(name, {}).items():
            keep = torch.tensor(sorted(set(range(t.shape[dim])) - index), dtype=torch.long, device=t.device)
            t = t.index_select(dim, keep)
        if new_dims.hidden_size != old_hidden:  # adapter hook: RMSNorm weights (Gemma also its scaled embedding)
            t = adapter.rescale_for_hidden(role, t, norm_scale, new_dims.tied_embeddings)
        out[_renumber(adapter, name, role.layer, kept_layers)] = t.contiguous().clone()
    return out


def _renumber(adapter, name: str, layer: int | None, kept_layers: dict[int, int]) -> str:
    if layer is None:
        return name
    prefix = f"{adapter.layers_prefix}.{layer}."
    return f"{adapter.layers_prefix}.{kept_layers[layer]}." + name[len(prefix):]


def build_pruned_model(graph: StructureGraph, removed: list[Group], layout: str):
    """A new, physically smaller model holding the dense model's remaining weights."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    import shear_hub  # noqa: F401  (registers per-layer classes)

    if layout not in LAYOUTS:
        raise ShearHubError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    adapter = graph.adapter
    dense = adapter.model
    new_dims = dims_after(graph, removed)
    if layout == "uniform":
        if not new_dims.is_uniform():
            raise ShearHubError("the chosen structures give layers different widths; use --layout per-layer")
        config = adapter.uniform_config(new_dims)
    else:
        config = adapter.per_layer_config(new_dims)
    param = next(dense.parameters())
    state = slice_state_dict(graph, dense.state_dict(), removed, new_dims)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=param.dtype)
    model.to(param.device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and new_dims.tied_embeddings)]
    if missing or unexpected:
        raise ShearHubError(f"internal: surgery produced mismatched weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if new_dims.tied_embeddings:
        model.tie_weights()
    if getattr(dense, "generation_config", None) is not None:
        model.generation_config = dense.generation_config
    model.eval()
    return model, new_dims
