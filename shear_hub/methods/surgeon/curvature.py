"""Kronecker factors of the Fisher of each linear layer: A = E[a a^T] over layer inputs, G = E[g g^T] over the
gradients of the loss w.r.t. the layer output (all accumulated in fp32).

* ``collect_kfac``: forward + backward passes of the whole model with hooks on the chosen linears; gradients flow
  only from the first hooked layer up (no parameter gradients are ever formed).
* ``LayerwiseRunner``: G = I; the calibration activations are cached at the input of decoder layer 0 and pushed
  through one layer at a time, so only one layer (and its A factors) need to be on the compute device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...layer_stream import capture_layer_inputs, input_device, layer_output, on_device


@dataclass
class Factors:
    """Per linear weight name: A (in x in) and G (out x out, None = identity); tensors may be shared (q/k/v)."""

    A: dict[str, torch.Tensor] = field(default_factory=dict)
    G: dict[str, torch.Tensor] = field(default_factory=dict)
    # hidden-channel extras (embedding / LM head), only when residual channels are scored
    embed_G: torch.Tensor | None = None  # E[g g^T] of the embedding output
    token_freq: torch.Tensor | None = None  # token frequencies (the embedding's diagonal A)
    head_A: torch.Tensor | None = None  # E[x x^T] of the LM head input
    head_gsq: torch.Tensor | None = None  # E[(dL/dx_c)^2] of the LM head input = diag(W^T G W)
    tokens: int = 0

    def nbytes(self) -> int:
        seen, total = set(), 0
        for t in list(self.A.values()) + list(self.G.values()) + [self.embed_G, self.head_A]:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total


def _outer(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1]).float()
    return x.T @ x


def _first_tensor(args, kwargs):
    if args:
        return args[0]
    return kwargs.get("hidden_states")


def input_hook(name: str, A: dict, alias: dict, seen: list, G: dict | None = None):
    """Forward hook of linear ``name``: A[name] += x^T x over its input x. A linear fed the very tensor an earlier
    one got in this batch (q/k/v) is aliased to it instead (``seen`` is cleared per batch). With ``G``, a gradient
    hook on the output also adds G[name] += g^T g."""
    def hook(mod, inputs, out):
        x = inputs[0]
        owner = next((n for t, n in seen if t is x), None)
        if owner is not None and owner != name:
            alias.setdefault(name, owner)
        elif name not in alias:
            seen.append((x, name))
            xx = _outer(x.detach())
            A[name] = A[name] + xx if name in A else xx
        if G is not None and out.requires_grad:
            def ghook(g):
                gg = _outer(g.detach())
                G[name] = G[name] + gg if name in G else gg
            out.register_hook(ghook)
    return hook


def _start_grad(mod, args, kwargs):
    """Pre-hook of the first hooked decoder layer: its input becomes a leaf that requires grad."""
    h = _first_tensor(args, kwargs)
    h = h.detach().requires_grad_(True)
    if args:
        return (h,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = h
    return args, kwargs


def _extras_hooks(f: Factors, embed: torch.nn.Module, head: torch.nn.Module) -> list:
    """Hooks for the residual-channel extras: G of the embedding output (gradients start there) and A and the
    squared input gradients of the LM head."""
    def emb_hook(mod, inputs, out):
        out = out.detach().requires_grad_(True)

        def ghook(g):
            gg = _outer(g.detach())
            f.embed_G = gg if f.embed_G is None else f.embed_G + gg
        out.register_hook(ghook)
        return out

    def head_hook(mod, inputs, out):
        x = inputs[0]
        xx = _outer(x.detach())
        f.head_A = xx if f.head_A is None else f.head_A + xx
        if x.requires_grad:
            def ghook(g):
                sq = g.detach().float().reshape(-1, g.shape[-1]).pow(2).sum(0)
                f.head_gsq = sq if f.head_gsq is None else f.head_gsq + sq
            x.register_hook(ghook)

    return [embed.register_forward_hook(emb_hook), head.register_forward_hook(head_hook)]


def kfac_loss(logits: torch.Tensor, ids: torch.Tensor, fisher: str, generator: torch.Generator | None) -> torch.Tensor:
    """The summed next-token loss whose gradients give G: on the true next tokens (empirical Fisher) or on labels
    drawn from the model's own softmax (``sampled``)."""
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    if fisher == "sampled":
        with torch.no_grad():
            labels = torch.multinomial(torch.softmax(flat, -1), 1, generator=generator).flatten()
    else:
        labels = ids[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(flat, labels, reduction="sum")


def _backward(model: torch.nn.Module, ids: torch.Tensor, fisher: str, generator: torch.Generator | None) -> None:
    """One forward + backward pass of the summed next-token loss (the hooks accumulate the factors)."""
    with torch.enable_grad():
        loss = kfac_loss(model(input_ids=ids, use_cache=False).logits, ids, fisher, generator)
        if loss.requires_grad:
            loss.backward()
    del loss


def normalize_factors(f: Factors, alias: dict[str, str]) -> None:
    """Sums -> means over the tokens seen; aliased linears share their owner's A."""
    n = max(f.tokens, 1)
    for d in (f.A, f.G):
        for k in d:
            d[k] /= n
    for name, owner in alias.items():
        f.A[name] = f.A[owner]
    for attr in ("embed_G", "token_freq", "head_A", "head_gsq"):
        t = getattr(f, attr)
        if t is not None:
            setattr(f, attr, t / n)


def collect_kfac(model: torch.nn.Module, batches, linears: dict[str, torch.nn.Linear], *,
                 first_layer: torch.nn.Module | None, fisher: str = "empirical", extras: bool = False,
                 embed: torch.nn.Module | None = None, head: torch.nn.Module | None = None,
                 vocab: int = 0, generator: torch.Generator | None = None) -> Factors:
    """Accumulate A and G for ``linears`` (keyed by weight name) over the calibration ``batches``.

    ``first_layer``: the lowest decoder layer holding a hooked linear; its input is where gradients start (so the
    layers below run without autograd). With ``extras`` gradients start at the embedding output instead.
    """
    f = Factors()
    alias: dict[str, str] = {}  # weight name -> weight name whose A it shares (same input tensor)
    batch_inputs: list[tuple[torch.Tensor, str]] = []  # held for the batch, so identity checks stay valid
    hooks = [mod.register_forward_hook(input_hook(name, f.A, alias, batch_inputs, G=f.G))
             for name, mod in linears.items()]
    if extras:
        hooks.extend(_extras_hooks(f, embed, head))
    elif first_layer is not None:
        hooks.append(first_layer.register_forward_pre_hook(_start_grad, with_kwargs=True))

    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for ids in batches:
            batch_inputs.clear()
            _backward(model, ids, fisher, generator)
            f.tokens += ids.numel()
            if extras:
                counts = torch.bincount(ids.flatten(), minlength=vocab).float()
                f.token_freq = counts if f.token_freq is None else f.token_freq + counts
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
    normalize_factors(f, alias)
    return f


def _to(value, device, moved: dict):
    """``value`` on ``device``; a tensor shared by several layers / batches (masks, position embeddings) is moved
    once (``moved``, by identity)."""
    if isinstance(value, torch.Tensor):
        if id(value) not in moved:
            moved[id(value)] = (value, value.to(device))  # the source is kept so that its id is not reused
        return moved[id(value)][1]
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device, moved) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device, moved) for k, v in value.items()}
    return value


