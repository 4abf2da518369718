"""Exact gradients through a model dispatched under ``--max-memory``, one decoder layer resident at a time.

    capture   each calibration batch runs through the embedding into stand-ins for the decoder layers, which record
              every layer's input arguments (masks and position embeddings differ per layer type, e.g. Gemma 3's
              sliding and full-attention layers) and the hidden states entering layer 0.
    forward   the layers run one at a time, every batch through a layer before the next (each layer's weights are
              read once, with accelerate's ``align_module_device``); each layer's inputs are staged on disk
              (safetensors) for the backward pass.
    head      the model's own forward with its decoder layers taken out, fed the last layer's outputs as
              ``inputs_embeds``: final norm, LM head and any logit soft-capping, then the caller's loss.
    backward  top-down: each layer is recomputed from its staged input and back-propagated with the gradient coming
              from the layer above, so parameter gradients and module hooks (K-FAC factors) see what a full backward
              pass of the whole model gives, while one layer's weights and one batch's activations are resident.

This is llm-compressor's sequential pipeline extended with the backward pass that first-order Taylor scores and the
surgeon's K-FAC curvature need; no library offers that on accelerate's offloaded models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import nn

from .compat import cache_keyword


@contextmanager
def onloaded(module: nn.Module) -> Iterator[None]:
    """Every offloaded weight under ``module`` materialized for the duration (accelerate's ``align_module_device``
    per submodule), with the hooks told not to offload between calls: the weights are read once for many batches
    and keep their ``.grad``. Resident modules are left as they are."""
    from accelerate.utils import align_module_device, has_offloaded_params

    leaves = [m for m in module.modules() if has_offloaded_params(m)]
    with ExitStack() as stack:
        for m in leaves:
            stack.enter_context(align_module_device(m))
        for m in leaves:
            m._hf_hook.offload = False  # forward calls inside must not put the weights back on the meta device
        try:
            yield
        finally:
            for m in leaves:
                m._hf_hook.offload = True  # so that align_module_device's exit offloads them again


@contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[None]:
    """``module``'s weights on ``device`` for the duration: ``onloaded`` when accelerate offloaded them (they come
    to the hooks' execution device), else moved there and back (a CPU-resident model computing on a GPU)."""
    from accelerate.utils import has_offloaded_params

    if any(has_offloaded_params(m) for m in module.modules()):
        with onloaded(module):
            yield
        return
    param = next(module.parameters(), None)
    home = param.device if param is not None else device
    if home == device:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


