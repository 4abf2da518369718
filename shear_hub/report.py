"""pruning_report.json: what was done to a model, read by card, eval, recover, push and the Space.

``PruningReport`` is its one type, ``write_report`` its one writer and ``read_report`` its one reader (the Space app,
which never imports shear_hub, reads the JSON itself). Keys may be added, never renamed (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ShearHubError
from .redaction import redact, redact_argv

REPORT_NAME = "pruning_report.json"
# 1: the keys prune wrote before the report had a version, plus "schema_version". Reports without the key (written
# before it existed) have the same keys and are read as they are.
SCHEMA_VERSION = 1


def command_line(argv: list[str] | None = None) -> str:
    """The command that made an output, with secrets redacted (tokens are never written anywhere)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("shear-hub", "cli.py", "__main__.py")):
        argv[0] = "shear-hub"
    return shlex.join(redact_argv(argv))


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


class _Unset:
    """The value of a field the report does not hold: ``to_dict`` leaves its key out. Reports written before a key
    existed, hand-written ones and the minimal report recover writes for a model shear-hub did not prune lack some."""

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclass
class PruningReport:
    """pruning_report.json as a type. The fields are its top-level keys, in the order prune writes them; keys this
    version does not know stay in ``extra`` and are written back unchanged. ``method_report`` holds the method's own
    entries (``PruneContext.report``); ``evaluation`` and ``recovery`` are filled by eval and recover."""

    shear_hub_version: str | None = UNSET
    command: str | None = UNSET  # the exact command line, tokens redacted
    base_model: str | None = UNSET  # Hub id when known, else the path given
    base_model_license: str | None = UNSET
    method: str = UNSET
    method_display_name: str = UNSET  # what the method declares for the card (a plug-in may be absent later)
    method_citation: list[str] | None = UNSET  # [text, bibtex]
    method_config: dict = UNSET
    method_report: dict = UNSET
    layout: str = UNSET  # "uniform" | "per-layer"
    structures: list[str] = UNSET
    target_sparsity: float = UNSET
    achieved_sparsity: float = UNSET
    params_before: int = UNSET  # tied weights counted once
    params_after: int = UNSET
    architecture_before: str = UNSET
    architecture_after: str = UNSET
    dims_before: dict = UNSET  # ModelDims.to_json()
    dims_after: dict = UNSET
    removed_groups: dict[str, int] = UNSET
    calibration: dict | None = UNSET  # None: the method needs no calibration text
    evaluation: dict = UNSET  # "heldout_perplexity" from prune; eval and recover add their measurements
    recovery: dict | None = UNSET  # recover's settings, curve and timings
    device: str = UNSET
    dtype: str = UNSET  # compute dtype
    save_dtype: str | None = UNSET  # dtype of the saved weights
    base_dtype: str | None = UNSET
    weights_bytes_before: int | None = UNSET
    weights_bytes_after: int | None = UNSET  # the saved *.safetensors sizes
    timings_s: dict[str, float] = UNSET  # seconds per stage; "save" is recorded before the report is written
    transformers: dict = UNSET  # transformers_record()
    max_memory: dict = UNSET  # only under --max-memory
    warning: str = UNSET  # only when the achieved sparsity misses the target by more than 1%
    schema_version: int | None = SCHEMA_VERSION  # None: written before reports had a version
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The JSON keys that are fields (all but ``schema_version`` and ``extra``), in the order they are written."""
        return tuple(f.name for f in fields(cls) if f.name not in ("schema_version", "extra"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: ``schema_version`` (when known), the fields that are set, then ``extra``."""
        out: dict[str, Any] = {} if self.schema_version is None else {"schema_version": self.schema_version}
        out.update((k, getattr(self, k)) for k in self.keys() if getattr(self, k) is not UNSET)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningReport:
        """The inverse of ``to_dict``: ``PruningReport.from_dict(d).to_dict() == d`` for every report JSON object."""
        if not isinstance(data, dict):
            raise ShearHubError(f"a pruning report is a JSON object, not {type(data).__name__}; "
                                "re-run `shear-hub prune` to rewrite it")
        known = cls.keys()
        return cls(**{k: data[k] for k in known if k in data}, schema_version=data.get("schema_version"),
                   extra={k: v for k, v in data.items() if k not in known and k != "schema_version"})


def read_report(model_dir: str | os.PathLike, *, missing_ok: bool = False) -> PruningReport | None:
    """The report of a model folder. A folder without one (or a ``model_dir`` that is not a folder, e.g. a Hub id)
    gives None when ``missing_ok``, else ShearHubError; a report that is not a JSON object always raises."""
    folder = Path(model_dir)
    path = folder / REPORT_NAME
    if not path.is_file():
        if missing_ok:
            return None
        if not folder.is_dir():
            raise ShearHubError(f"{folder} is not a folder; give the folder of a pruned model")
        raise ShearHubError(f"no {REPORT_NAME} in {folder}; run `shear-hub prune` first or point at a pruned model "
                            "folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShearHubError(f"{path} is not valid JSON ({err.__class__.__name__}); re-run `shear-hub prune` to "
                            "rewrite it") from None
    if not isinstance(data, dict):
        raise ShearHubError(f"{path} is not a JSON object; re-run `shear-hub prune` to rewrite it")
    return PruningReport.from_dict(data)


def write_report(model_dir: str | os.PathLike, report: PruningReport) -> Path:
    """Write ``report`` atomically (tokens redacted). A report read from an older folder is stamped with this
    version's ``schema_version`` (the object too, so that it and the file stay equal)."""
    if report.schema_version is None or report.schema_version < SCHEMA_VERSION:
        report.schema_version = SCHEMA_VERSION
    path = Path(model_dir) / REPORT_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(redact(json.dumps(report.to_dict(), indent=2, sort_keys=False, default=_jsonable)) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
