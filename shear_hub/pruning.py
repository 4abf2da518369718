"""The prune job: load -> structure graph -> method -> surgery -> model folder. ``shear-hub prune`` calls this."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .data import BUILTIN_CALIB, load_text, split_calibration, tokenize_text
from .self_calibration import check_self_spec, is_self, self_calibration_text
from .errors import ShearHubError
from .evaluation.perplexity import windows_perplexity
from .evaluation.report import data_label
from .export import save_model_folder
from .io import check_output_dir, clean_stale_temporaries
from .loading import ModelSource, load_model, parse_dtype, resolve_source
from .memory_plan import check_method as check_capped_method
from .memory_plan import main_device as capped_device
from .memory_plan import parse_max_memory
from .offload import CappedRun, load_tokenizer
from .methods import METHODS, PruneContext, PruningMethod, get_method
from .progress import hub_download_progress, quiet_library_bars, stage
from .report import PruningReport, command_line, transformers_record
from .resources_check import check_prune
from .save_dtype import base_dtype, base_weights_bytes, cast_weights, parse_save_dtype, resolve_save_dtype
from .structures import KINDS, get_adapter
from .structures.adapters import check_model_type
from .structures.graph import count_params
from .summary import HELDOUT_KEY, heldout_record
from .surgery import LAYOUTS, build_pruned_model

DEFAULT_STRUCTURES = ("heads", "mlp")


@dataclass
class PruneResult:
    output: Path
    params_before: int
    params_after: int
    achieved_sparsity: float
    report: PruningReport  # what the folder's pruning_report.json holds
    model: torch.nn.Module | None = None
    # perplexity of the dense / pruned model on the held-out slice of the calibration text (None: not measured)
    perplexity_before: float | None = None
    perplexity_after: float | None = None


def calibration_size(method: str, calib_samples: int | None, seq_len: int | None) -> tuple:
    """The calibration windows and their length: what the caller gave, else the method's declared default (an
    unknown method keeps None here and is refused with the other checks)."""
    if calib_samples is not None and seq_len is not None:
        return calib_samples, seq_len
    default = METHODS[method].calibration_size if method in METHODS else (None, None)
    return (default[0] if calib_samples is None else calib_samples), (default[1] if seq_len is None else seq_len)


def parse_structures(value: str | list[str] | tuple[str, ...]) -> list[str]:
    kinds = [k.strip() for k in (value.split(",") if isinstance(value, str) else value) if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ShearHubError(f"unknown structure kind {bad[0] if bad else '(none)'!r}; use a comma list of {','.join(KINDS)}")
    return list(dict.fromkeys(kinds))


def validate(method: str, sparsity: float, layout: str, structures, calib_samples: int, seq_len: int, dtype: str,
             save_dtype: str = "auto") -> list[str] | None:
    """Every argument check that needs no model, done before anything is loaded or written."""
    if method not in METHODS:
        raise ShearHubError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not (0.0 < sparsity < 1.0):
        raise ShearHubError(f"--sparsity must be in (0, 1), got {sparsity}; e.g. --sparsity 0.2 removes 20% of parameters")
    if layout not in LAYOUTS:
        raise ShearHubError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if calib_samples < 1 or seq_len < 2:
        raise ShearHubError("--calib-samples must be >= 1 and --seq-len >= 2")
    parse_dtype(dtype)
    parse_save_dtype(save_dtype)
    return None if structures is None else parse_structures(structures)


def default_structures(adapter, layout: str) -> list[str]:
    """DEFAULT_STRUCTURES minus what ``layout`` cannot hold for the adapter's architecture (OPT uniform: mlp)."""
    return [k for k in DEFAULT_STRUCTURES if k in adapter.layout_kinds(layout)]


@dataclass
class _Setup:
    """What the checks before anything is loaded settle."""

    source: ModelSource
    kinds: list[str] | None  # None: the layout's default kinds, known once the model is loaded
    device: str
    base: str | None  # the base checkpoint's dtype (None: a Hub model whose files are not cached yet)
    save: str | None  # the dtype the folder is saved in
    pruner: PruningMethod
    capped: CappedRun | None  # --max-memory: the offloaded run, else None


