"""Pruning methods, one folder each (config + method), registered here by CLI name."""

from __future__ import annotations

from ..errors import ShearHubError
from .base import PruneContext, PruningMethod, ScoringMethod
from .lorashear import LoRAShearMethod
from .magnitude import MagnitudeMethod
from .surgeon import SurgeonMethod
from .taylor import TaylorMethod
from .wanda import WandaMethod

METHODS: dict[str, type[PruningMethod]] = {cls.name: cls for cls in (MagnitudeMethod, WandaMethod, TaylorMethod, SurgeonMethod, LoRAShearMethod)}


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


__all__ = ["METHODS", "PruneContext", "PruningMethod", "ScoringMethod", "get_method"]
