"""Memory and disk estimates checked before a job starts, so a run that cannot fit fails in seconds, not hours.

The estimate is read from the weights' headers (safetensors / GGUF), never by loading the model:

    memory = (dense weights + max(pruned copy, method state + activations)) x 1.2 + runtime overhead
    disk   = pruned weights + the input's non-weight files (tokenizer, config)

Method state: what the method's ``memory_estimate`` hook declares (shear_hub/methods/base.py; by default gradients,
one more copy of the weights, for a method that back-propagates, and activations for one that calibrates; e.g.
K-FAC factors for the LLM Surgeon), and for ``recover`` the teacher, LoRA adapters with their Adam moments, and
activations kept for backward.

Overrides: ``SHEAR_HUB_SKIP_RESOURCE_CHECK=1`` skips the check; ``SHEAR_HUB_MEMORY_LIMIT_BYTES`` /
``SHEAR_HUB_GPU_MEMORY_LIMIT_BYTES`` / ``SHEAR_HUB_DISK_LIMIT_BYTES`` replace what is measured (tests, or to
leave room for other jobs).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ShearHubError

GIB = 1024**3
RUNTIME_OVERHEAD = 600 * 1024**2  # python + torch + transformers, measured ~0.5 GiB RSS before any model
SAFETY = 1.2
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
_LINEAR_SUFFIXES = ("proj.weight", "fc1.weight", "fc2.weight", "dense.weight", "qkv_proj.weight", "gate_up_proj.weight")


@dataclass
class WeightsInfo:
    """What the headers say: parameter count, bytes on disk, 2-D projection shapes per layer, other files' size."""

    params: int
    file_bytes: int
    other_bytes: int
    layer_linears: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)


@dataclass
class Estimate:
    memory_bytes: int
    disk_bytes: int
    parts: dict[str, int]

    def describe(self) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in self.parts.items() if v)


def _fmt(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 1024**2:.1f} MiB"


def skipped() -> bool:
    return os.environ.get("SHEAR_HUB_SKIP_RESOURCE_CHECK", "").strip().lower() in ("1", "true", "yes")


# ----------------------------------------------------------------- reading sizes without loading ------------------
def _safetensors_header(path: Path) -> dict:
    """The header of a local safetensors file, ``{name: {"dtype", "shape", "data_offsets"}}`` plus ``"__metadata__"``
    when it has any, read by huggingface_hub (the 8-byte length and the JSON after it; no tensor is read). Raises
    OSError for a missing file and ValueError for one that is not safetensors."""
    from huggingface_hub import parse_local_safetensors_file_metadata
    from huggingface_hub.errors import SafetensorsParsingError

    try:
        parsed = parse_local_safetensors_file_metadata(path)
    except SafetensorsParsingError as exc:
        raise ValueError(str(exc)) from exc
    header = {"__metadata__": parsed.metadata} if parsed.metadata else {}
    for name, t in parsed.tensors.items():
        header[name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": list(t.data_offsets)}
    return header


def _layer_key(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "h", "layer", "blocks") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return ""


def weights_info(path: str | os.PathLike) -> WeightsInfo | None:
    """Sizes of a local model folder or .gguf file; None when they cannot be read cheaply (e.g. a Hub id)."""
    path = Path(path)
    try:
        if path.is_file() and path.suffix == ".gguf":
            return _gguf_info(path)
        if not path.is_dir():
            return None
        params, file_bytes, linears = 0, 0, {}
        weight_files = sorted(path.glob("*.safetensors"))
        if not weight_files:
            return None
        for wf in weight_files:
            file_bytes += wf.stat().st_size
            for name, meta in _safetensors_header(wf).items():
                if name == "__metadata__":
                    continue
                shape = meta["shape"]
                n = 1
                for d in shape:
                    n *= int(d)
                params += n
                if len(shape) == 2 and name.endswith(_LINEAR_SUFFIXES):
                    linears.setdefault(_layer_key(name), []).append((int(shape[1]), int(shape[0])))
        other = sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.suffix != ".safetensors")
        config = {}
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
            config = config.get("text_config") or config
        return WeightsInfo(params, file_bytes, other, linears, config)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable headers: the loader reports the real problem with its own message


