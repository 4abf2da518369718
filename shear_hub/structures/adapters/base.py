"""Architecture adapters: the only place that knows module names and config fields of a model family.

A decoder-only family is described by *roles*: which parameter is a query/key/value/output projection, an MLP
projection, a hidden-sized norm vector, the embedding or the LM head. Groups, parameter counts, surgery and configs
are all derived from roles, so a family whose modules follow the q/k/v/o + gate/up/down pattern is one small subclass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ...errors import ShearHubError
from ..graph import (
    ATTN_BLOCKS, HEADS, HIDDEN, LAYERS, MLP, MLP_BLOCKS, QHEADS, WHOLE,
    Group, LayerDims, ModelDims, StructureGraph, TensorSlice,
)

# Roles of parameters
Q, K, V, O, GATE, UP, DOWN = "q", "k", "v", "o", "gate", "up", "down"
NORM, EMBED, LM_HEAD, FIXED = "norm", "embed", "lm_head", "fixed"
ATTN_ROLES = (Q, K, V, O)
QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")  # per-head q/k RMSNorms over head_dim (Qwen3, Gemma 3)
MLP_ROLES = (GATE, UP, DOWN)
_NOT_STOCK_KEYS = ("model_type", "architectures", "auto_map", "transformers_version")  # set by the stock class


def stock_config(cfg, config_name: str, architecture: str, drop: tuple[str, ...] = (), **overrides):
    """``cfg``'s values (minus ``drop`` and the keys the stock class sets itself) in the transformers config class
    ``config_name``, its ``architectures`` set to ``[architecture]``; ``overrides`` win over ``cfg``'s values."""
    import transformers

    values = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_STOCK_KEYS and k not in drop}
    out = getattr(transformers, config_name)(**{**values, **overrides})
    out.architectures = [architecture]
    return out


@dataclass(frozen=True)
class ParamRole:
    role: str
    layer: int | None  # decoder layer, None for embeddings / final norm / head
    is_bias: bool
    attn_fixed: bool = False  # a FIXED param that belongs to the attention block (e.g. Qwen3 q_norm)

    @property
    def is_projection(self) -> bool:
        """An attention (q/k/v/o) or MLP (gate/up/down) projection's weight or bias."""
        return self.role in ATTN_ROLES or self.role in MLP_ROLES


