"""Recovery after pruning: LoRA fine-tuning, optionally distilled from the dense model, with resumable checkpoints."""

from .config import RecoveryConfig
from .trainer import RecoveryResult, recover

__all__ = ["RecoveryConfig", "RecoveryResult", "recover"]
