"""Atomic output folders: written to a hidden sibling and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ShearHubError


def check_not_input_or_existing(out: Path, overwrite: bool, inputs: tuple[str | os.PathLike, ...], *,
                                what: str, instead: str) -> None:
    """The refusals every output shares (folder or file): not the input, not inside it, not there unless asked."""
    for source in inputs:
        src = Path(source).expanduser()
        if src.exists() and src.resolve() == out:
            raise ShearHubError(f"{what} {out} is the input model; choose another --output")
        if src.exists() and src.resolve() in out.parents:
            raise ShearHubError(f"{what} {out} is inside the input model folder; choose {instead} outside it")
    if out.exists() and not overwrite:
        raise ShearHubError(f"{what} {out} already exists; use --overwrite to replace it or choose another --output")


def check_output_dir(output: str | os.PathLike, overwrite: bool, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse outputs that would clobber something, before any work starts."""
    out = Path(output).expanduser().resolve()
    check_not_input_or_existing(out, overwrite, inputs, what="output folder", instead="a folder")
    if out.exists() and not out.is_dir():
        raise ShearHubError(f"output path {out} exists and is not a folder; remove it or choose another --output")
    return out


@contextlib.contextmanager
def atomic_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; on success it replaces ``output`` in one rename.

    On any error (or a kill) the temporary folder is removed (or left hidden as ``.{name}.tmp-*``) and ``output`` is
    untouched, so a half-written model folder is never visible under the requested name.
    """
    out = check_output_dir(output, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale_temporaries(output: str | os.PathLike) -> None:
    """Remove hidden temporaries that a killed run left beside ``output``."""
    out = Path(output).expanduser().resolve()
    if not out.parent.exists():
        return
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
