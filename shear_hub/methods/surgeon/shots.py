"""One shot of the surgeon, shared by the structured and the mask modes: curvature and costs over every decoder
layer, one decision, then the weight updates. ``curvature=kfac`` runs here (forward + backward passes over chunks of
layers bounded by memory); ``curvature=layerwise`` in ``layerwise.py``.

The mode supplies four functions: ``score(names, factors)`` per chunk, ``decide()`` once all are scored,
``update(names, factors) -> {name: new weight}`` per chunk, and optionally ``before_updates()`` (layerwise only).
"""

from __future__ import annotations

import dataclasses
import time

import psutil
import torch

from .curvature import Factors, LayerwiseRunner, collect_kfac
from .layerwise import layerwise_shot, update_bottom_up
from .offloaded import offloaded_shot
from .state import SurgeonRun


def layer_chunks(run: SurgeonRun) -> list[list[int]]:
    """Decoder layers per forward/backward pass so that their factors fit in about half the free memory."""
    cfg = run.config
    if cfg.curvature == "layerwise":
        return [[i] for i in range(run.n_layers)]
    per_layer = [0] * run.n_layers
    for name, mod in run.linears.items():
        if run.needed is None or name in run.needed:
            per_layer[run.layer_of[name]] += 4 * (mod.in_features ** 2 + mod.out_features ** 2)
    if cfg.layers_per_pass:
        n = cfg.layers_per_pass
    else:
        dev = run.compute_device
        free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else psutil.virtual_memory().available
        n = max(1, int(0.5 * free // max(max(per_layer), 1)))
    return [list(range(s, min(s + n, run.n_layers))) for s in range(0, run.n_layers, n)]


def run_shot(run: SurgeonRun, score, decide, update, before_updates=None) -> None:
    """Curvature, costs, decision and updates of one shot; appends its timings to ``run.shot_log``."""
    ctx = run.ctx
    chunks = layer_chunks(run)
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + len(run.shot_log))
    t0 = time.perf_counter()
    n_matrices = len(run.names(list(range(run.n_layers))))
    if run.offload is not None and run.config.curvature == "kfac":
        t1 = offloaded_shot(run, score, decide, update)
        chunks = [list(range(run.n_layers))]  # one layer-by-layer pass (and one more for the updates)
    elif run.config.curvature == "layerwise":
        t1 = layerwise_shot(run, n_matrices, score, decide, update, before_updates)
    else:
        t1 = _kfac_shot(run, chunks, gen, n_matrices, score, decide, update, before_updates)
    run.shot_log.append({"curvature_and_costs_s": round(t1 - t0, 2),
                         "updates_s": round(time.perf_counter() - t1, 2), "passes": len(chunks)})


def _collect(run: SurgeonRun, k: int, layers: list[int], names: list[str], gen: torch.Generator) -> Factors:
    model = run.ctx.model
    return collect_kfac(model, run.batches(), {n: run.linears[n] for n in names},
                        first_layer=run.decoder_layers[layers[0]], fisher=run.config.fisher,
                        extras=run.extras and k == 0, embed=model.get_input_embeddings(),
                        head=model.get_output_embeddings(), vocab=run.ctx.graph.dims.vocab_size, generator=gen)


def _kfac_shot(run: SurgeonRun, chunks: list[list[int]], gen: torch.Generator, n_matrices: int,
               score, decide, update, before_updates=None) -> float:
    """K-FAC curvature per chunk of layers, scored; decide; updates per chunk (the factors are collected again
    unless there is a single chunk). Returns the time the updates started."""
    kept = None
    with run.stage("curvature and costs", len(chunks), "pass") as bar:
        for k, layers in enumerate(chunks):
            names = run.names(layers)
            f = _collect(run, k, layers, names, gen)
            run.peak_factor_bytes = max(run.peak_factor_bytes, f.nbytes())
            score(names, f)
            kept = f if len(chunks) == 1 else None
            if kept is None:
                del f
            bar.update(1)
    t1 = time.perf_counter()
    decide()
    if run.config.propagates:
        if before_updates is not None:
            before_updates()
        _propagated_updates(run, chunks, kept, gen, n_matrices, update)
        run.bar = None
        return t1
    pending: dict[str, torch.Tensor] = {}
    with run.stage("weight updates", n_matrices, "matrix"):
        for k, layers in enumerate(chunks):
            names = run.names(layers)
            f = kept
            if f is None:  # weights are only written after all chunks, so every pass sees the same model
                f = _collect(run, k, layers, names, gen)
            new = update(names, f)
            pending.update({n: w.cpu() if len(chunks) > 1 else w for n, w in new.items()})
            del f
    kept = None
    run.bar = None
    run.apply(pending)
    return t1


def _propagated_updates(run: SurgeonRun, chunks: list[list[int]], kept: Factors | None, gen: torch.Generator,
                        n_matrices: int, update) -> None:
    """``propagate=true``: updates layer by layer, bottom-up, each written before the next layer's A is collected,
    so a layer compensates on the inputs the pruned layers below really give it (SparseGPT's order). G and the
    LM-head factors stay the shot's (re-collected per chunk when there was more than one)."""
    model = run.ctx.model
    runner = LayerwiseRunner(model, run.decoder_layers, run.batches(), run.compute_device)
    with run.stage("weight updates", n_matrices, "matrix"):
        for k, layers in enumerate(chunks):
            shot = kept if kept is not None else _collect(run, k, layers, run.names(layers), gen)
            update_bottom_up(run, runner, layers, update,
                             lambda A, shot=shot: dataclasses.replace(shot, A=A, tokens=runner.tokens))
            del shot
