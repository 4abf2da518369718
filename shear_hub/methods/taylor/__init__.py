from .method import TaylorConfig, TaylorMethod

__all__ = ["TaylorConfig", "TaylorMethod"]
