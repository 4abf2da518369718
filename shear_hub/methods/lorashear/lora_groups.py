"""Stage 1: the dependency graph with LoRA attached.

A structure-graph group lists slices of the frozen weights. With a peft LoRA pair on a projection (effective weight
W + s * B @ A, B: out x r, A: r x in), the same structure also owns
  - rows ``index`` of B when it owns rows of W (its output features), and
  - columns ``index`` of A when it owns columns of W (its input features),
so that zeroing (or removing) those LoRA parts together with W's slices zeroes the effective weight's slice exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ShearHubError
from ...lora_trainer import attach_lora as shared_attach_lora
from ...structures.graph import WHOLE, Group, StructureGraph, TensorSlice

ADAPTER_NAME = "default"


@dataclass(frozen=True)
class PeftNames:
    """Where one base parameter lives in the peft-wrapped model."""

    weight: str  # the frozen tensor (``...q_proj.base_layer.weight`` when wrapped)
    lora_a: str | None  # ``...q_proj.lora_A.default.weight`` (r x in)
    lora_b: str | None  # ``...q_proj.lora_B.default.weight`` (out x r)
    module: str | None  # the LoRA layer's module name (for its scaling)


def lora_target_modules(graph: StructureGraph) -> list[str]:
    """Module names of every attention / MLP projection weight (the paper puts LoRA on all of them)."""
    return sorted(n.removesuffix(".weight") for n in graph.projection_weights())


def attach_lora(model: torch.nn.Module, graph: StructureGraph, rank: int, alpha: float):
    """Wrap ``model`` in place with peft LoRA on every projection; only the LoRA factors train."""
    peft_model, _ = shared_attach_lora(model, lora_target_modules(graph), rank=rank, alpha=alpha, dropout=0.0,
                                       bias="none")
    return peft_model


def peft_names(peft_model: torch.nn.Module, base_name: str,
               params: dict[str, torch.Tensor] | None = None) -> PeftNames:
    """Names in ``peft_model`` of base parameter ``base_name`` and of its LoRA factors (None when not wrapped)."""
    params = params if params is not None else dict(peft_model.named_parameters())
    prefix = "base_model.model."
    module, _, leaf = base_name.rpartition(".")
    wrapped = f"{prefix}{module}.base_layer.{leaf}"
    if wrapped in params:
        a = f"{prefix}{module}.lora_A.{ADAPTER_NAME}.weight"
        b = f"{prefix}{module}.lora_B.{ADAPTER_NAME}.weight"
        if leaf == "weight" and a in params and b in params:
            return PeftNames(wrapped, a, b, f"{prefix}{module}")
        return PeftNames(wrapped, None, None, None)
    if prefix + base_name in params:
        return PeftNames(prefix + base_name, None, None, None)
    if base_name in params:  # not a peft model
        return PeftNames(base_name, None, None, None)
    raise ShearHubError(f"internal: parameter {base_name} not found in the LoRA-wrapped model")


def lora_aware_groups(groups: list[Group], peft_model: torch.nn.Module) -> list[Group]:
    """The same groups with their slices renamed to the peft model's tensors plus the LoRA members: B rows for
    W rows, A columns for W columns. ``structures.zero_groups(peft_model, result)`` then zeroes the effective
    weight of every group exactly, LoRA update included."""
    params = dict(peft_model.named_parameters())
    cache: dict[str, PeftNames] = {}
    out = []
    for group in groups:
        slices: list[TensorSlice] = []
        for s in group.slices:
            if s.param not in cache:
                cache[s.param] = peft_names(peft_model, s.param, params)
            names = cache[s.param]
            slices.append(TensorSlice(names.weight, s.dim, s.index))
            if names.lora_b is None or s.dim == WHOLE:
                if s.dim == WHOLE and names.lora_b is not None:
                    slices += [TensorSlice(names.lora_a, WHOLE, ()), TensorSlice(names.lora_b, WHOLE, ())]
                continue
            if s.dim == 0:
                slices.append(TensorSlice(names.lora_b, 0, s.index))
            else:
                slices.append(TensorSlice(names.lora_a, 1, s.index))
        out.append(Group(group.kind, group.layer, group.index, slices))
    return out


def lora_scaling(peft_model: torch.nn.Module, module_name: str) -> float:
    module = dict(peft_model.named_modules())[module_name]
    return float(module.scaling[ADAPTER_NAME])


def lora_parameters(peft_model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in peft_model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
