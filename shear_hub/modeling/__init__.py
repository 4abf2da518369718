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


def per_layer_model_class(config_dict: dict):
    """The causal LM class of a per-layer config.json (``layer_dims`` beside the family's or, in folders written
    before the family's own type was used, the shear model_type); None for stock configs."""
    if "layer_dims" not in config_dict:
        return None
    model_type = str(config_dict.get("model_type", ""))
    key = model_type if model_type.startswith("shear_") else f"shear_{model_type}"
    return PER_LAYER_CLASSES[key][1] if key in PER_LAYER_CLASSES else None


def causal_lm_class_for(path: str, **hub_kwargs):
    """shear_hub's per-layer class when ``path`` (folder or Hub id) holds a per-layer config.json, else
    ``AutoModelForCausalLM``; a config.json that cannot be read also gives the Auto class (whose load then says why)."""
    from transformers import AutoModelForCausalLM, PreTrainedConfig

    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(path, **hub_kwargs)
    except Exception:  # noqa: BLE001 - from_pretrained reports the real problem
        return AutoModelForCausalLM
    return per_layer_model_class(config_dict) or AutoModelForCausalLM


def from_pretrained(path: str, **kwargs):
    """Load any model shear-hub writes, per-layer folders through shear_hub's own classes (no remote code).

    Per-layer config.json files name the stock family (so stock transformers reads them without prompts), which
    means ``AutoModelForCausalLM`` alone would pick the stock class; this picks the per-layer one."""
    return causal_lm_class_for(path).from_pretrained(path, **kwargs)


def register_auto_classes() -> None:
    """Let AutoConfig / AutoModelForCausalLM load per-layer folders written with the shear model_type (earlier
    releases) without remote code; current folders say the family's model_type and go through ``load_model``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for model_type, (config_cls, model_cls) in PER_LAYER_CLASSES.items():
        try:
            AutoConfig.register(model_type, config_cls)
            AutoModelForCausalLM.register(config_cls, model_cls)
        except ValueError:  # already registered (re-import)
            pass
