"""The prune job: load -> structure graph -> method -> surgery -> model folder. ``shear-hub prune`` calls this."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .data import BUILTIN_CALIB, load_text, random_windows, tokenize_text
from .errors import ShearHubError
from .export import save_model_folder
from .io import check_output_dir, clean_stale_temporaries
from .loading import load_model, parse_dtype, resolve_source
from .methods import METHODS, PruneContext, PruningMethod, get_method
from .report import command_line, transformers_record
from .resources_check import check_prune
from .structures import KINDS, build_graph
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


def parse_structures(value: str | list[str] | tuple[str, ...]) -> list[str]:
    kinds = [k.strip() for k in (value.split(",") if isinstance(value, str) else value) if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ShearHubError(f"unknown structure kind {bad[0] if bad else '(none)'!r}; use a comma list of {','.join(KINDS)}")
    return list(dict.fromkeys(kinds))


def validate(method: str, sparsity: float, layout: str, structures, calib_samples: int, seq_len: int, dtype: str) -> list[str]:
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
    return parse_structures(structures)


def count_params(model: torch.nn.Module) -> int:
    """Parameters with tied weights counted once."""
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates shared tensors


def prune(model: str, output: str | Path, *, method: str = "wanda", sparsity: float = 0.2, layout: str = "uniform",
          structures: str | list[str] = DEFAULT_STRUCTURES, calib: str | None = None, calib_samples: int = 32,
          seq_len: int = 256, device: str = "cpu", dtype: str = "float32", seed: int = 0, overwrite: bool = False,
          method_options: dict | None = None, trust_remote_code: bool = False, batch_size: int = 4,
          progress: bool = True, command: str | None = None, return_model: bool = False) -> PruneResult:
    """Prune ``model`` so that ``sparsity`` of its parameters are removed, and write the smaller model to ``output``."""
    kinds = validate(method, sparsity, layout, structures, calib_samples, seq_len, dtype)
    source = resolve_source(model)
    check_output_dir(output, overwrite, inputs=(model, source.path))
    clean_stale_temporaries(output)
    pruner = get_method(method, method_options)
    # Fail in seconds, not after loading, when memory or disk cannot hold the job (estimate from the headers).
    check_prune(source.weights_path, output, method=method,
                sparsity=sparsity, dtype=dtype, calib_samples=calib_samples, seq_len=seq_len, batch_size=batch_size,
                device=device, method_options=pruner.config_dict())
    torch.manual_seed(seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    dense, tokenizer, source = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    timings["load"] = time.perf_counter() - t
    graph = build_graph(dense, kinds)
    params_before = count_params(dense)
    target = int(round(sparsity * params_before))
    empty = [k for k in kinds if not graph.of_kind(k)]
    if empty and len(empty) == len(kinds):  # e.g. qheads alone on a multi-head model: nothing could be removed
        raise ShearHubError(f"{type(dense).__name__} has no removable {', '.join(empty)} groups (qheads needs grouped "
                            "KV heads); use --structures heads,mlp")

    calibration = calibration_tokens = None
    if pruner.needs_calibration:
        t = time.perf_counter()
        calibration_tokens = tokenize_text(tokenizer, load_text(calib))
        calibration = random_windows(calibration_tokens, calib_samples, seq_len, seed)
        timings["calibration_data"] = time.perf_counter() - t

    ctx = PruneContext(dense, tokenizer, graph, calibration, params_before, target, layout, kinds, device=device,
                       seed=seed, batch_size=batch_size, progress=progress, calibration_tokens=calibration_tokens)
    t = time.perf_counter()
    removed = pruner.select(ctx)
    timings["select"] = time.perf_counter() - t

    t = time.perf_counter()
    pruned, new_dims = build_pruned_model(graph, removed, layout)
    timings["surgery"] = time.perf_counter() - t
    if type(pruner).after_surgery is not PruningMethod.after_surgery:  # e.g. recovery inside the method
        t = time.perf_counter()
        pruner.after_surgery(pruned, ctx)
        timings["after_surgery"] = time.perf_counter() - t
    params_after = count_params(pruned)
    achieved = 1.0 - params_after / params_before

    report = {
        "shear_hub_version": __version__,
        "command": command or command_line(),
        "base_model": source.hub_id or str(source.spec),
        "base_model_license": source.license,
        "method": method,
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
            "datasets": [] if calib in (None, BUILTIN_CALIB) or Path(str(calib)).exists() else [str(calib).split(":")[0]],
        },
        "evaluation": {},
        "recovery": None,
        "device": device,
        "dtype": dtype,
        "timings_s": timings,
        "transformers": transformers_record(layout),
    }
    if abs(achieved - sparsity) > 0.01:
        report["warning"] = (f"achieved sparsity {achieved:.4f} is more than 1% away from the target {sparsity}: "
                             "the chosen structures are too coarse; add finer kinds (e.g. mlp)")
    t = time.perf_counter()
    save_model_folder(pruned, tokenizer, output, report, overwrite=overwrite)
    timings["save"] = time.perf_counter() - t
    return PruneResult(Path(output), params_before, params_after, achieved, report, pruned if return_model else None)


def _count_kinds(groups) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.kind] = counts.get(g.kind, 0) + 1
    return counts
