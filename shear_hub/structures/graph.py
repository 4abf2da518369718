"""The structure graph: removable groups of a model, each the set of tensor slices that disappear together.

Methods score groups, the allocator picks groups, surgery slices exactly the listed tensor slices. Architecture
knowledge (module names, config fields) lives in ``adapters/``; everything here is architecture-neutral.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

# Structure kinds, as named on the CLI (--structures)
HEADS = "heads"  # a whole KV group: its k/v rows and all of its query heads (q rows, o columns)
QHEADS = "qheads"  # query-head slot j of every KV group of a layer (keeps the GQA layout valid)
MLP = "mlp"  # MLP channel: gate/up rows + down column
HIDDEN = "hidden"  # residual channel: embedding column, norm entries, every projection's column/row, lm_head column
LAYERS = "layers"  # a whole decoder layer
ATTN_BLOCKS = "attn-blocks"  # a layer's whole attention block (per-layer layout)
MLP_BLOCKS = "mlp-blocks"  # a layer's whole MLP block (per-layer layout)
KINDS = (HEADS, QHEADS, MLP, HIDDEN, LAYERS, ATTN_BLOCKS, MLP_BLOCKS)
WHOLE = -1  # TensorSlice.dim for "the entire tensor"


@dataclass(frozen=True)
class TensorSlice:
    """Indices ``index`` along ``dim`` of parameter ``param`` (dim 0: output rows, 1: input columns)."""

    param: str
    dim: int
    index: tuple[int, ...]


@dataclass
class Group:
    """A minimally removable structure."""

    kind: str
    layer: int | None
    index: int
    slices: list[TensorSlice]

    @property
    def name(self) -> str:
        return f"{self.kind}[{self.layer}].{self.index}" if self.layer is not None else f"{self.kind}.{self.index}"


@dataclass
class LayerDims:
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


@dataclass
class ModelDims:
    """Widths of a model; ``layers`` holds the kept decoder layers' widths, ``original_index`` where they came from."""

    hidden_size: int
    head_dim: int
    vocab_size: int
    layers: list[LayerDims]
    tied_embeddings: bool
    original_index: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.original_index:
            self.original_index = list(range(len(self.layers)))

    def is_uniform(self) -> bool:
        return all(asdict(layer) == asdict(self.layers[0]) for layer in self.layers) and all(
            layer.num_attention_heads > 0 and layer.intermediate_size > 0 for layer in self.layers
        )

    def to_json(self) -> dict:
        removed = sorted(set(range(max(self.original_index, default=-1) + 1)) - set(self.original_index))
        return {
            "hidden_size": self.hidden_size,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "num_hidden_layers": len(self.layers),
            "layers": [asdict(layer) for layer in self.layers],
            "original_layer_index": self.original_index,
            "removed_layers": removed,
        }


@dataclass
class StructureGraph:
    """All groups of the requested kinds plus the model's dims; the contract between scorers, allocator, surgery."""

    groups: list[Group]
    dims: ModelDims
    adapter: object  # the ArchitectureAdapter that built it

    def of_kind(self, kind: str) -> list[Group]:
        return [g for g in self.groups if g.kind == kind]

    def group_sizes(self) -> torch.Tensor:
        """Parameters each group owns on its own (overlaps with other kinds counted in each)."""
        if getattr(self, "_sizes", None) is None:
            shapes = self.adapter.param_shapes_cache
            sizes = []
            for g in self.groups:
                n = 0
                for s in g.slices:
                    numel = math.prod(shapes[s.param])
                    n += numel if s.dim == WHOLE else numel // shapes[s.param][s.dim] * len(s.index)
                sizes.append(n)
            self._sizes = torch.tensor(sizes, dtype=torch.float64)
        return self._sizes

    def group_size(self, i: int) -> int:
        return int(self.group_sizes()[i])

    # ----- parameter roles: what methods may ask of the adapter's roles --------------------------------------
    def role(self, name: str):
        """The ``ParamRole`` of parameter ``name``; None for a tensor without one (buffers)."""
        return self.adapter.roles.get(name)

    def param_names(self) -> list[str]:
        """Every parameter the graph knows a role of (the model's parameters, tied ones once), in model order."""
        return list(self.adapter.roles)

    def weight_of_role(self, role: str) -> str | None:
        """The first weight (not bias) with role ``role`` (e.g. the embedding, the LM head); None if none."""
        return next((n for n, r in self.adapter.roles.items() if r.role == role and not r.is_bias), None)

    @property
    def post_sublayer_norms(self) -> bool:
        """Whether a norm follows each attention / MLP output before the residual add (Gemma 2/3)."""
        return bool(getattr(self.adapter, "post_sublayer_norms", False))

    @property
    def layers_prefix(self) -> str:
        """Module path of the decoder layers (``model.layers``)."""
        return self.adapter.layers_prefix

    def layer_prefix(self, index: int) -> str:
        """Parameter-name prefix of decoder layer ``index`` (``model.layers.3.``)."""
        return f"{self.adapter.layers_prefix}.{index}."

    def decoder_layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        return model.get_submodule(self.adapter.layers_prefix)

    def layer_params(self, index: int, layer: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Parameter]:
        """Decoder layer ``index``'s parameters by their full names (``names``), as the module holds them now (under
        --max-memory: the materialized ones while the layer is onloaded)."""
        head = self.layer_prefix(index)
        own = dict(layer.named_parameters())
        return {n: own[n[len(head):]] for n in names}

    def projection_weights(self) -> list[str]:
        """Names of the attention / MLP projection weights (not their biases), in model order."""
        return [n for n, r in self.adapter.roles.items() if r.is_projection and not r.is_bias]

    def projection_modules(self) -> list[str]:
        """Module names inside a decoder layer (``self_attn.q_proj`` ...) of the attention / MLP projections."""
        return self.adapter.projection_modules()


def count_params(model: torch.nn.Module) -> int:
    """Parameters of a model, tied weights counted once (``parameters()`` yields a shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


def zero_groups(model: torch.nn.Module, groups: list[Group], prefix: str | None = None) -> None:
    """Zero every slice of ``groups`` in place: the dense reference for masked-equivalence tests, and the way
    iterative methods take structures out before surgery. With ``prefix``, ``model`` is the submodule of that name
    (e.g. one decoder layer, ``model.layers.3.``) and only the slices inside it are zeroed."""
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    if prefix is not None:
        params = {prefix + n: p for n, p in params.items()}
    with torch.no_grad():
        for group in groups:
            for s in group.slices:
                if prefix is not None and not s.param.startswith(prefix):
                    continue
                tensor = params[s.param]
                if s.dim == WHOLE:
                    tensor.zero_()
                else:
                    tensor.index_fill_(s.dim, torch.tensor(s.index, device=tensor.device), 0.0)
