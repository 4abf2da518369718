"""What every pruning method sees (PruneContext) and returns (the groups to remove), and the plug-in contract.

A method is one folder ``shear_hub/methods/<name>/`` (or any importable package) whose ``PruningMethod`` subclass
declares everything core needs as class attributes and hooks, and registers itself with ``@register_method``:

    name, display_name, citation        --method NAME, the model card's name for it, the paper the card cites
    config_class                        dataclass of settings (--option KEY=VALUE), help per field in
                                        ``dataclasses.field(metadata={"help": ...})`` (shown by ``prune --help``)
    needs_calibration, needs_gradients  what it reads (calibration windows) and whether it back-propagates
    memory_estimate(mem)                bytes of its scoring state, by part (the pre-flight resource check)
    low_memory_hint()                   what to try when that check fails
    weight_importance / gradient_importance / select_offloaded / offload_refusal
                                        optional: how it runs under --max-memory (weights streamed from disk; see
                                        the hooks' docstrings and shear_hub/offload.py)

Core (pruning.py, resources_check.py, hub/card.py, cli.py) reads these and never a method's name. The packages in
``shear_hub/methods/`` are discovered with pkgutil, installed plug-ins through the ``shear_hub.methods`` entry-point
group, and any other module registers its methods when it is imported.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..allocation import allocate
from ..structures.graph import HIDDEN, WHOLE, Group, StructureGraph

if TYPE_CHECKING:
    from ..resources_check import MethodMemoryInputs


class Citation(NamedTuple):
    """A paper the model card cites for a method: a one-line reference and its BibTeX entry."""

    text: str
    bibtex: str


@dataclass
class PruneContext:
    model: torch.nn.Module
    tokenizer: Any
    graph: StructureGraph
    calibration: torch.Tensor | None  # [samples, seq_len] token ids
    params_before: int
    params_to_remove: int
    layout: str
    kinds: list[str]
    device: str = "cpu"
    seed: int = 0
    batch_size: int = 4
    progress: bool = True
    report: dict = field(default_factory=dict)  # method-specific entries land in pruning_report.json["method_report"]
    # the whole tokenized calibration text the windows were cut from (methods that train sample fresh windows)
    calibration_tokens: torch.Tensor | None = None

    def batches(self, desc: str = "calibration"):
        data = self.calibration
        for start in tqdm(range(0, len(data), self.batch_size), desc=desc, disable=not self.progress, leave=False):
            yield data[start : start + self.batch_size].to(self.device)


class PruningMethod(ABC):
    """A method decides which groups go; it may also update the remaining weights in place (e.g. OBS).

    The class attributes below are the plug-in contract (see the module docstring); ``register_method`` checks them.
    """

    name: ClassVar[str]  # --method NAME; also the report's "method" and a card tag
    display_name: ClassVar[str]  # what the model card calls the method
    config_class: ClassVar[type]  # dataclass; every field has metadata={"help": ...}
    citation: ClassVar[Citation | None] = None  # the paper the card cites; None: a baseline without a dedicated paper
    needs_calibration: ClassVar[bool] = True  # reads calibration windows (ctx.calibration / ctx.batches)
    # (windows, tokens per window) when the caller gives no --calib-samples / --seq-len
    calibration_size: ClassVar[tuple[int, int]] = (32, 256)
    needs_gradients: ClassVar[bool] = False  # back-propagates through the whole model (gradients as large as weights)
    # options that let it run without a full backward pass (e.g. one layer at a time); the out-of-memory hints
    # suggest them
    low_memory_option: ClassVar[str | None] = None
    # lowercase letters-only substrings that name this method in a report written by hand or another tool
    # ("llm_surgeon" -> "surgeon"): the card's name and citation follow them
    report_aliases: ClassVar[tuple[str, ...]] = ()
    # a word of report["recovery"] that makes every card cite this method's paper too (a recovery stage it introduced)
    cited_for_recovery: ClassVar[str | None] = None
    list_order: ClassVar[int] = 100  # position in listings (--help, errors); built-ins: data-free first, training last

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()

    def config_dict(self) -> dict:
        return asdict(self.config)

    @abstractmethod
    def select(self, ctx: PruneContext) -> list[Group]:
        """Groups to remove; ``ctx.model`` may be modified (weight updates) but keeps its shapes."""

    def after_surgery(self, pruned: torch.nn.Module, ctx: PruneContext) -> None:
        """Optional stage on the physically smaller model, in place, before it is saved (e.g. LoRAShear's
        recovery); entries for the report go to ``ctx.report``. Default: nothing."""

    def weight_importance(self, ctx: PruneContext, names: list[str]):
        """Optional: a function ``(name, weight) -> importance`` (same shape as the weight) for methods whose group
        cost is the sum of per-weight importances (``group_scores``). It is called one weight at a time, so a
        method that defines it runs under ``--max-memory`` with the weights streamed from disk (shear_hub/offload.py);
        forward passes it needs (activation statistics) may run before it returns. Default None: the method needs
        the whole model resident (gradients, in-place weight updates)."""
        return None

    def gradient_importance(self, ctx: PruneContext):
        """Optional: a function ``(name, weight, grad) -> importance`` (same shape as the weight), ``grad`` being the
        gradient of the calibration loss (``loss_for``) w.r.t. that weight. A method that defines it runs under
        ``--max-memory`` with the gradients formed one decoder layer at a time (shear_hub/layer_stream.py)."""
        return None

    def loss_for(self, model: torch.nn.Module, logits: torch.Tensor, ids: torch.Tensor, n_batches: int) -> torch.Tensor:
        """The loss whose gradients ``gradient_importance`` reads: the model's own next-token loss, averaged over the
        calibration batches."""
        return model.loss_function(logits=logits, labels=ids, vocab_size=logits.shape[-1]) / n_batches

    def select_offloaded(self, ctx: PruneContext, offload) -> list[Group]:
        """Optional: ``select`` for a model dispatched under ``--max-memory`` (weights on disk, read one module at a
        time); ``offload`` is shear_hub/offload.py's CappedRun (a LayerStream factory, a store for updated weights).
        Methods with ``weight_importance`` or ``gradient_importance`` need not define it."""
        raise NotImplementedError

    def offload_refusal(self, kinds: list[str] | None) -> str | None:
        """Why these settings cannot run under ``--max-memory`` (None: they can), checked before anything loads.
        Default: gradient methods score decoder layers only (an embedding's gradient is as large as the
        embedding)."""
        if self.defines("gradient_importance") and kinds and HIDDEN in kinds:
            return "scores decoder layers only; drop 'hidden' from --structures"
        return None

    @classmethod
    def defines(cls, hook: str) -> bool:
        """Whether the method overrides the optional hook ``hook`` (e.g. ``"select_offloaded"``)."""
        return getattr(cls, hook) is not getattr(PruningMethod, hook)

    @classmethod
    def streams_weights(cls) -> bool:
        """Whether the method runs under ``--max-memory`` (it defines ``weight_importance``,
        ``gradient_importance`` or ``select_offloaded``)."""
        return any(cls.defines(hook) for hook in ("weight_importance", "gradient_importance", "select_offloaded"))

    # ----- hooks core calls on the class (before any model is loaded) -------------------------------------------
    @classmethod
    def memory_estimate(cls, mem: MethodMemoryInputs) -> dict[str, int]:
        """Bytes of the method's scoring state by part (names appear in the memory error), from the weights'
        headers and the method's options. The check adds the dense weights, the pruned copy, the runtime and the
        safety margin. Default: gradients when ``needs_gradients``, activations and the calibration tokens when
        ``needs_calibration``."""
        parts = {}
        if cls.needs_gradients:
            parts["gradients"] = mem.weights_bytes
        if cls.needs_calibration:
            parts["activations"] = mem.activation_bytes(backward=cls.needs_gradients)
            parts["calibration tokens"] = mem.calibration_token_bytes
        return parts

    @classmethod
    def low_memory_hint(cls) -> str | None:
        """What to try, method-wise, when this method's job does not fit in memory (after the generic dtype /
        calibration-size hints). Default: for a back-propagating method, the registered methods that need no
        full backward pass (calibrated without gradients, or with a ``low_memory_option``)."""
        if not cls.needs_gradients:
            return None
        alternatives = [f"--method {m.name}" + (f" {m.low_memory_option}" if m.low_memory_option else "")
                        for m in METHODS.values()
                        if m is not cls and (m.low_memory_option or (m.needs_calibration and not m.needs_gradients))]
        return " or ".join(alternatives) + " (no full backward pass)" if alternatives else None

    @classmethod
    def card_name(cls, reported: str) -> str | None:
        """The model card's name for this method when a report's "method" is ``reported``, None when ``reported``
        is not this method: its own name, or a name containing one of ``report_aliases`` (letters only)."""
        if reported == cls.name or any(alias in report_letters(reported) for alias in cls.report_aliases):
            return cls.display_name
        return None


def report_letters(reported: str | None) -> str:
    """A report's method name reduced to lowercase letters ("LLM_Surgeon" -> "llmsurgeon"), for ``report_aliases``."""
    return re.sub(r"[^a-z]", "", (reported or "").lower())


