"""Resumable recovery checkpoints: LoRA weights, optimizer state, step and RNG state, without pickles.

Layout beside the output folder ``out``::

    .{out.name}.recover-ckpt/
        latest                      name of the newest complete step folder (written last, atomically)
        step-000050/
            adapter.safetensors     trainable (LoRA) tensors by parameter name
            optimizer.safetensors   optimizer state tensors, keyed "<param index>/<name>"
            rng.safetensors         torch CPU (and CUDA) generator states
            state.json              step, fingerprint, loss curve, optimizer scalars and param_groups

Tensors go through safetensors and everything else through JSON, so resuming never unpickles anything.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


def checkpoint_dir(output: str | os.PathLike) -> Path:
    out = Path(output).expanduser().resolve()
    return out.parent / f".{out.name}.recover-ckpt"


@dataclass
class Checkpoint:
    step: int
    adapter: dict[str, torch.Tensor]
    optimizer: dict  # torch optimizer state_dict layout
    rng: dict[str, torch.Tensor]
    state: dict = field(default_factory=dict)  # fingerprint, curve, timings...


def _split_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, entries in opt_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"scalars": scalars, "param_groups": opt_state["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entries in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, ckpt: Checkpoint, keep: int = 1) -> Path:
    """Write step folder in a temporary name, rename it, then point ``latest`` at it; prune older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{ckpt.step:06d}"
    tmp = folder / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in ckpt.adapter.items()}, tmp / "adapter.safetensors")
    opt_tensors, opt_meta = _split_optimizer(ckpt.optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({k: v.contiguous() for k, v in ckpt.rng.items()}, tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": ckpt.step, "optimizer": opt_meta, **ckpt.state}, indent=1))
    final = folder / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = folder / f".{LATEST}.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, folder / LATEST)
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint, or None (no folder, or nothing finished writing yet)."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    step_dir = folder / pointer.read_text().strip()
    if not (step_dir / "state.json").is_file():
        return None
    state = json.loads((step_dir / "state.json").read_text())
    optimizer = _join_optimizer(load_file(step_dir / "optimizer.safetensors"), state.pop("optimizer"))
    step = int(state.pop("step"))
    return Checkpoint(step, load_file(step_dir / "adapter.safetensors"), optimizer,
                      load_file(step_dir / "rng.safetensors"), state)


def rng_state() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{i}"] = s
    return states


def set_rng_state(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    if torch.cuda.is_available():
        cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
