"""The LLM Surgeon (van der Ouderaa et al., ICLR 2024) as ``--method surgeon``.

Per shot t = 1..T (target t/T of the final one):
  1. curvature: Kronecker factors A, G of every decoder linear (``curvature.py``), layer chunks bounded by memory;
  2. costs: each group's cost is the sum over the matrices it touches of the OBS row / column costs (joint for a
     group owning several rows of a matrix, e.g. a head) -- ``obs.py``;
  3. allocation: one global threshold over all groups (``allocation.allocate``; uniform = same count per layer);
  4. updates: per matrix, all rows / columns removed in this shot are solved jointly (correlated OBS update), then
     the removed groups are zeroed in the dense model and stay removed; curvature of the next shot is recomputed
     on the remaining (alive) rows and columns only.
The core then slices the removed groups out (surgery). ``mode=unstructured|2:4`` instead masks single weights with
the same curvature and OBS updates; the model keeps its shapes (zeros inside) and no groups are returned.

This class only dispatches; the code lives by stage: ``state.py`` (per-run state), ``shots.py`` (the shot driver,
K-FAC curvature), ``layerwise.py`` (curvature=layerwise), ``structured.py`` (mode=structured), ``masks.py``
(mode=unstructured / 2:4), ``lora.py`` (the optional LoRA update between shots).
"""

from __future__ import annotations

from ...structures.graph import HIDDEN, Group
from ..base import Citation, PruneContext, PruningMethod, register_method
from .config import SurgeonConfig
from .masks import select_masks
from .offloaded import check_offloaded, offload_refusal
from .state import start_run
from .structured import select_structured


def kfac_factor_bytes(layer_linears: dict[str, list[tuple[int, int]]], layerwise: bool) -> int:
    """K-FAC factors (float32) of the largest decoder layer, from its projections' (in, out) shapes; layerwise
    keeps only A (input side). Doubled: the factors and their inverses / eigendecompositions."""
    if not layer_linears:
        return 0
    per_layer = [sum(i * i + (0 if layerwise else o * o) for i, o in shapes) * 4 for shapes in layer_linears.values()]
    return 2 * max(per_layer)


@register_method
class SurgeonMethod(PruningMethod):
    name = "surgeon"
    display_name = "LLM Surgeon"
    config_class = SurgeonConfig
    # 128 x 512 tokens: 1.80x instead of 1.95x dense on the held-out domains and 1.36x instead of 1.48x on the
    # calibration domain at 20% (benchmarks/README.md, "LLM Surgeon knobs"); about 7 min on 2 CPU cores for SmolLM2
    calibration_size = (128, 512)
    citation = Citation(
        "The LLM Surgeon (van der Ouderaa et al., ICLR 2024, arXiv:2312.17244)",
        "@inproceedings{vanderouderaa2024llmsurgeon,\n"
        "  title     = {The {LLM} Surgeon},\n"
        "  author    = {van der Ouderaa, Tycho F. A. and Nagel, Markus and van Baalen, Mart and Asano, Yuki M.\n"
        "               and Blankevoort, Tijmen},\n"
        "  booktitle = {International Conference on Learning Representations (ICLR)},\n"
        "  year      = {2024},\n"
        "  eprint    = {2312.17244},\n"
        "  archivePrefix = {arXiv}\n"
        "}",
    )
    needs_gradients = True  # K-FAC's G factors; curvature=layerwise needs none
    low_memory_option = "--option curvature=layerwise"
    report_aliases = ("surgeon",)
    list_order = 40

    @classmethod
    def memory_estimate(cls, mem) -> dict[str, int]:
        """Gradients and activations kept for backward (kfac only), and the K-FAC factors of the largest layer
        (the method accumulates layers in passes that fit)."""
        layerwise = str(mem.options.get("curvature", "kfac")) == "layerwise"
        parts = {} if layerwise else {"gradients": mem.weights_bytes}
        parts["curvature"] = kfac_factor_bytes(mem.info.layer_linears, layerwise)
        parts["activations"] = mem.activation_bytes(backward=not layerwise)
        parts["calibration tokens"] = mem.calibration_token_bytes
        return parts

    @classmethod
    def low_memory_hint(cls) -> str | None:
        return f"{cls.low_memory_option} (one layer at a time)"

    def select(self, ctx: PruneContext) -> list[Group]:
        return self._select(start_run(ctx, self.config))

    def offload_refusal(self, kinds: list[str] | None) -> str | None:
        return offload_refusal(self.config, bool(kinds) and HIDDEN in kinds)

    def select_offloaded(self, ctx: PruneContext, offload) -> list[Group]:
        """Under --max-memory: the K-FAC shot one decoder layer at a time (offloaded.py)."""
        run = start_run(ctx, self.config, offload)
        check_offloaded(run)
        return self._select(run)

    def _select(self, run) -> list[Group]:
        if self.config.mode != "structured":
            select_masks(run)
            return []
        return select_structured(run)
