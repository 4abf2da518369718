"""Write a model folder: safetensors weights, config for its layout, tokenizer, report, card — atomically."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from .io import atomic_output_dir
from .report import PruningReport, weights_bytes, write_report


def save_model_folder(model, tokenizer, output: str | Path, report: PruningReport, *, overwrite: bool = False,
                      extra_files: dict[str, Path] | None = None, max_shard_size: int | str | None = None,
                      before_report: Callable[[PruningReport], None] | None = None) -> Path:
    """Save into a temporary sibling and rename into ``output`` when everything (card included) is written.
    ``max_shard_size``: shard the weights (a model dispatched under --max-memory is written shard by shard).
    ``before_report``: called with the report once the weights are written, just before the report is (the save
    timing goes in there, so the file and the caller's report agree)."""
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        write_model_files(model, tokenizer, tmp, max_shard_size=max_shard_size)
        _record_saved_weights(report, model, tmp)
        for name, src in (extra_files or {}).items():
            shutil.copy2(src, tmp / name)
        if before_report is not None:
            before_report(report)
        write_report(tmp, report)
        _render_card(tmp)
    return Path(output)


def write_model_files(model, tokenizer, folder: Path, max_shard_size: int | str | None = None) -> None:
    """Weights (safetensors only), config (+ modeling code for per-layer models), generation config, tokenizer."""
    from .modeling import MODELING_FILES

    model.save_pretrained(folder, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if getattr(model.config, "auto_map", None):
        for src in MODELING_FILES:
            shutil.copy2(src, folder / src.name)
    for pickle in folder.glob("*.bin"):
        pickle.unlink()  # never ship pickles (training_args.bin and the like)


def _record_saved_weights(report: PruningReport, model, folder: Path) -> None:
    """What was actually written (any command that saves, e.g. recover, updates it): the card shows these."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        report.save_dtype = str(dtype).removeprefix("torch.")
    report.weights_bytes_after = weights_bytes(folder)


def _render_card(folder: Path) -> None:
    try:
        from .hub.card import render_card
    except ImportError:  # card dependencies (jinja2, matplotlib) missing: the folder is complete without a card
        return
    render_card(folder)
