"""Per-layer model classes, registered with the transformers Auto classes when shear_hub is imported.

The two files beside this one are copied verbatim into every per-layer model folder (``trust_remote_code`` path).
"""

from __future__ import annotations

from pathlib import Path

from . import configuration_shear, modeling_shear

MODELING_FILES = (Path(__file__).with_name("configuration_shear.py"), Path(__file__).with_name("modeling_shear.py"))

# model_type -> (config class, causal LM class)
PER_LAYER_CLASSES = {
    cls.model_type: (cls, getattr(modeling_shear, cls.__name__.removesuffix("Config") + "ForCausalLM"))
    for cls in vars(configuration_shear).values()
    if isinstance(cls, type) and cls.__name__.startswith("Shear") and cls.__name__.endswith("Config")
}


def per_layer_config_class(model_type: str):
    return PER_LAYER_CLASSES[model_type][0]


def per_layer_model_class_name(model_type: str) -> str:
    return PER_LAYER_CLASSES[model_type][1].__name__


def register_auto_classes() -> None:
    """Let AutoConfig / AutoModelForCausalLM load per-layer folders without remote code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for model_type, (config_cls, model_cls) in PER_LAYER_CLASSES.items():
        try:
            AutoConfig.register(model_type, config_cls)
            AutoModelForCausalLM.register(config_cls, model_cls)
        except ValueError:  # already registered (re-import)
            pass
