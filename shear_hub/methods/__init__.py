"""Pruning methods, one folder each (config + method); each registers itself with ``@register_method``.

Every package in this folder is imported here (pkgutil), and so are the plug-ins installed under the
``shear_hub.methods`` entry-point group; a method defined anywhere else is registered when its module is imported.
The contract a method declares is described in ``base.py``.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings

from ..errors import ShearHubError
from .base import (METHODS, Citation, PruneContext, PruningMethod, ScoringMethod, group_scores, input_norms,
                   option_help, prunable_weights, register_method)

ENTRY_POINT_GROUP = "shear_hub.methods"


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            importlib.import_module(f"{__name__}.{module.name}")
    try:
        from importlib.metadata import entry_points

        plugins = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken distribution metadata never stops the built-in methods
        return
    for ep in plugins:
        try:
            ep.load()  # importing the plug-in registers its methods
        except Exception as exc:
            warnings.warn(f"shear-hub: pruning method plug-in {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)


_discover()


def get_method(name: str, options: dict | None = None) -> PruningMethod:
    """Instantiate a method by name; ``options`` become fields of its config dataclass."""
    if name not in METHODS:
        raise ShearHubError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    cls = METHODS[name]
    try:
        config = cls.config_class(**(options or {}))
    except TypeError:
        from dataclasses import fields

        known = [f.name for f in fields(cls.config_class)]
        bad = [k for k in (options or {}) if k not in known]
        raise ShearHubError(f"method {name} has no option {bad[0] if bad else '?'!r}; "
                            f"use --option KEY=VALUE with KEY one of {', '.join(known) or '(none)'}") from None
    return cls(config)


def reported_method(reported: str | None) -> tuple[type[PruningMethod] | None, str]:
    """The registered method a report's "method" string names and the model card's name for it: its own name
    first, else the first method (in listing order) whose ``card_name`` claims it; (None, the string) otherwise."""
    text = str(reported or "")
    if text in METHODS:
        return METHODS[text], METHODS[text].card_name(text) or METHODS[text].display_name
    for cls in METHODS.values():
        name = cls.card_name(text)
        if name:
            return cls, name
    return None, text


__all__ = ["METHODS", "Citation", "PruneContext", "PruningMethod", "ScoringMethod", "get_method", "group_scores",
           "input_norms", "option_help", "prunable_weights", "register_method", "reported_method"]
