"""Phi-3: fused ``qkv_proj`` (rows q | k | v) and ``gate_up_proj`` (rows gate | up).

The fused weights carry the Q and GATE roles (so block removal and hidden columns work unchanged); the K, V and UP
roles are row ranges of the same tensors at an offset that depends on the layer's own widths.
"""

from __future__ import annotations

from .base import DOWN, GATE, K, NORM, O, Q, UP, V, DecoderAdapter, ParamRole, TensorSlice
from ..graph import LayerDims


class Phi3Adapter(DecoderAdapter):
    stock_model_type = "phi3"
    stock_config_name = "Phi3Config"
    stock_architecture = "Phi3ForCausalLM"
    module_roles = {
        "self_attn.qkv_proj": Q, "self_attn.o_proj": O, "mlp.gate_up_proj": GATE, "mlp.down_proj": DOWN,
        "input_layernorm": NORM, "post_attention_layernorm": NORM,
    }
    _fused = {K: Q, V: Q, UP: GATE}  # role -> role whose (fused) tensor holds its rows

    def _offset(self, layer: int, role: str) -> int:
        if not hasattr(self, "_base_dims"):  # offsets refer to the unpruned tensors this adapter sees
            self._base_dims = self.dims()
        dims = self._base_dims
        d, hd = dims.layers[layer], dims.head_dim
        return {Q: 0, K: d.num_attention_heads * hd, V: (d.num_attention_heads + d.num_key_value_heads) * hd,
                GATE: 0, UP: d.intermediate_size}[role]

    def _rows(self, layer: int, role: str, index: list[int]) -> list[TensorSlice]:
        name = self.layer_param(layer, self._fused.get(role, role))
        if name is None:
            return []
        off = self._offset(layer, role) if role in (Q, K, V, GATE, UP) else 0
        return [TensorSlice(name, 0, tuple(i + off for i in index))]

    def _layer_param_size(self, role: ParamRole, shape: tuple, d: LayerDims, H: int, hd: int) -> int:
        n = super()._layer_param_size(role, shape, d, H, hd)
        if role.role == Q and not role.is_bias and n:  # q | k | v rows
            return (d.num_attention_heads + 2 * d.num_key_value_heads) * hd * H
        if role.role == GATE and not role.is_bias and n:  # gate | up rows
            return 2 * d.intermediate_size * H
        return n
