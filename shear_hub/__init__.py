"""shear-hub: structured pruning of causal LMs into smaller models that load with from_pretrained."""

__version__ = "0.1.0"

from .modeling import from_pretrained
from .modeling import register_auto_classes as _register

__all__ = ["from_pretrained"]

_register()