def input_device(model: nn.Module) -> torch.device:
    """Where token ids go: the first parameter's device, the CPU when it is offloaded (accelerate's hooks move
    inputs)."""
    device = next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for decoder layer ``index`` during capture: records its arguments, passes the hidden states on."""

    def __init__(self, index: int, real: nn.Module, record: Callable, last: bool):
        super().__init__()
        self.index, self.record, self.last = index, record, last
        self.cache_key = cache_keyword(real)
        if hasattr(real, "attention_type"):  # models that pick a layer's mask by its type read it from the layer
            self.attention_type = real.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        kwargs = dict(kwargs)
        kwargs["use_cache"] = False
        kwargs[self.cache_key] = None
        self.record(self.index, hidden_states.detach(), args, kwargs)
        if self.last:
            raise _Stop
        return hidden_states


def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, batches) -> tuple[list, list[list[tuple]]]:
    """(hidden states entering layer 0 per batch, per layer the (args, kwargs) it is called with per batch): the
    model's forward runs with stand-ins for its decoder layers, so no decoder weight is read. Per layer, not layer 0's
    for all: masks and position embeddings differ by layer type (Gemma 2/3 sliding vs full attention, Qwen2's
    sliding layers)."""
    n = len(layers)
    inputs: list[torch.Tensor] = []
    calls: list[list[tuple]] = [[] for _ in range(n)]

    def record(i: int, hidden: torch.Tensor, args: tuple, kwargs: dict) -> None:
        calls[i].append((args, kwargs))
        if i == 0:
            inputs.append(hidden)

    real = list(layers)
    for i in range(n):
        layers[i] = _Recorder(i, real[i], record, last=i == n - 1)
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(input_ids=ids, use_cache=False)
                except _Stop:
                    pass
    finally:
        for i in range(n):
            layers[i] = real[i]
    return inputs, calls


def layer_output(out):
    """The hidden states a decoder layer returns (a tensor, or the first item of a tuple in some families)."""
    return out[0] if isinstance(out, tuple) else out


class LayerStream:
    """Forward and backward passes of the calibration batches through ``layers`` (the model's decoder layers),
    one layer resident at a time; staged activations live in ``workdir``."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, batches: list[torch.Tensor], workdir: Path,
                 prepare: Callable[[int, nn.Module], None] | None = None):
        self.model, self.layers, self.batches = model, layers, batches
        # called with each layer's weights materialized, before it runs (e.g. to put a method's earlier updates in)
        self.prepare = prepare or (lambda i, layer: None)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kwargs: list[list[tuple]] = [[] for _ in layers]
        self.current: list[torch.Tensor] = []  # hidden states entering the next layer, one per batch
        self.tokens = sum(int(ids.numel()) for ids in batches)

    # ------------------------------------------------------------------------------------------------ forward ----
    def forward(self) -> None:
        """Capture, then every layer in turn; afterwards ``self.current`` holds the last layer's outputs."""
        self._capture()
        for i, layer in enumerate(self.layers):
            self._stage(i)
            with onloaded(layer), torch.no_grad():
                self.prepare(i, layer)
                self.current = [layer_output(layer(x, *args, **kw)).detach()
                                for x, (args, kw) in zip(self.current, self.kwargs[i])]

    def _capture(self) -> None:
        self.current, self.kwargs = capture_layer_inputs(self.model, self.layers, self.batches)

    def _stage(self, i: int) -> None:
        from safetensors.torch import save_file

        save_file({f"b{b}": x.contiguous() for b, x in enumerate(self.current)}, str(self.workdir / f"in{i}.safetensors"))

    @contextmanager
    def _staged(self, i: int) -> Iterator[Callable[[int], torch.Tensor]]:
        """Layer ``i``'s staged inputs, the file opened once for all its batches: yields ``batch -> tensor``."""
        from safetensors import safe_open

        with safe_open(str(self.workdir / f"in{i}.safetensors"), framework="pt") as f:
            yield lambda b: f.get_tensor(f"b{b}").to(self.current[b].device)

    # ------------------------------------------------------------------------------------------------ backward ---
    def head_gradients(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """dLoss/dh of the last layer's outputs, per batch: the model's forward without its decoder layers, on
        ``inputs_embeds`` = those outputs, then ``loss_fn(logits, ids)`` back-propagated."""
        parent, attr = _owner(self.model, self.layers)
        setattr(parent, attr, nn.ModuleList())
        grads = []
        try:
            with onloaded(self.model.get_output_embeddings()), torch.enable_grad():
                for h, ids in zip(self.current, self.batches):
                    h = h.detach().requires_grad_(True)
                    logits = self.model(inputs_embeds=h, use_cache=False).logits
                    loss_fn(logits, ids).backward()
                    grads.append(h.grad.detach())
        finally:
            setattr(parent, attr, self.layers)
        return grads

    def backward(self, loss_fn, *, down_to: int = 0, before_layer: Callable[[int, nn.Module], None] | None = None,
                 after_layer: Callable[[int, nn.Module], None] | None = None,
                 on_batch: Callable[[], None] | None = None) -> None:
        """Back-propagate ``loss_fn`` from the top down to layer ``down_to``. ``before_layer(i, layer)`` runs with the
        layer's weights materialized, before its batches (set ``requires_grad``, add hooks); ``after_layer(i, layer)``
        after them, still materialized (read ``.grad``, score, update); ``on_batch()`` before each batch."""
        grads = self.head_gradients(loss_fn)
        for i in reversed(range(down_to, len(self.layers))):
            layer = self.layers[i]
            with onloaded(layer), torch.enable_grad(), self._staged(i) as staged:
                with torch.no_grad():
                    self.prepare(i, layer)
                if before_layer is not None:
                    before_layer(i, layer)
                for b, (args, kw) in enumerate(self.kwargs[i]):
                    if on_batch is not None:
                        on_batch()
                    x = staged(b).requires_grad_(True)
                    layer_output(layer(x, *args, **kw)).backward(grads[b])
                    grads[b] = x.grad.detach()
                    del x
                if after_layer is not None:
                    after_layer(i, layer)


def _owner(model: nn.Module, layers: nn.ModuleList) -> tuple[nn.Module, str]:
    """(module, attribute) that holds ``layers`` (``model.model`` / ``layers`` for the families shear-hub knows)."""
    for module in model.modules():
        for name, child in module.named_children():
            if child is layers:
                return module, name
    raise ValueError("internal: the decoder layers are not a child of the model")