@dataclass
class _Text:
    """Windows cut from the calibration text: the method's calibration and the held-out perplexity check's."""

    held_len: int
    calibration: torch.Tensor | None = None
    calibration_tokens: torch.Tensor | None = None  # the whole tokenized text (methods that train sample from it)
    held_out: torch.Tensor | None = None


@quiet_library_bars
def prune(model: str, output: str | Path, *, method: str = "surgeon", sparsity: float = 0.2, layout: str = "uniform",
          structures: str | list[str] | None = None, calib: str | None = None,
          calib_samples: int | None = None, seq_len: int | None = None, device: str = "cpu", dtype: str = "float32", save_dtype: str = "auto", seed: int = 0,
          overwrite: bool = False,
          method_options: dict | None = None, trust_remote_code: bool = False, batch_size: int = 4,
          progress: bool = True, command: str | None = None, return_model: bool = False, evaluate: bool = True,
          eval_windows: int = 8, eval_seq_len: int = 256, library_bars: bool = False,
          max_memory: str | dict | None = None) -> PruneResult:
    """Prune ``model`` so that ``sparsity`` of its parameters are removed, and write the smaller model to ``output``.

    ``dtype`` is the compute dtype; the folder is saved in ``save_dtype`` ("auto": the base checkpoint's dtype).
    ``progress``: one bar per stage on stderr (transformers' own bars stay off unless ``library_bars``).
    ``evaluate``: perplexity of the dense and the pruned model on ``eval_windows`` windows of ``eval_seq_len`` tokens
    of the calibration text that overlap no calibration window (report.evaluation["heldout_perplexity"]). Those
    windows are cut out of the text the method sees whether or not they are measured, so ``evaluate`` never changes
    the pruned model.
    ``calib_samples`` / ``seq_len``: calibration windows and their length; None: the method's ``calibration_size``
    (the surgeon 128 x 512, the other built-in methods 32 x 256).
    ``max_memory``: accelerate's per-device cap for the weights (``"cpu=2GiB"``, ``{"cpu": 2**31}``); what does not
    fit is offloaded to disk and streamed (shear_hub/offload.py; which methods stream: memory_plan.py)."""
    check_self_spec(calib)  # a malformed --calib self:... fails before any model work
    calib_samples, seq_len = calibration_size(method, calib_samples, seq_len)
    setup = _check_job(model, output, method=method, sparsity=sparsity, layout=layout, structures=structures,
                       calib_samples=calib_samples, seq_len=seq_len, device=device, dtype=dtype, save_dtype=save_dtype,
                       overwrite=overwrite, method_options=method_options, trust_remote_code=trust_remote_code,
                       batch_size=batch_size, max_memory=max_memory)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    dense, tokenizer = _load(model, setup, dtype=dtype, save_dtype=save_dtype, trust_remote_code=trust_remote_code,
                             progress=progress, library_bars=library_bars, timings=timings)
    kinds, graph = _structure_graph(dense, setup.kinds, layout)
    params_before = count_params(dense)
    text = _cut_text(dense, tokenizer, setup.pruner, calib=calib, calib_samples=calib_samples, seq_len=seq_len,
                     seed=seed, evaluate=evaluate, eval_windows=eval_windows, eval_seq_len=eval_seq_len,
                     progress=progress, timings=timings)
    ppl_before = ppl_after = None
    if evaluate and text.held_out is not None and len(text.held_out):
        ppl_before = _held_out_perplexity("before", dense, text.held_out, batch_size, progress, timings)
    ctx = PruneContext(dense, tokenizer, graph, text.calibration, params_before, int(round(sparsity * params_before)),
                       layout, kinds, device=setup.device, seed=seed, batch_size=batch_size, progress=progress,
                       calibration_tokens=text.calibration_tokens)
    removed, pruned, new_dims = _select_and_cut(setup, ctx, method, progress, timings)
    if ppl_before is not None:  # the model as pruned, in the compute dtype, before it is cast for saving
        ppl_after = _held_out_perplexity("after", pruned, text.held_out, batch_size, progress, timings)
    evaluation = {HELDOUT_KEY: _heldout_entry(calib, text, ppl_before, ppl_after)} if evaluate else {}
    report = _build_report(setup, ctx, pruned, new_dims, removed, method=method, sparsity=sparsity, calib=calib,
                           calib_samples=calib_samples, seq_len=seq_len, dtype=dtype, evaluation=evaluation,
                           timings=timings, command=command)
    _save(pruned, tokenizer, output, report, setup.capped, dtype=dtype, overwrite=overwrite,
          return_model=return_model, progress=progress)
    held = evaluation.get(HELDOUT_KEY) or {}  # the rounded numbers the report and the card show
    return PruneResult(Path(output), params_before, report.params_after, 1.0 - report.params_after / params_before,
                       report, pruned if return_model else None, held.get("base"), held.get("value"))


