"""Prepare a ready-to-push Gradio Space folder (space/ template) configured for one pruned model.

The Space app (space/app.py) is standalone; this module only copies it and writes
  README.md          Space front matter (sdk gradio, app_file, models used) + the template's text
  shear_space.json   {"model": ..., "base_model": ...}: defaults the app reads (Space variables override)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from .errors import ShearHubError
from .hub.ids import is_hub_id
from .io import atomic_output_dir
from .report import REPORT_NAME, read_report

SPACE_FILES = ("app.py", "requirements.txt")
CONFIG_NAME = "shear_space.json"
_FRONT = "---\n"


def template_dir() -> Path:
    """The space/ folder of the source tree, or its copy inside an installed wheel (shear_hub/resources/space)."""
    source = Path(__file__).resolve().parent.parent / "space"
    for here in (source, Path(__file__).resolve().parent / "resources" / "space"):
        if (here / "app.py").is_file():
            return here
    raise ShearHubError(f"Space template not found at {source}; reinstall shear-hub (pip install -e .)")


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    if not text.startswith(_FRONT):
        return {}, text
    end = text.find("\n---", len(_FRONT))
    if end < 0:
        return {}, text
    meta = yaml.safe_load(text[len(_FRONT) : end]) or {}
    body = text[end + len("\n---") :].lstrip("\n")
    return meta, body


def _is_hub_id(ref: str) -> bool:
    """A Hub repo id (shear_hub.hub.ids) that is not an existing local path."""
    return is_hub_id(ref) and not Path(ref).expanduser().exists()


def _card_base_model(model_dir: Path) -> str | None:
    """base_model from the model card front matter, else from pruning_report.json."""
    readme = model_dir / "README.md"
    if readme.is_file():
        meta, _ = _split_front_matter(readme.read_text(encoding="utf-8"))
        base = meta.get("base_model")
        if isinstance(base, list):
            base = base[0] if base else None
        if base:
            return str(base)
    try:
        report = read_report(model_dir, missing_ok=True)
    except ShearHubError:  # a broken report names no base model
        return None
    return str(report.base_model) if report is not None and report.base_model else None


def hub_base_model_for(model_dir: str | Path, base_model: str | None = None) -> str:
    """The base model Hub id a Space for ``model_dir`` will load; ShearHubError when there is none.

    Called before any upload so `push --space` fails before pushing anything."""
    base = base_model or _card_base_model(Path(model_dir).expanduser())
    if not base:
        raise ShearHubError("the pruned model card has no base_model; pass the base model's Hub id (--space-base-model)")
    if not _is_hub_id(base):
        raise ShearHubError(
            f"base model '{base}' is not a Hub id, so a Space cannot load it; "
            "pass the base model's Hub id (--space-base-model)"
        )
    return base


def _hub_base_model(repo_id: str) -> str | None:
    """Best effort: read the card of a Hub model; None when offline (the app resolves it at start)."""
    from huggingface_hub import hf_hub_download

    for name in ("README.md", REPORT_NAME):
        try:
            path = Path(hf_hub_download(repo_id, name))
        except Exception:
            continue
        base = _card_base_model(path.parent)
        if base:
            return base
    return None


def prepare_space_folder(
    model_id_or_dir: str | Path,
    out_dir: str | Path,
    base_model: str | None = None,
    *,
    hub_model_id: str | None = None,
    title: str | None = None,
    overwrite: bool = True,
    require_hub_ids: bool = False,
) -> Path:
    """Write a Space folder at ``out_dir`` that loads ``model_id_or_dir`` next to its base model.

    ``hub_model_id``: the Hub id the Space should load when ``model_id_or_dir`` is a local folder that was
    (or is being) pushed there; without it the Space config points at the local folder (local runs, tests).
    ``base_model``: default is the pruned model card's ``base_model``.
    ``require_hub_ids``: refuse local paths (a Space on the Hub can only load Hub repos).
    """
    ref = str(model_id_or_dir)
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ShearHubError(f"{local} has no config.json; pass a pruned model folder or a Hub model id")
        model_ref = hub_model_id or str(local.resolve())
        base = base_model or _card_base_model(local)
    elif _is_hub_id(ref):
        model_ref = hub_model_id or ref
        base = base_model or _hub_base_model(ref)
    else:
        raise ShearHubError(f"model '{ref}' is neither an existing folder nor a valid Hub id (owner/name); fix the path")
    if hub_model_id is not None and not _is_hub_id(hub_model_id):
        raise ShearHubError(f"'{hub_model_id}' is not a valid Hub model id; use owner/name")

    if require_hub_ids:
        if not _is_hub_id(model_ref):
            raise ShearHubError(f"a Space cannot load the local folder {model_ref}; push the model and pass its Hub id")
        base = hub_base_model_for(local if local.is_dir() else ref, base)

    src = template_dir()
    meta, body = _split_front_matter((src / "README.md").read_text(encoding="utf-8"))
    short = model_ref.rstrip("/").split("/")[-1]
    meta["title"] = (title or f"{short} vs base")[:60]
    meta["sdk"] = "gradio"
    meta["app_file"] = "app.py"
    # `models` lets the Hub link the Space to the repos it uses; local paths are not Hub ids.
    meta["models"] = [m for m in (model_ref, base) if m and _is_hub_id(m)]
    config = {"model": model_ref, "base_model": base}

    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        for name in SPACE_FILES:
            shutil.copy2(src / name, tmp / name)
        front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
        (tmp / "README.md").write_text(f"{_FRONT}{front}{_FRONT}\n{body}", encoding="utf-8")
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return Path(out_dir).expanduser().resolve()
