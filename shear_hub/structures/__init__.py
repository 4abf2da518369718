"""Structure graph: which groups of a model can be removed together."""

from .adapters import get_adapter, supported_model_types
from .dims import DimsTracker
from .graph import KINDS, Group, LayerDims, ModelDims, StructureGraph, TensorSlice, zero_groups


def build_graph(model, kinds: list[str]) -> StructureGraph:
    """Groups of the requested kinds for ``model`` (kinds from ``KINDS``)."""
    return get_adapter(model).build_graph(kinds)


__all__ = ["KINDS", "DimsTracker", "Group", "LayerDims", "ModelDims", "StructureGraph", "TensorSlice", "build_graph",
           "get_adapter", "supported_model_types", "zero_groups"]