# ----------------------------------------------------------------- the registry ---------------------------------
METHODS: dict[str, type[PruningMethod]] = {}  # --method NAME -> class, in listing order
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: check ``cls`` against the plug-in contract and add it to ``METHODS`` under ``cls.name``.

    Registering the same class again (a module imported twice) replaces it; another class under a taken name is
    refused."""
    if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
        raise TypeError(f"register_method takes a PruningMethod subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    problems = []
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name {name!r} is not a lowercase word (letters, digits, '-', '_')")
    if not isinstance(getattr(cls, "display_name", None), str) or not cls.display_name.strip():
        problems.append("display_name (the model card's name for the method) is missing")
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        problems.append("config_class is not a dataclass")
    else:
        bare = [f.name for f in dataclasses.fields(config_class) if not str(f.metadata.get("help", "")).strip()]
        if bare:
            problems.append(f"config field(s) {', '.join(bare)} have no help "
                            "(dataclasses.field(default=..., metadata={'help': '...'}))")
    if cls.citation is not None and not (isinstance(cls.citation, Citation)):
        problems.append("citation is not a shear_hub.methods.Citation(text, bibtex) or None")
    if not all(isinstance(a, str) and a == report_letters(a) and a for a in cls.report_aliases):
        problems.append("report_aliases must be non-empty lowercase letters-only strings")
    if getattr(cls, "__abstractmethods__", None):
        problems.append(f"abstract method(s) {', '.join(sorted(cls.__abstractmethods__))} are not implemented")
    if problems:
        raise TypeError(f"cannot register pruning method {cls.__module__}.{cls.__qualname__}: " + "; ".join(problems))
    known = METHODS.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"pruning method name {name!r} is taken by {known.__module__}.{known.__qualname__}")
    METHODS[name] = cls
    ordered = sorted(METHODS.items(), key=lambda item: (item[1].list_order, item[0]))
    METHODS.clear()
    METHODS.update(ordered)
    return cls


def option_help(cls: type[PruningMethod]) -> list[tuple[str, Any, str]]:
    """(KEY, default, help) of each ``--option KEY=VALUE`` of a method, from its config dataclass."""
    rows = []
    for f in dataclasses.fields(cls.config_class):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append((f.name, default, str(f.metadata.get("help", "")).strip()))
    return rows


class ScoringMethod(PruningMethod):
    """A method that is a cost per group followed by the shared allocator."""

    # Criteria whose scale drifts across depth (|W|, |W|*||X||: activations grow along the residual stream) are not
    # comparable between layers; they are divided by their layer's mean cost per parameter before global ranking.
    layer_normalized: ClassVar[bool] = False

    def select(self, ctx: PruneContext) -> list[Group]:
        costs = self.score(ctx)
        if self.layer_normalized:
            costs = normalize_per_layer(ctx.graph, costs)
        return allocate(ctx.graph, costs, ctx.params_to_remove, ctx.layout)

    @abstractmethod
    def score(self, ctx: PruneContext) -> torch.Tensor:
        """One cost per group of ``ctx.graph.groups`` (lower = removed first)."""


def normalize_per_layer(graph: StructureGraph, costs: torch.Tensor) -> torch.Tensor:
    """Divide each group's cost by the mean cost-per-parameter of all groups of its layer (global groups together)."""
    costs = costs.double().clone()
    sizes = graph.group_sizes().clamp_min(1)
    layers = torch.tensor([-1 if g.layer is None else g.layer for g in graph.groups])
    for layer in layers.unique():
        mask = layers == layer
        scale = (costs[mask] / sizes[mask]).mean()
        if scale > 0:
            costs[mask] = costs[mask] / scale
    return costs


