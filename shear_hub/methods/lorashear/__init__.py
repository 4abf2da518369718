from .config import LoRAShearConfig
from .method import LoRAShearMethod

__all__ = ["LoRAShearConfig", "LoRAShearMethod"]
