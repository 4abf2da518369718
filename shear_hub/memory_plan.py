"""``--max-memory``: parse a per-device cap (accelerate's ``max_memory``) and check it against the weights' headers.

Semantics are accelerate's (``infer_auto_device_map`` / ``dispatch_model``): the cap is per device, for the
*weights* only (activations, calibration data and method state come on top, as in accelerate); modules are placed on
the GPUs, then the CPU, in order, and whatever does not fit is offloaded to disk and read back one module at a time
during each forward pass. Accelerate reserves room for the largest no-split unit (one decoder layer) on the main
device, and an offloaded embedding matrix or LM head is onloaded whole when it runs, so the smallest cap that works is

    min cap = max(largest decoder layer, embedding matrix, untied LM head)   (in the compute dtype)

Nothing is pinned resident below that: with a cap of exactly the minimum every module lives on disk. The check reads
the safetensors headers only (no weights are loaded) and refuses smaller caps with the minimum in the message.

Which methods run under the cap is part of the method contract (shear_hub/methods/base.py): an element-wise
importance from the weights (``weight_importance``: magnitude, wanda; one module at a time), or from the weights and
their gradients (``gradient_importance``: taylor; one decoder layer at a time, shear_hub/layer_stream.py), or a
selection of its own on the dispatched model (``select_offloaded``: the surgeon's K-FAC shot, layer by layer, its OBS
updates staged on disk). The others (training through the whole model: lorashear) are refused before anything
loads, as are settings a method cannot stream (``offload_refusal``).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ShearHubError

EXAMPLE = "--max-memory cpu=2GiB (or cuda:0=70GiB,cpu=20GiB)"
_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
_GPU_KEY = re.compile(r"^(?:cuda:?)?(\d+)$")


def _fmt(n: int) -> str:
    """A size the user can paste back into --max-memory (rounded up, so the printed minimum really works)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            value = -(-n * 100 // scale) / 100  # ceil to 2 decimals
            return f"{value:g}{unit}"
    return str(n)


def parse_max_memory(value: str | dict | None) -> dict | None:
    """``"cuda:0=70GiB,cpu=20GiB"`` -> ``{0: 75161927680, "cpu": 21474836480}`` (accelerate's ``max_memory``).

    Keys: ``cpu``, ``cuda:N`` / ``cuda`` / ``N`` (a GPU), ``mps``. Values: bytes, or a number with KiB/MiB/GiB/KB/MB/GB.
    Raises a one-line ShearHubError naming the bad part and the fix."""
    from accelerate.utils import convert_file_size_to_int

    if value is None:
        return None
    items = value.items() if isinstance(value, dict) else None
    if items is None:
        text = str(value).strip()
        if not text:
            raise ShearHubError(f"--max-memory is empty; give DEVICE=SIZE pairs, e.g. {EXAMPLE}")
        pairs = []
        for part in text.split(","):
            part = part.strip()
            if "=" not in part:
                raise ShearHubError(f"--max-memory entry {part!r} is not DEVICE=SIZE; use e.g. {EXAMPLE}")
            pairs.append(tuple(s.strip() for s in part.split("=", 1)))
        items = pairs
    cap: dict = {}
    for key, size in items:
        key_text = str(key).strip().lower()
        gpu = _GPU_KEY.match(key_text)
        if key_text == "cuda":
            device = 0
        elif gpu:
            device = int(gpu.group(1))
        elif key_text in ("cpu", "mps"):
            device = key_text
        elif key_text == "disk":
            raise ShearHubError("--max-memory takes no disk entry: what does not fit in the listed devices goes to "
                                f"disk; use e.g. {EXAMPLE}")
        else:
            raise ShearHubError(f"--max-memory device {key!r} is unknown; use cpu, cuda:N or mps, e.g. {EXAMPLE}")
        if device in cap:
            raise ShearHubError(f"--max-memory names {key!r} twice; give each device once, e.g. {EXAMPLE}")
        size_text = str(size).strip().replace(" ", "")
        try:
            n = int(size_text) if size_text.isdigit() else convert_file_size_to_int(size_text)
        except (ValueError, TypeError, AttributeError):
            n = -1
        if n <= 0:
            raise ShearHubError(f"--max-memory size {size!r} for {key_text} is not a positive size; write bytes or a "
                                f"number with GiB/MiB/GB/MB, e.g. {EXAMPLE}")
        cap[device] = n
    if not any(isinstance(k, int) for k in cap) and "cpu" not in cap and "mps" not in cap:
        raise ShearHubError(f"--max-memory names no device; use e.g. {EXAMPLE}")
    return cap


def describe(cap: dict) -> str:
    return ",".join(f"{'cuda:' + str(k) if isinstance(k, int) else k}={_fmt(v)}" for k, v in cap.items())


def main_device(cap: dict, device: str = "cpu") -> str:
    """Where computation runs: the first GPU of the cap, else the CPU. ``--device`` must agree with the cap."""
    gpus = sorted(k for k in cap if isinstance(k, int))
    if gpus:
        import torch

        if not torch.cuda.is_available():
            raise ShearHubError(f"--max-memory names cuda:{gpus[0]} but no CUDA GPU is visible; use "
                                "--max-memory cpu=SIZE")
        return f"cuda:{gpus[0]}"
    if "mps" in cap:
        return "mps"
    if str(device).startswith("cuda"):
        raise ShearHubError(f"--device {device} but --max-memory gives that GPU no memory; add it, e.g. "
                            f"--max-memory {device if ':' in device else 'cuda:0'}=70GiB,cpu=20GiB")
    return "cpu"


def check_method(method: str, method_options: dict | None = None) -> None:
    """Refuse, before any model work, a method that cannot stream its weights (see the module docstring)."""
    from .methods import METHODS

    cls = METHODS.get(method)
    if cls is None or cls.streams_weights():  # unknown names get get_method's own error
        return
    why = "trains through the whole model" if cls.needs_gradients else "needs the whole model in memory"
    capped = [name for name, other in METHODS.items() if other.streams_weights()]
    raise ShearHubError(f"--method {method} {why} and does not run under --max-memory; --max-memory supports "
                        f"--method {' or '.join(capped)} (or drop --max-memory)")


# ----------------------------------------------------------------- the plan, from the headers ---------------------
@dataclass
class HeaderPlan:
    total_bytes: int  # all weights in the compute dtype
    min_cap_bytes: int  # the smallest cap that works (largest unit accelerate onloads at once)
    largest_unit: str  # which unit sets the minimum


def _unit(name: str) -> str:
    """Decoder layer ``model.layers.3`` for its tensors, else the owning module (``model.embed_tokens``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "h", "layer", "blocks") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return ".".join(parts[:-1])


def header_plan(folder: str | os.PathLike, dtype: str) -> HeaderPlan | None:
    """Sizes per onloadable unit from the safetensors headers (None when the folder has no readable headers)."""
    from .resources_check import _safetensors_header

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    per = _BYTES.get(dtype, 4)
    units: dict[str, int] = {}
    try:
        for f in files:
            for name, meta in _safetensors_header(f).items():
                if name == "__metadata__":
                    continue
                n = 1
                for d in meta["shape"]:
                    n *= int(d)
                units[_unit(name)] = units.get(_unit(name), 0) + n * per
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not units:
        return None
    largest = max(units, key=units.get)
    return HeaderPlan(sum(units.values()), units[largest], largest)


def check_cap(cap: dict, model_path: str | os.PathLike, dtype: str, *, spec: str = "") -> HeaderPlan:
    """Refuse, before anything loads, a model the cap cannot stream and a cap that cannot hold one unit."""
    plan = header_plan(model_path, dtype)
    if plan is None:
        raise ShearHubError(f"--max-memory needs a local model folder with safetensors weights, and {spec or model_path} "
                            "is not one; download it first (e.g. `hf download ID --local-dir DIR`) and pass DIR")
    budget = max(cap.values())  # the unit is onloaded on one device: the largest budget must hold it
    if budget < plan.min_cap_bytes:
        where = describe(cap)
        raise ShearHubError(f"--max-memory {where} cannot hold one {plan.largest_unit} ({_fmt(plan.min_cap_bytes)} in "
                            f"{dtype}), the largest unit that is onloaded at once; the smallest cap that works is "
                            f"--max-memory cpu={_fmt(plan.min_cap_bytes)}")
    return plan


def check_offload_disk(folder: str | os.PathLike, needed: int) -> None:
    """The pruned model is staged as safetensors beside the output before it is dispatched under the cap."""
    probe = Path(folder).expanduser().resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if needed > free:
        raise ShearHubError(f"not enough disk space at {probe} for --max-memory staging: {_fmt(needed)} needed, "
                            f"{_fmt(free)} free; free some space or choose another --output")
