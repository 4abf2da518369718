"""The surgeon under ``--max-memory``: the same K-FAC shot with the model's weights on disk, one decoder layer
resident at a time (shear_hub/layer_stream.py).

Pass 1 runs the calibration batches forward layer by layer, then backward top-down; while a layer's weights are
materialized its K-FAC factors are accumulated by the usual hooks and its matrices scored. After the global decision,
pass 2 recomputes each layer's factors the same way (the weights have not changed, nor the sampled labels: the
generator is rewound) and its OBS updates go to the offload run's store of updated weights, which surgery reads
instead of the dense weights. This is the uncapped path with one layer per pass (``layers_per_pass=1``), where the
updates are also written only after every layer is done.
"""

from __future__ import annotations

import time

import torch

from ...errors import ShearHubError
from .curvature import Factors, input_hook, kfac_loss, normalize_factors
from .state import SurgeonRun


def offload_refusal(cfg, hidden: bool) -> str | None:
    """What of these settings needs the whole model resident (None: they run under --max-memory)."""
    unsupported = [f"{key}={value}" for key, value, ok in (
        ("mode", cfg.mode, cfg.mode == "structured"), ("lora_rank", cfg.lora_rank, not cfg.lora_rank),
        # only an explicit propagate=true: the mask modes' default goes with dropping their mode
        ("propagate", "true", cfg.propagate is not True)) if not ok]
    if hidden:
        unsupported.append("'hidden' in --structures")
    if not unsupported:
        return None
    return ("runs mode=structured without LoRA between shots, propagated updates or residual channels; drop "
            + ", ".join(unsupported))


def check_offloaded(run: SurgeonRun) -> None:
    why = offload_refusal(run.config, run.extras)
    if why:
        raise ShearHubError(f"--method surgeon under --max-memory {why}, or drop --max-memory")


def offloaded_shot(run: SurgeonRun, score, decide, update) -> float:
    """Curvature and costs (pass 1), decision, updates (pass 2) of one shot on the dispatched model. Returns the
    time the updates started."""
    ctx = run.ctx
    requires = {n: p.requires_grad for n, p in ctx.model.named_parameters()}
    ctx.model.requires_grad_(False)  # gradients flow to the layer inputs only, as in collect_kfac
    try:
        return _shot(run, score, decide, update)
    finally:
        for n, p in ctx.model.named_parameters():
            p.requires_grad_(requires.get(n, False))


def _shot(run: SurgeonRun, score, decide, update) -> float:
    ctx = run.ctx
    stream = run.offload.stream(ctx, "surgeon curvature", prepare=run.restore_layer)
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + len(run.shot_log))
    start = gen.get_state()
    stream.forward()
    down_to = min(run.layer_of[n] for n in run.names(list(range(run.n_layers))))
    with run.stage("curvature and costs", run.n_layers - down_to, "layer") as bar:
        _pass(run, stream, gen, down_to, lambda names, f: (score(names, f), bar.update(1)))
    t1 = time.perf_counter()
    decide()
    gen.set_state(start)  # pass 2 draws the same sampled labels (fisher=sampled) as pass 1
    n_matrices = len(run.names(list(range(run.n_layers))))
    with run.stage("weight updates", n_matrices, "matrix"):
        _pass(run, stream, gen, down_to, lambda names, f: run.offload.store(update(names, f)))
    run.bar = None
    return t1


def _pass(run: SurgeonRun, stream, gen: torch.Generator, down_to: int, use) -> None:
    """One backward pass over the stream; ``use(names, factors)`` for each layer while its weights are resident."""
    seen: list = []
    state: dict = {}

    def before(i: int, layer: torch.nn.Module) -> None:
        names = run.names([i])
        f, alias = Factors(tokens=stream.tokens), {}
        state.update(names=names, f=f, alias=alias, hooks=[
            run.linears[n].register_forward_hook(input_hook(n, f.A, alias, seen, G=f.G)) for n in names])

    def after(i: int, layer: torch.nn.Module) -> None:
        for h in state.pop("hooks"):
            h.remove()
        f = state.pop("f")
        normalize_factors(f, state.pop("alias"))
        run.peak_factor_bytes = max(run.peak_factor_bytes, f.nbytes())
        names = state.pop("names")
        run.params.update(run.ctx.graph.layer_params(i, layer, names))  # the materialized weights: costs / updates
        use(names, f)

    stream.backward(lambda logits, ids: kfac_loss(logits, ids, run.config.fisher, gen), down_to=down_to,
                    before_layer=before, after_layer=after, on_batch=seen.clear)
