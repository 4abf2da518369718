"""Per-run state of one surgeon ``select`` (the model's matrices, the shot log, the open progress bar): built once by
``start_run`` and passed along the mode modules, so the method object keeps only its config."""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil
import torch

from ...errors import ShearHubError
from ...progress import bar as progress_bar
from ...structures.adapters.base import EMBED, LM_HEAD
from ...structures.graph import HIDDEN
from ..base import PruneContext
from .config import SurgeonConfig


@dataclass
class SurgeonRun:
    ctx: PruneContext
    config: SurgeonConfig
    linears: dict[str, torch.nn.Linear]  # decoder projections the surgeon scores / updates, by weight name
    layer_of: dict[str, int]  # weight name -> decoder layer
    params: dict[str, torch.nn.Parameter]
    decoder_layers: torch.nn.ModuleList
    n_layers: int
    embed_name: str | None
    head_name: str | None
    tied: bool
    extras: bool  # residual channels are scored: embedding / LM-head factors are collected too
    compute_device: torch.device
    shot_log: list[dict] = field(default_factory=list)
    needed: set[str] | None = None  # structured mode: only matrices that carry a cost or an update
    peak_factor_bytes: int = 0
    bar: object = None  # the open stage bar that matrix loops advance (``each``)
    offload: object = None  # --max-memory: the offload run (layer streams, store of updated weights), else None
    zeroed: list = field(default_factory=list)  # groups removed (zeroed) by earlier shots

    def restore_layer(self, i: int, layer: torch.nn.Module) -> None:
        """Under --max-memory, on a freshly materialized decoder layer ``i``: earlier shots' updates and zeroed groups
        (the resident path keeps them in the model itself)."""
        if self.offload is not None:
            self.offload.restore(layer, self.ctx.graph.layer_prefix(i), self.zeroed)

    def role(self, name: str):
        """The structure graph's role of weight ``name`` (None for a tensor without one)."""
        return self.ctx.graph.role(name)

    def stage(self, what: str, total: int, unit: str):
        """A bar for one stage of a shot (curvature and costs, updates), below prune's select bar; vanishes when done."""
        cfg = self.config
        shot = f"surgeon shot {len(self.shot_log) + 1}/{cfg.shots}" if cfg.shots > 1 else "surgeon"
        self.bar = progress_bar(f"{shot}: {what}", total, enabled=self.ctx.progress, leave=False, unit=unit)
        return self.bar

    def each(self, names: list[str]):
        """``names``, advancing the open stage bar after each matrix is done (updates can take minutes per layer)."""
        for name in names:
            yield name
            if self.bar is not None:
                self.bar.update(1)

    def names(self, layers: list[int]) -> list[str]:
        keep = set(layers)
        return [n for n in self.linears if self.layer_of[n] in keep and (self.needed is None or n in self.needed)]

    def batches(self):
        return self.ctx.batches("surgeon curvature")

    def token_freq(self) -> torch.Tensor:
        counts = torch.bincount(self.ctx.calibration.flatten(), minlength=self.ctx.graph.dims.vocab_size).float()
        return (counts / counts.sum()).to(self.compute_device)

    def apply(self, new: dict[str, torch.Tensor]) -> None:
        """Write updated weights into the model (in place, keeping each parameter's device and dtype); under
        --max-memory into the offload run's store, which surgery reads."""
        if self.offload is not None:
            self.offload.store(new)
        with torch.no_grad():
            for name, w in new.items():
                p = self.params[name]
                if p.device.type != "meta":  # offloaded weights: the store is what surgery reads
                    p.copy_(w.to(device=p.device, dtype=p.dtype))

    def report(self) -> None:
        ctx = self.ctx
        ctx.report["shots"] = self.shot_log
        ctx.report["peak_factor_mib"] = round(self.peak_factor_bytes / 2**20, 1)
        ctx.report["peak_rss_mib"] = round(psutil.Process().memory_info().rss / 2**20, 1)
        if self.compute_device.type == "cuda":
            ctx.report["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(self.compute_device) / 2**20, 1)


def start_run(ctx: PruneContext, config: SurgeonConfig, offload=None) -> SurgeonRun:
    """The decoder linears the surgeon works on, the embedding / LM-head names and the compute device."""
    model, graph = ctx.model, ctx.graph
    linears: dict[str, torch.nn.Linear] = {}
    layer_of: dict[str, int] = {}
    for name in graph.projection_weights():
        layer = graph.role(name).layer
        if layer is not None:
            mod = model.get_submodule(name.removesuffix(".weight"))
            if isinstance(mod, torch.nn.Linear):
                linears[name] = mod
                layer_of[name] = layer
    if not linears:
        raise ShearHubError(f"{type(model).__name__} has no linear projections the surgeon can use")
    decoder_layers = graph.decoder_layers(model)
    run = SurgeonRun(
        ctx=ctx, config=config, linears=linears, layer_of=layer_of,
        params=dict(model.named_parameters()), decoder_layers=decoder_layers, n_layers=len(decoder_layers),
        embed_name=graph.weight_of_role(EMBED), head_name=graph.weight_of_role(LM_HEAD),
        tied=graph.dims.tied_embeddings,
        extras=HIDDEN in ctx.kinds and graph.of_kind(HIDDEN) != [],
        compute_device=torch.device(config.compute_device or ctx.device), offload=offload)
    if ctx.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # factor accumulation: TF32 is ample for curvature
    return run
