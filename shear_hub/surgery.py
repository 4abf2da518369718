"""Surgery: physically remove groups from a model — slice its tensors, compute its new widths, rebuild it."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from .errors import ShearHubError
from .structures.adapters.base import ATTN_ROLES, LM_HEAD, MLP_ROLES
from .structures.dims import DimsTracker
from .structures.graph import WHOLE, Group, ModelDims, StructureGraph

LAYOUTS = ("uniform", "per-layer")


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
        role = graph.role(name)
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


def pruned_config(graph: StructureGraph, removed: list[Group], layout: str):
    """(config, new dims) of the model left after removing ``removed`` in ``layout``: a stock config when every layer
    keeps the same widths (``uniform``), the per-layer one otherwise."""
    if layout not in LAYOUTS:
        raise ShearHubError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    adapter = graph.adapter
    new_dims = dims_after(graph, removed)
    if layout == "uniform":
        if not new_dims.is_uniform():
            raise ShearHubError("the chosen structures give layers different widths; use --layout per-layer")
        return adapter.uniform_config(new_dims), new_dims
    return adapter.per_layer_config(new_dims), new_dims


def build_pruned_model(graph: StructureGraph, removed: list[Group], layout: str):
    """A new, physically smaller model holding the dense model's remaining weights."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from .modeling import register_auto_classes

    register_auto_classes()  # the per-layer classes, for AutoModelForCausalLM.from_config (idempotent)

    dense = graph.adapter.model
    config, new_dims = pruned_config(graph, removed, layout)
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
