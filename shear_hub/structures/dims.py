"""Widths and parameter count of a model while groups are removed one at a time (allocation, surgery, lorashear)."""

from __future__ import annotations

from .graph import ATTN_BLOCKS, HEADS, HIDDEN, LAYERS, MLP, MLP_BLOCKS, QHEADS, Group, LayerDims, ModelDims, StructureGraph


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
