from .config import SurgeonConfig
from .method import SurgeonMethod

__all__ = ["SurgeonConfig", "SurgeonMethod"]