def _gguf_info(path: Path) -> WeightsInfo | None:
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    reader = GGUFReader(str(path))
    params, linears = 0, {}
    for t in reader.tensors:
        params += int(t.n_elements)
        shape = [int(d) for d in t.shape]
        if len(shape) == 2 and t.name.endswith(("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                                                 "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")):
            linears.setdefault(".".join(t.name.split(".")[:2]), []).append((shape[0], shape[1]))
    return WeightsInfo(params, path.stat().st_size, 0, linears, {})


# ----------------------------------------------------------------- estimates --------------------------------------
def _activation_bytes(info: WeightsInfo, batch: int, seq_len: int, backward: bool, bytes_per: int) -> int:
    cfg = info.config
    hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    inter = int(cfg.get("intermediate_size") or cfg.get("ffn_dim") or 4 * hidden)
    layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or max(1, len(info.layer_linears)))
    vocab = int(cfg.get("vocab_size") or 0)
    tokens = batch * seq_len
    logits = tokens * vocab * 4 * (3 if backward else 1)  # float32 logits (+ softmax and its gradient)
    per_layer = tokens * (hidden * 12 + inter * 3) * bytes_per  # what autograd keeps per decoder layer
    heads = int(cfg.get("num_attention_heads") or 1)
    attn = batch * heads * seq_len * seq_len * 4  # eager attention scores of one layer
    return logits + attn + (per_layer * layers if backward else per_layer)


@dataclass
class MethodMemoryInputs:
    """What a pruning method's ``memory_estimate`` hook sees: the weights' sizes from their headers and its options."""

    info: WeightsInfo
    options: dict  # the method's config as a dict (``PruningMethod.config_dict()``)
    dtype_bytes: int  # bytes per parameter in the compute dtype
    batch_size: int
    calib_samples: int
    seq_len: int

    @property
    def weights_bytes(self) -> int:
        """One copy of the weights in the compute dtype (what gradients take)."""
        return self.info.params * self.dtype_bytes

    @property
    def calibration_token_bytes(self) -> int:
        return self.calib_samples * self.seq_len * 8

    def activation_bytes(self, backward: bool) -> int:
        """Activations of one calibration batch: one layer's, or every layer's when kept for ``backward``."""
        return _activation_bytes(self.info, min(self.batch_size, self.calib_samples), self.seq_len, backward,
                                 self.dtype_bytes)


def estimate_prune(info: WeightsInfo, *, method: str, sparsity: float, dtype: str, calib_samples: int, seq_len: int,
                   batch_size: int, method_options: dict | None = None, save_dtype: str | None = None) -> Estimate:
    b = DTYPE_BYTES.get(dtype, 4)
    weights = info.params * b
    parts = {"dense weights": weights, "pruned copy": int(weights * (1 - sparsity))}
    from .methods import METHODS, PruningMethod

    # The method's own state (gradients, curvature, activations), declared by its class; an unregistered name
    # gets the default of a calibrated method without gradients.
    mem = MethodMemoryInputs(info, dict(method_options or {}), b, batch_size, calib_samples, seq_len)
    parts.update({k: int(v) for k, v in METHODS.get(method, PruningMethod).memory_estimate(mem).items()})
    # Peak, not sum: scoring state (gradients, curvature, activations) is freed before surgery builds the copy.
    scoring = sum(v for k, v in parts.items() if k not in ("dense weights", "pruned copy"))
    memory = int((weights + max(parts["pruned copy"], scoring)) * SAFETY) + RUNTIME_OVERHEAD
    parts["runtime"] = RUNTIME_OVERHEAD
    saved = DTYPE_BYTES.get(save_dtype or dtype, b)  # written in the save dtype, not the compute dtype
    disk = int(info.params * (1 - sparsity) * saved) + info.other_bytes + 2 * 1024**2  # + card, plot, report
    return Estimate(memory, disk, parts)


def estimate_recover(info: WeightsInfo, *, dtype: str, batch_size: int, seq_len: int, lora_rank: int,
                     teacher: WeightsInfo | None = None) -> Estimate:
    b = DTYPE_BYTES.get(dtype, 4)
    lora = sum((i + o) * lora_rank for shapes in info.layer_linears.values() for i, o in shapes) * 4
    parts = {"model weights": info.params * b, "teacher weights": teacher.params * b if teacher else 0,
             "LoRA + Adam moments + gradients": lora * 4,
             "activations": _activation_bytes(info, batch_size, seq_len, True, b)}
    if teacher:
        parts["teacher logits"] = batch_size * seq_len * int(teacher.config.get("vocab_size") or 0) * 4
    memory = int(sum(parts.values()) * SAFETY) + RUNTIME_OVERHEAD
    parts["runtime"] = RUNTIME_OVERHEAD
    disk = info.params * b * 2 + info.other_bytes + 2 * 1024**2  # merged output + one resumable checkpoint
    return Estimate(memory, disk, parts)


# ----------------------------------------------------------------- what is available ------------------------------
def _env_bytes(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(float(value))
    except ValueError:
        raise ShearHubError(f"{name}={value!r} is not a number of bytes; set e.g. {name}=8000000000 or unset it") from None


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit when there is one."""
    forced = _env_bytes("SHEAR_HUB_MEMORY_LIMIT_BYTES")
    if forced is not None:
        return forced
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        try:
            import psutil

            avail = int(psutil.virtual_memory().available)
        except Exception:
            return None
    try:  # containers: the cgroup v2 limit minus what is already used
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            cap = int(limit) - used
            avail = cap if avail is None else min(avail, cap)
    except (OSError, ValueError):
        pass
    return avail


def available_gpu_memory(device: str) -> int | None:
    forced = _env_bytes("SHEAR_HUB_GPU_MEMORY_LIMIT_BYTES")
    if forced is not None:
        return forced
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except Exception:
        return None


def available_disk(output: str | os.PathLike) -> int | None:
    forced = _env_bytes("SHEAR_HUB_DISK_LIMIT_BYTES")
    if forced is not None:
        return forced
    probe = Path(output).expanduser().resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(shutil.disk_usage(probe).free)
    except OSError:
        return None


# ----------------------------------------------------------------- the check --------------------------------------
def check(estimate: Estimate, *, output: str | os.PathLike, device: str, job: str, low_memory_hint: str) -> None:
    """Raise a one-line ShearHubError (estimate included) when memory or disk is too small."""
    override = "or set SHEAR_HUB_SKIP_RESOURCE_CHECK=1 to try anyway"
    on_gpu = device.startswith("cuda")
    free = available_gpu_memory(device) if on_gpu else available_memory()
    where = f"GPU memory on {device}" if on_gpu else "memory (RAM)"
    if free is not None and estimate.memory_bytes > free:
        raise ShearHubError(
            f"not enough {where} for this {job}: estimated {_fmt(estimate.memory_bytes)} "
            f"({estimate.describe()}), available {_fmt(free)}; {low_memory_hint}, {override}"
        )
    disk = available_disk(output)
    if disk is not None and estimate.disk_bytes > disk:
        raise ShearHubError(
            f"not enough disk space at {Path(output).expanduser().resolve().parent} for this {job}: estimated "
            f"{_fmt(estimate.disk_bytes)} to write, {_fmt(disk)} free; free some space or choose another --output, "
            f"{override}"
        )


def prune_hint(method: str, dtype: str) -> str:
    hints = []
    if dtype in ("float32", "fp32"):
        hints.append("--dtype bfloat16")
    hints.append("fewer --calib-samples / a smaller --batch-size or --seq-len")
    from .methods import METHODS

    method_hint = METHODS[method].low_memory_hint() if method in METHODS else None
    if method_hint:
        hints.append(method_hint)
    return "use " + ", ".join(hints)


def check_prune(model_path: str, output: str | os.PathLike, *, method: str, sparsity: float, dtype: str,
                calib_samples: int, seq_len: int, batch_size: int, device: str,
                method_options: dict | None = None, save_dtype: str | None = None) -> Estimate | None:
    """The pre-flight check of ``shear-hub prune``; returns the estimate (None when skipped or unknown)."""
    if skipped():
        return None
    info = weights_info(model_path)
    if info is None:
        return None
    est = estimate_prune(info, method=method, sparsity=sparsity, dtype=dtype, calib_samples=calib_samples,
                         seq_len=seq_len, batch_size=batch_size, method_options=method_options, save_dtype=save_dtype)
    if device.startswith("cuda"):  # weights are read into RAM before they move to the GPU
        free = available_memory()
        if free is not None and info.params * DTYPE_BYTES.get(dtype, 4) + RUNTIME_OVERHEAD > free:
            raise ShearHubError(f"not enough memory (RAM) to load the model before moving it to {device}: needs "
                                f"{_fmt(info.params * DTYPE_BYTES.get(dtype, 4) + RUNTIME_OVERHEAD)}, available "
                                f"{_fmt(free)}; use --dtype bfloat16 or free memory, or set "
                                "SHEAR_HUB_SKIP_RESOURCE_CHECK=1 to try anyway")
    check(est, output=output, device=device, job=f"{method} prune", low_memory_hint=prune_hint(method, dtype))
    return est


def check_recover(model_path: str, output: str | os.PathLike, *, dtype: str, batch_size: int, seq_len: int,
                  lora_rank: int, device: str = "cpu", teacher_path: str | None = None) -> Estimate | None:
    """The pre-flight check of ``shear-hub recover`` (call after resolve_source, before loading)."""
    if skipped():
        return None
    info = weights_info(model_path)
    if info is None:
        return None
    teacher = weights_info(teacher_path) if teacher_path else None
    est = estimate_recover(info, dtype=dtype, batch_size=batch_size, seq_len=seq_len, lora_rank=lora_rank,
                           teacher=teacher)
    hint = ("use a smaller --batch-size or --seq-len, --dtype bfloat16, a smaller --lora-rank, or no --teacher")
    check(est, output=output, device=device or "cpu", job="recovery", low_memory_hint=hint)
    return est
