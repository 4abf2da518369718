"""``evaluate(model_dir, ...)``: every number `shear-hub eval` prints, and writing them into a model folder's report."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..data import BUILTIN_CALIB, load_text, sequential_windows, tokenize_text
from ..errors import ShearHubError
from ..report import read_report, write_report
from ..structures.graph import count_params

DEFAULT_SPEED = {"prompt_len": 128, "new_tokens": 32, "batch_size": 1}


def data_label(spec: str | None) -> str:
    """Short name of a text source for reports and cards: a file's stem, else the spec itself."""
    if spec in (None, "", "builtin"):
        return BUILTIN_CALIB
    path = Path(spec).expanduser()
    return path.stem if path.suffix in (".txt", ".jsonl", ".json", ".parquet") or path.is_file() else str(spec)


def weights_bytes(folder: str | os.PathLike) -> int | None:
    path = Path(folder)
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) or None


def evaluate(model_dir: str, *, data: str | None = None, seq_len: int = 512, windows: int | None = 48,
             tasks: list[str] | None = None, task_limit: int | None = None, speed: bool = True,
             speed_settings: dict | None = None, device: str = "cpu", dtype: str = "float32",
             trust_remote_code: bool = False, batch_size: int = 4, notes: list[str] | None = None,
             domains: bool = False, max_memory: str | dict | None = None) -> dict:
    """Perplexity, parameters, file size, generation speed and (optionally) zero-shot tasks of one model.

    ``domains`` adds the cross-domain protocol (``shear_hub.evaluation.domains``: perplexity with the same windows on
    each shipped domain text and their geometric mean) as ``result["domains"]``.
    ``max_memory``: accelerate's per-device cap on the weights (shear_hub/offload.py: disk offload for the rest).
    ``notes`` collects messages meant for the user (a skipped zero-shot run) without failing the evaluation.
    """
    from ..loading import load_model
    from .perplexity import perplexity
    from .zeroshot import ZeroShotUnavailable, run_zero_shot

    if seq_len < 2 or (windows is not None and windows < 1):
        raise ShearHubError("--seq-len must be >= 2 and --windows >= 1")
    t = time.perf_counter()
    if max_memory is not None:
        from ..offload import evaluate_loader

        model, tokenizer, source, device = evaluate_loader(model_dir, max_memory, dtype=dtype, device=device,
                                                           trust_remote_code=trust_remote_code)
    else:
        model, tokenizer, source = load_model(model_dir, dtype=dtype, device=device,
                                              trust_remote_code=trust_remote_code)
    result: dict = {"model": str(model_dir), "device": device, "dtype": dtype, "params": count_params(model),
                    "file_size_bytes": weights_bytes(source.path), "timings_s": {"load": time.perf_counter() - t}}
    if max_memory is not None:
        from ..offload import placement

        result["max_memory"] = {"cap": max_memory if isinstance(max_memory, str) else str(max_memory),
                                "placement": placement(model)}
    t = time.perf_counter()
    text = load_text(data)
    limit = getattr(model.config, "max_position_embeddings", None)
    # learned position tables (OPT, GPT-2) would fail with an IndexError; a too-short text gets its own error below
    if limit and seq_len > limit and len(tokenize_text(tokenizer, text)) > seq_len:
        raise ShearHubError(f"--seq-len {seq_len} is longer than the model's {limit} positions; use --seq-len {limit} "
                            "or less")
    ppl = perplexity(model, tokenizer, text=text, seq_len=seq_len, windows=windows, batch_size=batch_size)
    used = len(sequential_windows(tokenize_text(tokenizer, text), windows, seq_len))  # fewer when the text is short
    result["perplexity"] = {"data": data_label(data), "seq_len": seq_len, "windows": used, "value": round(ppl, 4)}
    result["timings_s"]["perplexity"] = time.perf_counter() - t
    if domains:
        from .domains import domain_perplexity

        t = time.perf_counter()
        result["domains"] = domain_perplexity(model, tokenizer, seq_len=seq_len, windows=windows, batch_size=batch_size)
        result["timings_s"]["domains"] = time.perf_counter() - t
    if speed:
        t = time.perf_counter()
        result["speed"] = _speed(model, tokenizer, device, {**DEFAULT_SPEED, **(speed_settings or {})})
        result["timings_s"]["speed"] = time.perf_counter() - t
    if tasks:
        try:
            result["zero_shot"] = run_zero_shot(model, tokenizer, tasks, limit=task_limit, device=device)
        except ZeroShotUnavailable as exc:
            result["zero_shot"] = {"skipped": str(exc)}
            if notes is not None:
                notes.append(str(exc))
    result["timings_s"] = {k: round(v, 2) for k, v in result["timings_s"].items()}
    return result


def _speed(model, tokenizer, device: str, settings: dict) -> dict:
    """Prefill / decode tokens per second (shear_hub.evaluation.speed, eager PyTorch)."""
    from .speed import measure_speed

    with torch.inference_mode():
        res = measure_speed(model, tokenizer, prompt_len=settings["prompt_len"], new_tokens=settings["new_tokens"],
                            batch_size=settings["batch_size"], device=device, mode="eager")
    keep = ("prefill_tok_s", "decode_tok_s", "decode_ms_per_step", "prompt_len", "new_tokens", "batch_size",
            "threads", "mode", "device")
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items() if k in keep}


def record_evaluation(model_dir: str | os.PathLike, result: dict, base: dict | None = None) -> bool:
    """Merge measured numbers into the folder's pruning_report.json "evaluation" (atomic) and re-render the card.

    Returns False when ``model_dir`` is not a shear-hub folder (no report): nothing is written then.
    """
    folder = Path(model_dir)
    report = read_report(folder, missing_ok=True)
    if report is None:
        return False
    evaluation = dict(report.evaluation or {})
    evaluation["perplexity"] = result["perplexity"]
    evaluation["params"] = result["params"]
    if result.get("file_size_bytes"):
        evaluation["file_size_bytes"] = result["file_size_bytes"]
    if "speed" in result:
        speed = {k: result["speed"][k] for k in ("prefill_tok_s", "decode_tok_s") if k in result["speed"]}
        if base and "speed" in base:
            speed.update({f"base_{k}": base["speed"][k] for k in ("prefill_tok_s", "decode_tok_s") if k in base["speed"]})
        speed["settings"] = {k: result["speed"][k] for k in ("prompt_len", "new_tokens", "batch_size", "threads", "device")
                             if k in result["speed"]}
        evaluation["speed"] = speed
    if "zero_shot" in result and "tasks" in result["zero_shot"]:
        evaluation["zero_shot"] = result["zero_shot"]
    if "domains" in result:
        evaluation["domains"] = result["domains"]
    if base:
        evaluation["base_perplexity"] = base["perplexity"]["value"]
        if "domains" in base:
            evaluation["base_domains"] = base["domains"]
        if "zero_shot" in base and "tasks" in base["zero_shot"]:
            evaluation["base_zero_shot"] = base["zero_shot"]
    report.evaluation = evaluation
    write_report(folder, report)
    try:
        from ..hub.card import render_card
    except ImportError:  # card dependencies (jinja2, matplotlib) missing: the report is still updated
        return True
    render_card(folder)
    return True