# float64 elements per block of rows when reducing one weight's importance (16 MiB): no full-size float64 copy
REDUCE_BLOCK_ELEMENTS = 1 << 21


def reduce_importance(name: str, weight: torch.Tensor, importance, reduced: dict, totals: dict) -> None:
    """Row sums, column sums and the total of ``importance(name, block)`` over blocks of ``weight``'s rows, in
    float64, into ``reduced[(name, dim)]`` / ``totals[name]``. Element-wise importances (|W|, |W| * ||X||, W * grad)
    give the same sums whether the whole weight or a block of rows is passed, so the resident and the streamed
    (--max-memory) paths share this and get identical costs; memory is one block, not a float64 copy."""
    step = max(1, REDUCE_BLOCK_ELEMENTS // max(1, weight[0].numel())) if weight.dim() > 1 else weight.shape[0]
    if weight.dim() < 2 or weight.shape[0] <= step:
        imp = importance(name, weight).detach().double().cpu()
        totals[name] = float(imp.sum())
        if imp.dim() == 1:
            reduced[(name, 0)] = imp.numpy()
        else:
            reduced[(name, 0)] = imp.sum(dim=tuple(range(1, imp.dim()))).numpy()
            reduced[(name, 1)] = imp.sum(dim=tuple(d for d in range(imp.dim()) if d != 1)).numpy()
        return
    rows, cols = [], None
    for start in range(0, weight.shape[0], step):
        imp = importance(name, weight[start : start + step]).detach().double().cpu()
        rows.append(imp.sum(dim=tuple(range(1, imp.dim()))))
        block_cols = imp.sum(dim=tuple(d for d in range(imp.dim()) if d != 1))
        cols = block_cols if cols is None else cols + block_cols
    row_sums = torch.cat(rows)
    totals[name] = float(row_sums.sum())
    reduced[(name, 0)], reduced[(name, 1)] = row_sums.numpy(), cols.numpy()


def group_scores(graph: StructureGraph, importance: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum an element-wise importance over each group's slices (params without importance count 0)."""
    reduced: dict[tuple[str, int], np.ndarray] = {}
    totals: dict[str, float] = {}
    for name, imp in importance.items():
        reduce_importance(name, imp, lambda _name, block: block, reduced, totals)
    return costs_from_reduced(graph, reduced, totals)


def costs_from_reduced(graph: StructureGraph, reduced: dict, totals: dict) -> torch.Tensor:
    """Each group's cost: the sums of ``reduce_importance`` over the group's slices."""
    scores = np.zeros(len(graph.groups))
    for i, group in enumerate(graph.groups):
        total = 0.0
        for s in group.slices:
            if s.dim == WHOLE:
                total += totals.get(s.param, 0.0)
            else:
                vec = reduced.get((s.param, s.dim))
                if vec is not None:
                    total += float(vec[list(s.index)].sum())
        scores[i] = total
    return torch.from_numpy(scores)


def prunable_weights(ctx: PruneContext) -> dict[str, torch.nn.Parameter]:
    """The 2-D weights that groups slice (linear projections, embeddings, head)."""
    params = dict(ctx.model.named_parameters())
    return {n: params[n] for n in ctx.graph.param_names() if n in params and params[n].dim() == 2}


def input_norms(ctx: PruneContext, names: list[str]) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of the named linear weights over all calibration tokens (Wanda's ||X_j||)."""
    modules = {n: m for n, m in ctx.model.named_modules()}
    sq: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        module = modules.get(name.removesuffix(".weight"))
        if not isinstance(module, torch.nn.Linear):
            continue

        def hook(mod, inputs, _out, key=name):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sq[key] = sq.get(key, 0) + (x * x).sum(0)

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for ids in ctx.batches("activations"):
                ctx.model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.sqrt() for k, v in sq.items()}