class DecoderAdapter:
    """Llama-pattern decoder (q/k/v/o, gate/up/down, RMSNorm). Subclasses override names and config mapping."""

    stock_model_type: str = ""  # a family's config model_type, e.g. "llama": sets model_types and per_layer_model_type
    model_types: tuple[str, ...] = ()  # the model_types served: the stock one and its per-layer twin
    layers_prefix = "model.layers"
    # a norm after each attention / MLP output before the residual add (Gemma 2/3's sandwich norms): it rescales a
    # nearly emptied block's output back up, which the surgeon's quadratic costs do not see
    post_sublayer_norms: bool = False
    module_roles = {
        "self_attn.q_proj": Q, "self_attn.k_proj": K, "self_attn.v_proj": V, "self_attn.o_proj": O,
        "mlp.gate_proj": GATE, "mlp.up_proj": UP, "mlp.down_proj": DOWN,
        "input_layernorm": NORM, "post_attention_layernorm": NORM,
    }
    attn_fixed_modules: tuple[str, ...] = ()  # per-layer params owned by attention but not sliced (q_norm...)
    global_roles = {"model.embed_tokens.weight": EMBED, "model.norm.weight": NORM, "lm_head.weight": LM_HEAD}
    norm_eps_field = "rms_norm_eps"
    supported_kinds = (HEADS, QHEADS, MLP, HIDDEN, LAYERS, ATTN_BLOCKS, MLP_BLOCKS)
    per_layer_model_type: str = ""  # e.g. "shear_llama"
    stock_config_name: str = ""  # the uniform layout's transformers config class, e.g. "MistralConfig"
    stock_architecture: str = ""  # and its architectures entry, e.g. "MistralForCausalLM"
    unsupported_reasons: dict[str, str] = {}  # kind -> why this family cannot remove it (shown in the error)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "stock_model_type" in vars(cls):  # a family's class serves its stock model_type and the per-layer twin
            cls.per_layer_model_type = f"shear_{cls.stock_model_type}"
            cls.model_types = (cls.stock_model_type, cls.per_layer_model_type)

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.config = model.config
        state = {n: p for n, p in model.named_parameters()}
        self.param_shapes_cache = {n: tuple(p.shape) for n, p in state.items()}
        self.roles = {n: self.role_of(n) for n in state}
        self._by_layer: dict[int, list] = {}
        unknown = [n for n, r in self.roles.items() if r is None]
        if unknown:
            raise ShearHubError(f"{type(model).__name__}: parameter {unknown[0]} has no known role; this variant is not supported")

    # ----- roles -------------------------------------------------------------------------------------------
    def role_of(self, name: str) -> ParamRole | None:
        if name in self.global_roles:
            return ParamRole(self.global_roles[name], None, False)
        m = re.match(rf"{re.escape(self.layers_prefix)}\.(\d+)\.(.+)\.(weight|bias)$", name)
        if not m:
            return self.extra_global_role(name)
        layer, module, kind = int(m.group(1)), m.group(2), m.group(3)
        if module in self.module_roles:
            return ParamRole(self.module_roles[module], layer, kind == "bias")
        if module in self.attn_fixed_modules:
            return ParamRole(FIXED, layer, kind == "bias", attn_fixed=True)
        return None

    def extra_global_role(self, name: str) -> ParamRole | None:
        return None

    def projection_modules(self) -> list[str]:
        """Module names inside a decoder layer (``self_attn.q_proj`` ...) of the attention / MLP projections."""
        return [m for m, r in self.module_roles.items() if r in ATTN_ROLES or r in MLP_ROLES]

    def layer_param(self, layer: int, role: str, bias: bool = False) -> str | None:
        for module, r in self.module_roles.items():
            if r == role and role != NORM:
                name = f"{self.layers_prefix}.{layer}.{module}.{'bias' if bias else 'weight'}"
                return name if name in self.roles else None
        return None

    # ----- dims --------------------------------------------------------------------------------------------
    def dims(self) -> ModelDims:
        cfg = self.config
        per_layer = getattr(cfg, "layer_dims", None)
        if per_layer:
            layers = [LayerDims(d["num_attention_heads"], d["num_key_value_heads"], d["intermediate_size"]) for d in per_layer]
        else:
            layers = [self.config_layer_dims() for _ in range(cfg.num_hidden_layers)]
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return ModelDims(cfg.hidden_size, head_dim, cfg.vocab_size, layers, self.tied())

    def config_layer_dims(self) -> LayerDims:
        """Every layer's widths in a uniform (stock) config, which has no ``layer_dims``."""
        cfg = self.config
        kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        return LayerDims(cfg.num_attention_heads, kv, cfg.intermediate_size)

    def tied(self) -> bool:
        head = dict(self.model.named_parameters(remove_duplicate=False)).get("lm_head.weight")
        embed = self.model.get_input_embeddings().weight
        return head is None or head.data_ptr() == embed.data_ptr()

    def count_params(self, dims: ModelDims) -> int:
        """Exact parameter count of the model at ``dims`` (tied weights once), from roles and shapes."""
        total = self.global_params(dims.hidden_size, dims.tied_embeddings)
        for original, layer in zip(dims.original_index, dims.layers):
            total += self.layer_params(original, layer, dims.hidden_size, dims.head_dim)
        return total

    def global_params(self, H: int, tied: bool) -> int:
        return sum(
            self._global_param_size(role, self.param_shapes_cache[name], H)
            for name, role in self.roles.items()
            if role.layer is None and not (role.role == LM_HEAD and tied)
        )

    def layer_params(self, layer: int, d: LayerDims, H: int, hd: int) -> int:
        if layer not in self._by_layer:
            self._by_layer[layer] = [(r, self.param_shapes_cache[n]) for n, r in self.roles.items() if r.layer == layer]
        return sum(self._layer_param_size(role, shape, d, H, hd) for role, shape in self._by_layer[layer])

    def scale_norm_weight(self, weight: torch.Tensor, factor: float) -> torch.Tensor:
        """RMSNorm weight multiplies the normalized input; families with (1 + w) override this."""
        return weight * factor

    def rescale_for_hidden(self, role: ParamRole, tensor: torch.Tensor, factor: float, tied: bool) -> torch.Tensor:
        """A kept tensor after hidden channels were removed (``factor`` = sqrt(H / H')): RMSNorm weights absorb the
        smaller mean square; families with other hidden-size-dependent constants (Gemma's embed scale) override."""
        if role.role == NORM and not role.is_bias:
            return self.scale_norm_weight(tensor, factor)
        return tensor

    def _layer_param_size(self, role: ParamRole, shape: tuple, d: LayerDims, H: int, hd: int) -> int:
        r = role.role
        attn_gone, mlp_gone = d.num_attention_heads == 0, d.intermediate_size == 0
        if (r in ATTN_ROLES or role.attn_fixed) and attn_gone:
            return 0
        if r in MLP_ROLES and mlp_gone:
            return 0
        q_out, kv_out = d.num_attention_heads * hd, d.num_key_value_heads * hd
        if role.is_bias:
            return {Q: q_out, K: kv_out, V: kv_out, O: H, GATE: d.intermediate_size, UP: d.intermediate_size,
                    DOWN: H, NORM: H}.get(r, _numel(shape))
        return {Q: q_out * H, K: kv_out * H, V: kv_out * H, O: H * q_out, GATE: d.intermediate_size * H,
                UP: d.intermediate_size * H, DOWN: H * d.intermediate_size, NORM: H}.get(r, _numel(shape))

    def _global_param_size(self, role: ParamRole, shape: tuple, H: int) -> int:
        if role.role in (EMBED, LM_HEAD) and not role.is_bias:
            return shape[0] * H
        if role.role == NORM:
            return H
        return _numel(shape)

    # ----- layouts -----------------------------------------------------------------------------------------
    def uniform_refusals(self) -> dict[str, str]:
        """kind -> why the uniform layout (a stock config) cannot hold it; decided by the config alone."""
        why = "attn-blocks / mlp-blocks give layers different shapes, which a stock (uniform) config cannot hold"
        return {ATTN_BLOCKS: why, MLP_BLOCKS: why}

    def layout_kinds(self, layout: str) -> tuple[str, ...]:
        """The structure kinds this model can remove and ``layout`` can hold."""
        refused = self.uniform_refusals() if layout == "uniform" else {}
        return tuple(k for k in self.supported_kinds if k not in refused)

    def check_kinds(self, kinds: list[str], layout: str) -> None:
        """Refuse, before any calibration or scoring, kinds this model or this layout cannot take."""
        unsupported = [k for k in kinds if k not in self.supported_kinds]
        if unsupported:
            why = self.unsupported_reasons.get(unsupported[0])
            raise ShearHubError(
                f"structure kind {unsupported[0]!r} is not supported for {self.config.model_type}"
                f"{f' ({why})' if why else ''}; use --structures from {','.join(self.supported_kinds)}"
            )
        if layout == "uniform":
            refused = [k for k in kinds if k in self.uniform_refusals()]
            if refused:
                raise ShearHubError(
                    f"{self.uniform_refusals()[refused[0]]}; use --layout per-layer, or --structures from "
                    f"{','.join(self.layout_kinds('uniform'))}"
                )

    # ----- groups ------------------------------------------------------------------------------------------
    def build_graph(self, kinds: list[str]) -> StructureGraph:
        self.check_kinds(kinds, "per-layer")
        dims = self.dims()
        groups: list[Group] = []
        for kind in kinds:
            groups.extend(getattr(self, "_groups_" + kind.replace("-", "_"))(dims))
        return StructureGraph(groups, dims, self)

    def _rows(self, layer: int, role: str, index: list[int]) -> list[TensorSlice]:
        out = []
        for bias in (False, True):
            name = self.layer_param(layer, role, bias)
            if name is not None:
                out.append(TensorSlice(name, 0, tuple(index)))
        return out

    def _cols(self, layer: int, role: str, index: list[int]) -> list[TensorSlice]:
        name = self.layer_param(layer, role)
        return [TensorSlice(name, 1, tuple(index))] if name else []

    def _groups_heads(self, dims: ModelDims) -> list[Group]:
        groups = []
        hd = dims.head_dim
        for layer, kv_heads, rep in _attention_layers(dims):
            for g in range(kv_heads):
                q_idx = _head_rows(range(g * rep, (g + 1) * rep), hd)
                kv_idx = _head_rows([g], hd)
                slices = self._rows(layer, Q, q_idx) + self._rows(layer, K, kv_idx) + self._rows(layer, V, kv_idx)
                slices += self._cols(layer, O, q_idx)
                groups.append(Group(HEADS, layer, g, slices))
        return groups

    def _groups_qheads(self, dims: ModelDims) -> list[Group]:
        groups = []
        for layer, kv_heads, rep in _attention_layers(dims):
            if rep < 2:
                continue  # MHA or one query head per group: nothing to remove inside a group
            for slot in range(rep):
                idx = _head_rows([g * rep + slot for g in range(kv_heads)], dims.head_dim)
                groups.append(Group(QHEADS, layer, slot, self._rows(layer, Q, idx) + self._cols(layer, O, idx)))
        return groups

    def _groups_mlp(self, dims: ModelDims) -> list[Group]:
        groups = []
        for layer, d in enumerate(dims.layers):
            for i in range(d.intermediate_size):
                slices = self._rows(layer, GATE, [i]) + self._rows(layer, UP, [i]) + self._cols(layer, DOWN, [i])
                groups.append(Group(MLP, layer, i, slices))
        return groups

    def _groups_hidden(self, dims: ModelDims) -> list[Group]:
        writers_in = (Q, K, V, GATE, UP)  # read the residual stream: input columns
        writers_out = (O, DOWN)  # write the residual stream: output rows (and biases)
        names: list[tuple[str, int]] = []
        for name, role in self.roles.items():
            if role.role == FIXED:
                continue
            if role.role in (EMBED, LM_HEAD) and not role.is_bias:
                names.append((name, 1))
            elif role.role == NORM:
                names.append((name, 0))
            elif role.role in writers_in and not role.is_bias:
                names.append((name, 1))
            elif role.role in writers_out:
                names.append((name, 0))
        return [Group(HIDDEN, None, c, [TensorSlice(n, dim, (c,)) for n, dim in names]) for c in range(dims.hidden_size)]

    def _layer_names(self, layer: int, roles: tuple[str, ...] | None = None, attn_fixed: bool = False) -> list[str]:
        return [
            n for n, r in self.roles.items()
            if r.layer == layer and (roles is None or r.role in roles or (attn_fixed and r.attn_fixed))
        ]

    def _groups_layers(self, dims: ModelDims) -> list[Group]:
        return [Group(LAYERS, i, 0, [TensorSlice(n, WHOLE, ()) for n in self._layer_names(i)]) for i in range(len(dims.layers))]

    def _groups_attn_blocks(self, dims: ModelDims) -> list[Group]:
        return [
            Group(ATTN_BLOCKS, i, 0, [TensorSlice(n, WHOLE, ()) for n in self._layer_names(i, ATTN_ROLES, attn_fixed=True)])
            for i, d in enumerate(dims.layers) if d.num_attention_heads > 0
        ]

    def _groups_mlp_blocks(self, dims: ModelDims) -> list[Group]:
        return [
            Group(MLP_BLOCKS, i, 0, [TensorSlice(n, WHOLE, ()) for n in self._layer_names(i, MLP_ROLES)])
            for i, d in enumerate(dims.layers) if d.intermediate_size > 0
        ]

    # ----- configs -----------------------------------------------------------------------------------------
    def uniform_config(self, dims: ModelDims):
        """A stock config for uniform dims (same family when its validation allows, else a compatible family)."""
        cfg = self._resized_config(dims)
        layer = dims.layers[0]
        cfg.num_attention_heads = layer.num_attention_heads
        cfg.num_key_value_heads = layer.num_key_value_heads
        cfg.intermediate_size = layer.intermediate_size
        return self.stock_config_for(cfg)

    def stock_config_for(self, cfg):
        """``cfg`` as the stock config the family declares (``stock_config_name``); without one, ``cfg`` validated."""
        if self.stock_config_name:
            return stock_config(cfg, self.stock_config_name, self.stock_architecture)
        cfg.validate()
        return cfg

    def per_layer_config(self, dims: ModelDims):
        from ...modeling import per_layer_config_class, per_layer_model_class_name

        cfg = self._resized_config(dims)
        widest = max(dims.layers, key=lambda d: (d.num_attention_heads, d.intermediate_size))
        cfg.num_attention_heads = max(widest.num_attention_heads, 1)
        cfg.num_key_value_heads = max(max(d.num_key_value_heads for d in dims.layers), 1)
        cfg.intermediate_size = max(d.intermediate_size for d in dims.layers)
        values = cfg.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "auto_map"):
            values.pop(key, None)
        values["layer_dims"] = [vars(d).copy() for d in dims.layers]
        config_cls = per_layer_config_class(self.per_layer_model_type)
        new = config_cls(**values)
        model_cls_name = per_layer_model_class_name(config_cls.model_type)
        new.architectures = [model_cls_name]
        new.auto_map = {
            "AutoConfig": f"configuration_shear.{config_cls.__name__}",
            "AutoModelForCausalLM": f"modeling_shear.{model_cls_name}",
        }
        return new

    def _resized_config(self, dims: ModelDims):
        import copy

        cfg = copy.deepcopy(self.config)
        old_hidden, n_old = cfg.hidden_size, cfg.num_hidden_layers
        cfg.hidden_size = dims.hidden_size
        cfg.head_dim = dims.head_dim
        cfg.num_hidden_layers = len(dims.layers)
        if dims.hidden_size != old_hidden and self.norm_eps_field:
            # RMSNorm over fewer channels: scaling eps by H/H' (and weights by sqrt(H/H')) keeps outputs exact
            setattr(cfg, self.norm_eps_field, getattr(cfg, self.norm_eps_field) * old_hidden / dims.hidden_size)
        for key, value in list(vars(cfg).items()):  # per-layer lists (layer_types, ...) follow the kept layers
            if isinstance(value, list) and len(value) == n_old and key not in ("layer_dims",):
                setattr(cfg, key, [value[i] for i in dims.original_index])
        if hasattr(cfg, "layer_dims"):
            del cfg.layer_dims
        return cfg


def _attention_layers(dims: ModelDims):
    """(layer, its KV heads, query heads per KV head) of each layer that still has KV heads."""
    for layer, d in enumerate(dims.layers):
        if d.num_key_value_heads:
            yield layer, d.num_key_value_heads, d.num_attention_heads // d.num_key_value_heads


def _head_rows(heads, head_dim: int) -> list[int]:
    """Row indices of ``heads`` in a projection whose rows are head_dim-sized heads, head after head."""
    return [i for h in heads for i in range(h * head_dim, (h + 1) * head_dim)]


def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