class LayerwiseRunner:
    """Push cached calibration activations through the decoder one layer at a time (SparseGPT-style). Each layer
    gets the arguments it gets in the model's own forward (layer_stream.capture_layer_inputs); an offloaded layer
    (--max-memory) is read once per pass (layer_stream.on_device)."""

    def __init__(self, model: torch.nn.Module, layers: torch.nn.ModuleList, batches, device: torch.device):
        self.model, self.layers, self.device = model, layers, device
        ids_device = input_device(model)
        inputs, calls = capture_layer_inputs(model, layers, [ids.to(ids_device) for ids in batches])
        moved: dict = {}
        self.inputs: list[torch.Tensor] = [x.to(device) for x in inputs]
        self.calls: list[list[tuple]] = [[(_to(args, device, moved), _to(kw, device, moved)) for args, kw in per]
                                         for per in calls]
        self.tokens = sum(x.shape[0] * x.shape[1] for x in self.inputs)

    def collect_A(self, index: int, linears: dict[str, torch.nn.Linear], advance: bool = False) -> dict[str, torch.Tensor]:
        """A for the named linears of layer ``index`` over the cached inputs; ``advance`` replaces the cache with
        the layer's outputs (call again with advance after updating the layer)."""
        A: dict[str, torch.Tensor] = {}
        alias: dict[str, str] = {}
        seen: list[tuple[torch.Tensor, str]] = []
        hooks = [mod.register_forward_hook(input_hook(name, A, alias, seen)) for name, mod in linears.items()]
        try:
            self.run(index, advance=advance, on_batch=seen.clear)
        finally:
            for h in hooks:
                h.remove()
        for k in A:
            A[k] /= max(self.tokens, 1)
        for name, owner in alias.items():
            A[name] = A[owner]
        return A

    @torch.no_grad()
    def run(self, index: int, advance: bool = True, on_batch=None) -> None:
        layer = self.layers[index]
        with on_device(layer, self.device):
            for b, (x, (args, kw)) in enumerate(zip(self.inputs, self.calls[index])):
                if on_batch is not None:
                    on_batch()
                out = layer_output(layer(x.to(self.device), *args, **kw))
                if advance:
                    self.inputs[b] = out.detach()