def _check_job(model: str, output: str | Path, *, method: str, sparsity: float, layout: str, structures,
               calib_samples: int, seq_len: int, device: str, dtype: str, save_dtype: str, overwrite: bool,
               method_options: dict | None, trust_remote_code: bool, batch_size: int, max_memory) -> _Setup:
    """Every refusal that needs no loaded model: arguments, architecture, save dtype, output folder, and memory / disk
    (an estimate from the headers), so that a doomed job fails in seconds."""
    kinds = validate(method, sparsity, layout, structures, calib_samples, seq_len, dtype, save_dtype)
    cap = parse_max_memory(max_memory)
    if cap is not None:  # refusals that need no model: a method that cannot stream, a GPU the cap does not name
        check_capped_method(method, method_options)
        device = capped_device(cap, device)
    source = resolve_source(model)
    _check_architecture(source)
    # From the headers, before any model work: a save dtype the base cannot round-trip fails here.
    base = base_dtype(source)
    save = resolve_save_dtype(save_dtype, base, dtype)
    check_output_dir(output, overwrite, inputs=(model, source.path))
    clean_stale_temporaries(output)
    pruner = get_method(method, method_options)
    why = None if cap is None else pruner.offload_refusal(kinds)
    if why:
        raise ShearHubError(f"--method {method} under --max-memory {why}, or drop --max-memory")
    capped = None if cap is None else CappedRun(cap, output, dtype, trust_remote_code)
    if capped is not None:  # the cap replaces the RAM estimate: the header plan must fit one unit in it
        capped.check(source.weights_path, model, sparsity, writes_updates=pruner.defines("select_offloaded"))
    else:
        check_prune(source.weights_path, output, method=method,
                    sparsity=sparsity, dtype=dtype, calib_samples=calib_samples, seq_len=seq_len,
                    batch_size=batch_size, device=device, method_options=pruner.config_dict(), save_dtype=save)
    return _Setup(source, kinds, device, base, save, pruner, capped)


def _load(model: str, setup: _Setup, *, dtype: str, save_dtype: str, trust_remote_code: bool, progress: bool,
          library_bars: bool, timings: dict[str, float]):
    """The dense model and its tokenizer; ``setup``'s source and dtypes are completed from what was loaded."""
    source, capped = setup.source, setup.capped
    with stage("load model", enabled=progress, timings=timings, key="load"), \
            hub_download_progress(progress and source.hub_id == source.path and not library_bars):
        if capped is not None:
            dense = capped.load(source.path, model)
            tokenizer = load_tokenizer(source, trust_remote_code)
        else:
            dense, tokenizer, setup.source = load_model(model, dtype=dtype, device=setup.device,
                                                        trust_remote_code=trust_remote_code)
    if setup.base is None:  # a Hub model neither cached nor described by the Hub's metadata: its files are cached now
        setup.base = base_dtype(setup.source)
        setup.save = resolve_save_dtype(save_dtype, setup.base, dtype)
    return dense, tokenizer


