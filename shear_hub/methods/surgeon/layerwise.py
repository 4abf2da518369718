"""``curvature=layerwise``: G = I and A from calibration activations pushed through the decoder one layer at a time
(``curvature.LayerwiseRunner``), so only one decoder layer and its factors need to be on the compute device."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

from ...layer_stream import on_device
from .curvature import Factors, LayerwiseRunner
from .state import SurgeonRun


def layerwise_shot(run: SurgeonRun, n_matrices: int, score, decide, update, before_updates=None) -> float:
    """Score every layer on the activations of the current model; decide; then update layer by layer, each layer's
    A taken from the outputs of the already updated layers below. Returns the time the updates started."""
    model = run.ctx.model
    runner = LayerwiseRunner(model, run.decoder_layers, run.batches(), run.compute_device)
    with run.stage("curvature and costs", run.n_layers, "layer") as bar:
        for i in range(run.n_layers):
            names = run.names([i])
            with _resident(run, i, names):
                A = runner.collect_A(i, {n: run.linears[n] for n in names}, advance=True)
                f = Factors(A=A, tokens=runner.tokens)
                if i == 0 and run.extras:
                    f.token_freq = run.token_freq()
                run.peak_factor_bytes = max(run.peak_factor_bytes, f.nbytes())
                score(names, f)
            bar.update(1)
    t1 = time.perf_counter()
    decide()
    if before_updates is not None:
        before_updates()
    runner = LayerwiseRunner(model, run.decoder_layers, run.batches(), run.compute_device)
    with run.stage("weight updates", n_matrices, "matrix"):
        update_bottom_up(run, runner, range(run.n_layers), update, lambda A: Factors(A=A, tokens=runner.tokens))
    return t1


def update_bottom_up(run: SurgeonRun, runner: LayerwiseRunner, layers, update, factors) -> None:
    """Update ``layers`` in order, each on A collected from the runner's current inputs (the outputs of the layers
    below as already updated), then advance the runner through the updated layer. ``factors(A)`` builds what
    ``update(names, factors)`` reads."""
    for i in layers:
        names = run.names([i])
        with _resident(run, i, names):
            A = runner.collect_A(i, {n: run.linears[n] for n in names}, advance=False)
            run.apply(update(names, factors(A)))
            runner.run(i, advance=True)  # the next layer sees this layer's updated outputs


@contextmanager
def _resident(run: SurgeonRun, i: int, names: list[str]):
    """Layer ``i``'s weights readable for the duration (under --max-memory: read once from disk, and
    ``run.params`` pointed at them, so costs and updates see them and ``run.apply`` can write into them)."""
    layer = run.decoder_layers[i]
    with on_device(layer, run.compute_device) if run.offload is not None else nullcontext():
        if run.offload is not None:
            run.restore_layer(i, layer)
            run.params.update(run.ctx.graph.layer_params(i, layer, names))
        yield
