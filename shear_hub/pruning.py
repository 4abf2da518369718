"""The prune job: load -> structure graph -> method -> surgery -> model folder. ``shear-hub prune`` calls this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .data import BUILTIN_CALIB, load_text, split_calibration, tokenize_text
from .errors import ShearHubError
from .evaluation.perplexity import windows_perplexity
from .evaluation.report import data_label
from .export import save_model_folder
from .io import check_output_dir, clean_stale_temporaries
from .loading import load_model, parse_dtype, resolve_source
from .memory_plan import check_method as check_capped_method
from .memory_plan import main_device as capped_device
from .memory_plan import parse_max_memory
from .offload import CappedRun, load_tokenizer
from .methods import METHODS, PruneContext, PruningMethod, get_method
from .progress import hub_download_progress, quiet_library_bars, stage
from .report import command_line, transformers_record
from .resources_check import check_prune
from .save_dtype import base_dtype, base_weights_bytes, cast_weights, parse_save_dtype, resolve_save_dtype
from .structures import KINDS, get_adapter
from .structures.adapters import check_model_type
from .summary import HELDOUT_KEY, heldout_record
from .surgery import LAYOUTS, build_pruned_model

DEFAULT_STRUCTURES = ("heads", "mlp")


@dataclass
class PruneResult:
    output: Path
    params_before: int
    params_after: int
    achieved_sparsity: float
    report: dict
    model: torch.nn.Module | None = None
    # perplexity of the dense / pruned model on the held-out slice of the calibration text (None: not measured)
    perplexity_before: float | None = None
    perplexity_after: float | None = None


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


def count_params(model: torch.nn.Module) -> int:
    """Parameters with tied weights counted once."""
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates shared tensors


@quiet_library_bars
def prune(model: str, output: str | Path, *, method: str = "surgeon", sparsity: float = 0.2, layout: str = "uniform",
          structures: str | list[str] | None = None, calib: str | None = None, calib_samples: int = 32,
          seq_len: int = 256, device: str = "cpu", dtype: str = "float32", save_dtype: str = "auto", seed: int = 0,
          overwrite: bool = False,
          method_options: dict | None = None, trust_remote_code: bool = False, batch_size: int = 4,
          progress: bool = True, command: str | None = None, return_model: bool = False, evaluate: bool = True,
          eval_windows: int = 8, eval_seq_len: int = 256, library_bars: bool = False,
          max_memory: str | dict | None = None) -> PruneResult:
    """Prune ``model`` so that ``sparsity`` of its parameters are removed, and write the smaller model to ``output``.

    ``dtype`` is the compute dtype; the folder is saved in ``save_dtype`` ("auto": the base checkpoint's dtype).
    ``progress``: one bar per stage on stderr (transformers' own bars stay off unless ``library_bars``).
    ``evaluate``: perplexity of the dense and the pruned model on ``eval_windows`` windows of ``eval_seq_len`` tokens
    of the calibration text that overlap no calibration window (report["evaluation"]["heldout_perplexity"]). Those
    windows are cut out of the text the method sees whether or not they are measured, so ``evaluate`` never changes
    the pruned model.
    ``max_memory``: accelerate's per-device cap for the weights (``"cpu=2GiB"``, ``{"cpu": 2**31}``); what does not
    fit is offloaded to disk and streamed (shear_hub/offload.py; methods with ``weight_importance``, memory_plan.py)."""
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
    # Fail in seconds, not after loading, when memory or disk cannot hold the job (estimate from the headers).
    capped = None if cap is None else CappedRun(cap, output, dtype, trust_remote_code)
    if capped is not None:  # the cap replaces the RAM estimate: the header plan must fit one unit in it
        capped.check(source.weights_path, model, sparsity)
    else:
        check_prune(source.weights_path, output, method=method,
                    sparsity=sparsity, dtype=dtype, calib_samples=calib_samples, seq_len=seq_len,
                    batch_size=batch_size, device=device, method_options=pruner.config_dict(), save_dtype=save)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}

    with stage("load model", enabled=progress, timings=timings, key="load"), \
            hub_download_progress(progress and source.hub_id == source.path and not library_bars):
        if capped is not None:
            dense = capped.load(source.path, model)
            tokenizer = load_tokenizer(source, trust_remote_code)
        else:
            dense, tokenizer, source = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if base is None:  # a Hub model neither cached nor described by the Hub's metadata: its files are cached now
        base = base_dtype(source)
        save = resolve_save_dtype(save_dtype, base, dtype)
    adapter = get_adapter(dense)
    if kinds is None:  # the default: the usual kinds that this layout can hold for this architecture
        kinds = default_structures(adapter, layout)
        print(f"structures: {','.join(kinds)} (default for {dense.config.model_type} in the {layout} layout; "
              "set --structures to choose)", flush=True)
    # Refusals the config alone decides (kind vs architecture, kind vs layout) come before any calibration.
    adapter.check_kinds(kinds, layout)
    graph = adapter.build_graph(kinds)
    params_before = count_params(dense)
    target = int(round(sparsity * params_before))
    empty = [k for k in kinds if not graph.of_kind(k)]
    if empty and len(empty) == len(kinds):  # e.g. qheads alone on a multi-head model: nothing could be removed
        raise ShearHubError(f"{type(dense).__name__} has no removable {', '.join(empty)} groups (qheads needs grouped "
                            "KV heads); use --structures heads,mlp")

    calibration = calibration_tokens = held_out = None
    limit = getattr(dense.config, "max_position_embeddings", None)
    held_len = min(eval_seq_len, limit) if isinstance(limit, int) and limit > 1 else eval_seq_len
    if pruner.needs_calibration or evaluate:
        with stage("calibration data" if pruner.needs_calibration else "held-out text", enabled=progress,
                   timings=timings, key="calibration_data"):
            tokens = tokenize_text(tokenizer, load_text(calib))
            calibration, stream, held_out, _ = split_calibration(
                tokens, calib_samples if pruner.needs_calibration else 0, seq_len, seed, eval_windows, held_len)
            calibration_tokens = stream if pruner.needs_calibration else None
    ppl_before = ppl_after = None
    if evaluate and held_out is not None and len(held_out):
        with stage("perplexity before (held-out)", enabled=progress, total=len(held_out), timings=timings,
                   key="perplexity_before") as bar:
            ppl_before = windows_perplexity(dense, held_out, batch_size=batch_size, bar=bar)

    ctx = PruneContext(dense, tokenizer, graph, calibration, params_before, target, layout, kinds, device=device,
                       seed=seed, batch_size=batch_size, progress=progress, calibration_tokens=calibration_tokens)
    with stage(f"select ({method})", enabled=progress, timings=timings, key="select"):
        removed = pruner.select(ctx) if capped is None else capped.select(pruner, ctx)

    with stage("surgery", enabled=progress, timings=timings, key="surgery"):
        pruned, new_dims = (build_pruned_model(graph, removed, layout) if capped is None
                            else capped.build_pruned(graph, removed, layout))
    if type(pruner).after_surgery is not PruningMethod.after_surgery:  # e.g. recovery inside the method
        with stage(f"after surgery ({method})", enabled=progress, timings=timings, key="after_surgery"):
            pruner.after_surgery(pruned, ctx)
    params_after = count_params(pruned)
    achieved = 1.0 - params_after / params_before
    if ppl_before is not None:  # the model as pruned, in the compute dtype, before it is cast for saving
        with stage("perplexity after (held-out)", enabled=progress, total=len(held_out), timings=timings,
                   key="perplexity_after") as bar:
            ppl_after = windows_perplexity(pruned, held_out, batch_size=batch_size, bar=bar)
    evaluation = {}
    if evaluate:
        evaluation[HELDOUT_KEY] = heldout_record(
            data_label(calib), 0 if held_out is None else len(held_out), held_len, ppl_before, ppl_after,
            None if ppl_before is not None else f"the calibration text has no {held_len}-token stretch outside the "
            "calibration windows; give a longer --calib text or fewer --calib-samples")

    report = {
        "shear_hub_version": __version__,
        "command": command or command_line(),
        "base_model": source.hub_id or str(source.spec),
        "base_model_license": source.license,
        "method": method,
        # what the method declares for the card, so `shear-hub card` renders it where the method is not registered
        "method_display_name": getattr(pruner, "display_name", method),
        "method_citation": list(pruner.citation) if getattr(pruner, "citation", None) else None,
        "method_config": pruner.config_dict(),
        "method_report": ctx.report,
        "layout": layout,
        "structures": kinds,
        "target_sparsity": sparsity,
        "achieved_sparsity": round(achieved, 6),
        "params_before": params_before,
        "params_after": params_after,
        "architecture_before": type(dense).__name__,
        "architecture_after": type(pruned).__name__,
        "dims_before": graph.dims.to_json(),
        "dims_after": new_dims.to_json(),
        "removed_groups": _count_kinds(removed),
        "calibration": None if calibration is None else {
            "spec": calib or BUILTIN_CALIB, "samples": calib_samples, "seq_len": seq_len, "seed": seed,
            "datasets": [] if calib in (None, "", "builtin") or str(calib).startswith("builtin:")
            or Path(str(calib)).exists() else [str(calib).split(":")[0]],
        },
        "evaluation": evaluation,
        "recovery": None,
        "device": device,
        "dtype": dtype,
        "save_dtype": save,
        "base_dtype": base,
        "weights_bytes_before": base_weights_bytes(source, params_before, base),
        "weights_bytes_after": None,  # the saved *.safetensors sizes, filled in by save_model_folder
        "timings_s": timings,
        "transformers": transformers_record(layout),
    }
    if capped is not None:
        report["max_memory"] = capped.record()
    if abs(achieved - sparsity) > 0.01:
        report["warning"] = (f"achieved sparsity {achieved:.4f} is more than 1% away from the target {sparsity}: "
                             "the chosen structures are too coarse; add finer kinds (e.g. mlp)")
    with stage("save", enabled=progress, timings=timings, key="save"):
        (cast_weights if capped is None else capped.cast)(pruned, parse_dtype(save))
        save_model_folder(pruned, tokenizer, output, report, overwrite=overwrite,
                          **({} if capped is None else {"max_shard_size": capped.max_shard_size}))
        if return_model:  # hand back the saved values in the compute dtype, as loading the folder would
            (cast_weights if capped is None else capped.cast)(pruned, parse_dtype(dtype))
    if capped is not None:
        capped.keep_alive(pruned if return_model else None)
        capped.close()
    held = evaluation.get(HELDOUT_KEY) or {}  # the rounded numbers the report and the card show
    return PruneResult(Path(output), params_before, params_after, achieved, report, pruned if return_model else None,
                       held.get("base"), held.get("value"))


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