def _structure_graph(dense, kinds: list[str] | None, layout: str):
    """The structure kinds (the layout's default when none were given) and the graph of their removable groups."""
    adapter = get_adapter(dense)
    if kinds is None:  # the default: the usual kinds that this layout can hold for this architecture
        kinds = default_structures(adapter, layout)
        print(f"structures: {','.join(kinds)} (default for {dense.config.model_type} in the {layout} layout; "
              "set --structures to choose)", flush=True)
    # Refusals the config alone decides (kind vs architecture, kind vs layout) come before any calibration.
    adapter.check_kinds(kinds, layout)
    graph = adapter.build_graph(kinds)
    empty = [k for k in kinds if not graph.of_kind(k)]
    if empty and len(empty) == len(kinds):  # e.g. qheads alone on a multi-head model: nothing could be removed
        raise ShearHubError(f"{type(dense).__name__} has no removable {', '.join(empty)} groups (qheads needs grouped "
                            "KV heads); use --structures heads,mlp")
    return kinds, graph


def _cut_text(dense, tokenizer, pruner: PruningMethod, *, calib: str | None, calib_samples: int, seq_len: int,
              seed: int, evaluate: bool, eval_windows: int, eval_seq_len: int, progress: bool,
              timings: dict[str, float]) -> _Text:
    """Tokenize the calibration text (when the method or the perplexity check needs it) and cut its windows."""
    limit = getattr(dense.config, "max_position_embeddings", None)
    text = _Text(min(eval_seq_len, limit) if isinstance(limit, int) and limit > 1 else eval_seq_len)
    if pruner.needs_calibration or evaluate:
        with stage("calibration data" if pruner.needs_calibration else "held-out text", enabled=progress,
                   timings=timings, key="calibration_data"):
            tokens = tokenize_text(tokenizer, _calibration_source(dense, tokenizer, calib, calib_samples, seq_len,
                                                                  seed, eval_windows * text.held_len))
            text.calibration, stream, text.held_out, _ = split_calibration(
                tokens, calib_samples if pruner.needs_calibration else 0, seq_len, seed, eval_windows, text.held_len)
            text.calibration_tokens = stream if pruner.needs_calibration else None
    return text


