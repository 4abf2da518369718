"""Storage dtype of a pruned model: the base checkpoint's (bf16 in -> bf16 out) unless ``--save-dtype`` overrides.

The computation keeps its own dtype (``--dtype``, float32 by default, so scores, curvature and OBS solves stay
float32); only the tensors written to model.safetensors are cast, and config.json's ``dtype`` follows them
(``save_pretrained`` writes the dtype of the parameters). The base dtype is read from the checkpoint's headers
before any model is loaded, so a save dtype the base cannot round-trip fails in seconds.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from .errors import ShearHubError
from .loading import DEMO_ALIASES, DEMO_HUB_ID, ModelSource
from .resources_check import _safetensors_header

SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")
BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
# transformers' gguf loader dequantizes; the originals of the GGUF models we load (SmolLM2, Gemma-3) are bf16.
GGUF_DTYPE = "bfloat16"
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_SAFETENSORS = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
# Exponent range: float16 overflows above 65504, bfloat16 and float32 reach 3.4e38.
_RANGE = {"float16": 0, "bfloat16": 1, "float32": 1}


def parse_save_dtype(value: str) -> str:
    """Canonical name of a --save-dtype value (aliases bf16/fp16/fp32 accepted, like --dtype)."""
    name = str(value).strip().lower()
    name = _ALIASES.get(name, name)
    if name not in SAVE_DTYPES:
        raise ShearHubError(f"unknown --save-dtype {value!r}; use one of {', '.join(SAVE_DTYPES)} "
                            "(auto keeps the base checkpoint's dtype)")
    return name


def resolve_save_dtype(requested: str, base: str | None, compute: str) -> str:
    """The dtype to write: ``auto`` = the base's (the compute dtype when the base's is unknown); an explicit one
    must hold every value of the base, so narrowing the range (float16 for a bfloat16/float32 base) is refused."""
    name = parse_save_dtype(requested)
    if name == "auto":
        return base or _ALIASES.get(compute, compute)
    if base and _RANGE[name] < _RANGE[base]:
        raise ShearHubError(f"--save-dtype {name} cannot hold the {base} weights of this model ({base} reaches 3.4e38, "
                            f"{name} overflows above 65504); use --save-dtype auto (keeps {base}) or float32")
    return name


def _is_demo(source: ModelSource) -> bool:
    # The demo folder is a float32 dequantization of a GGUF file; the base it stands for is bf16.
    return source.spec in DEMO_ALIASES and source.hub_id == DEMO_HUB_ID


def base_dtype(source: ModelSource) -> str | None:
    """float32 / bfloat16 / float16 of the base checkpoint, from headers only; None when it cannot be told cheaply."""
    if source.gguf_file or _is_demo(source):
        return GGUF_DTYPE
    folder = Path(source.path)
    if folder.is_dir():
        return folder_dtype(folder)
    return _hub_dtype(source.path)


def folder_dtype(folder: Path) -> str | None:
    """The floating dtype holding most elements in the folder's safetensors headers, else config.json's."""
    counts: Counter[str] = Counter()
    for file in sorted(folder.glob("*.safetensors")):
        try:
            header = _safetensors_header(file)
            for name, meta in header.items():
                if name != "__metadata__" and meta.get("dtype") in _SAFETENSORS:
                    counts[_SAFETENSORS[meta["dtype"]]] += _numel(meta.get("shape") or [])
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # unreadable weights: the loader reports them in its own words
    return counts.most_common(1)[0][0] if counts else _config_dtype(folder / "config.json")


def _numel(shape: list) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _config_dtype(path: Path) -> str | None:
    try:
        config = json.loads(path.read_text())
        config = config.get("text_config") or config
        name = str(config.get("dtype") or config.get("torch_dtype") or "")
    except (OSError, ValueError, AttributeError):
        return None
    name = _ALIASES.get(name, name)
    return name if name in BYTES_PER_ELEMENT else None


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local cache folder of a Hub model, when its config is cached (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed id and the like: the loader reports it
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _hub_dtype(repo_id: str) -> str | None:
    """From the cached snapshot, else the Hub's safetensors metadata (a few header range requests)."""
    snapshot = _hub_snapshot(repo_id)
    found = folder_dtype(snapshot) if snapshot else None
    if found:
        return found
    from huggingface_hub import get_safetensors_metadata

    try:
        counts = get_safetensors_metadata(repo_id).parameter_count
    except Exception:  # offline, unreachable or not a safetensors repo: loading says which, in one line
        return None
    known = {_SAFETENSORS[k]: v for k, v in counts.items() if k in _SAFETENSORS}
    return max(known, key=known.get) if known else None


def base_weights_bytes(source: ModelSource, params: int, base: str | None) -> int | None:
    """Bytes of the base's weights in its own dtype: its safetensors file sizes, or params x bytes for GGUF."""
    if not (source.gguf_file or _is_demo(source)):
        folder = Path(source.path) if Path(source.path).is_dir() else _hub_snapshot(source.path)
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) if folder else 0
        if size:
            return size
    return params * BYTES_PER_ELEMENT[base] if base else None


def cast_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast parameters and saved buffers in place (tied weights stay tied); non-persistent buffers such as RoPE
    frequencies keep their dtype, so casting back to the compute dtype leaves them exact."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    for module in model.modules():
        for key, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point() and key not in module._non_persistent_buffers_set:
                module._buffers[key] = buf.to(dtype)
