"""pruning_report.json: what was done to a model, read by card, eval, recover, push and the Space."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

REPORT_NAME = "pruning_report.json"
_SECRET_FLAGS = ("--token",)


def command_line(argv: list[str] | None = None) -> str:
    """The command that made an output, with secrets redacted (tokens are never written anywhere)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("shear-hub", "cli.py", "__main__.py")):
        argv[0] = "shear-hub"
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        if arg in _SECRET_FLAGS:
            hide_next = True
        elif any(arg.startswith(f + "=") for f in _SECRET_FLAGS):
            arg = arg.split("=", 1)[0] + "=***"
        out.append(redact(arg))
    return shlex.join(out)


def redact(text: str) -> str:
    """Remove anything that looks like a Hugging Face token, and the current HF_TOKEN value."""
    token = os.environ.get("HF_TOKEN")
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{20,}", "***", text)


def transformers_record(layout: str) -> dict:
    """The transformers this folder was written with and, for per-layer folders, the release range their shipped
    modeling code was tested with (the card states it; the code warns on load outside it)."""
    import transformers

    record = {"saved_with": transformers.__version__}
    if layout == "per-layer":
        from .modeling.modeling_shear import TESTED_TRANSFORMERS

        record["shipped_code_tested"] = list(TESTED_TRANSFORMERS)
    return record


def weights_bytes(model_dir: str | os.PathLike) -> int:
    """Bytes of the folder's *.safetensors files: what is recorded as weights_bytes_after."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def format_bytes(n: float) -> str:
    """Decimal units, as the Hub shows file sizes: 269.0 MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def read_report(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / REPORT_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def write_report(model_dir: str | os.PathLike, report: dict) -> Path:
    path = Path(model_dir) / REPORT_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(redact(json.dumps(report, indent=2, sort_keys=False, default=_jsonable)) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