def _calibration_source(dense, tokenizer, calib: str | None, samples: int, seq_len: int, seed: int,
                        held_tokens: int) -> str:
    """The calibration text: ``--calib self`` samples it from the dense model (enough for the calibration windows
    and the held-out slice), anything else is read (data.load_text)."""
    if not is_self(calib):
        return load_text(calib)
    extra = -(-held_tokens // seq_len) + 2  # the held-out windows are cut from the same text
    return self_calibration_text(dense, tokenizer, calib, samples=samples + extra, seq_len=seq_len, seed=seed)


def _held_out_perplexity(when: str, model, held_out: torch.Tensor, batch_size: int, progress: bool,
                         timings: dict[str, float]) -> float:
    with stage(f"perplexity {when} (held-out)", enabled=progress, total=len(held_out), timings=timings,
               key=f"perplexity_{when}") as bar:
        return windows_perplexity(model, held_out, batch_size=batch_size, bar=bar)


def _select_and_cut(setup: _Setup, ctx: PruneContext, method: str, progress: bool, timings: dict[str, float]):
    """The method's choice of groups, the smaller model cut from it, and the method's after-surgery step if any."""
    pruner, capped = setup.pruner, setup.capped
    with stage(f"select ({method})", enabled=progress, timings=timings, key="select"):
        removed = pruner.select(ctx) if capped is None else capped.select(pruner, ctx)
    with stage("surgery", enabled=progress, timings=timings, key="surgery"):
        pruned, new_dims = (build_pruned_model(ctx.graph, removed, ctx.layout) if capped is None
                            else capped.build_pruned(ctx.graph, removed, ctx.layout))
    if pruner.defines("after_surgery"):  # e.g. recovery inside the method
        with stage(f"after surgery ({method})", enabled=progress, timings=timings, key="after_surgery"):
            pruner.after_surgery(pruned, ctx)
    return removed, pruned, new_dims


def _heldout_entry(calib: str | None, text: _Text, ppl_before: float | None, ppl_after: float | None) -> dict:
    return heldout_record(
        data_label(calib), 0 if text.held_out is None else len(text.held_out), text.held_len, ppl_before, ppl_after,
        None if ppl_before is not None else f"the calibration text has no {text.held_len}-token stretch outside the "
        "calibration windows; give a longer --calib text or fewer --calib-samples")


def _build_report(setup: _Setup, ctx: PruneContext, pruned, new_dims, removed, *, method: str, sparsity: float,
                  calib: str | None, calib_samples: int, seq_len: int, dtype: str, evaluation: dict,
                  timings: dict[str, float], command: str | None) -> PruningReport:
    source, pruner = setup.source, setup.pruner
    params_before, params_after = ctx.params_before, count_params(pruned)
    achieved = 1.0 - params_after / params_before
    report = PruningReport(
        shear_hub_version=__version__,
        command=command or command_line(),
        base_model=source.hub_id or str(source.spec),
        base_model_license=source.license,
        method=method,
        # what the method declares for the card, so `shear-hub card` renders it where the method is not registered
        method_display_name=getattr(pruner, "display_name", method),
        method_citation=list(pruner.citation) if getattr(pruner, "citation", None) else None,
        method_config=pruner.config_dict(),
        method_report=ctx.report,
        layout=ctx.layout, structures=ctx.kinds,
        target_sparsity=sparsity, achieved_sparsity=round(achieved, 6),
        params_before=params_before, params_after=params_after,
        architecture_before=type(ctx.model).__name__, architecture_after=type(pruned).__name__,
        dims_before=ctx.graph.dims.to_json(), dims_after=new_dims.to_json(),
        removed_groups=_count_kinds(removed),
        calibration=None if ctx.calibration is None else {
            "spec": calib or BUILTIN_CALIB, "samples": calib_samples, "seq_len": seq_len, "seed": ctx.seed,
            "datasets": [] if calib in (None, "", "builtin") or str(calib).startswith("builtin:")
            or Path(str(calib)).exists() else [str(calib).split(":")[0]],
        },
        evaluation=evaluation, recovery=None,
        device=ctx.device, dtype=dtype, save_dtype=setup.save, base_dtype=setup.base,
        weights_bytes_before=base_weights_bytes(source, params_before, setup.base),
        weights_bytes_after=None,  # the saved *.safetensors sizes, filled in by save_model_folder
        timings_s=timings,
        transformers=transformers_record(ctx.layout),
    )
    if setup.capped is not None:
        report.max_memory = setup.capped.record()
    if abs(achieved - sparsity) > 0.01:
        report.warning = (f"achieved sparsity {achieved:.4f} is more than 1% away from the target {sparsity}: "
                          "the chosen structures are too coarse; add finer kinds (e.g. mlp)")
    return report


def _save(pruned, tokenizer, output: str | Path, report: PruningReport, capped: CappedRun | None, *, dtype: str,
          overwrite: bool, return_model: bool, progress: bool) -> None:
    """Cast to the save dtype and write the folder. timings_s["save"] (the cast and the weights) is recorded just
    before the report is written, so the file and the returned report are equal."""
    cast = cast_weights if capped is None else capped.cast
    started = time.perf_counter()

    def record_save_time(written: PruningReport) -> None:
        written.timings_s["save"] = time.perf_counter() - started

    with stage("save", enabled=progress):
        cast(pruned, parse_dtype(report.save_dtype))
        save_model_folder(pruned, tokenizer, output, report, overwrite=overwrite, before_report=record_save_time,
                          **({} if capped is None else {"max_shard_size": capped.max_shard_size}))
        if return_model:  # hand back the saved values in the compute dtype, as loading the folder would
            cast(pruned, parse_dtype(dtype))
    if capped is not None:
        capped.keep_alive(pruned if return_model else None)
        capped.close()


def _check_architecture(source) -> None:
    """An architecture no adapter knows is refused from a local folder's config.json, before anything loads (a broken
    config.json is left to the loader, whose error names the problem)."""
    import json

    config = Path(source.path) / "config.json"
    if source.gguf_file or not config.is_file():
        return
    try:
        values = json.loads(config.read_text())
    except (ValueError, OSError):
        return
    if not isinstance(values, dict) or values.get("auto_map"):  # remote code: the loader's trust check speaks first
        return
    check_model_type(values.get("model_type"))


def _count_kinds(groups) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.kind] = counts.get(g.kind, 0) + 1
    return counts
