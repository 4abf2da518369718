"""Settings of a recovery run (all of them land in pruning_report.json["recovery"]["config"])."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ..errors import ShearHubError
from ..lora_trainer import LRSchedule

# Settings that do not change the trained weights: a checkpoint made with other values still resumes.
_NOT_FINGERPRINTED = ("save_every", "log_every", "eval_data", "eval_every", "eval_windows", "eval_seq_len", "merge")


@dataclass
class RecoveryConfig:
    """Defaults chosen on SmolLM2-135M at 20% sparsity to fit a 30-minute run on 2 CPU cores (benchmarks/README.md)."""

    steps: int = 60  # 150 overfit the calibration text: 27.01 at step 50, 27.63 at 150 (benchmarks/README.md)
    batch_size: int = 4  # windows per optimizer step, over all processes
    seq_len: int = 256
    lr: float = 1e-3
    lora_rank: int = 16
    lora_alpha: float | None = None  # None: 2 * rank
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"  # every linear projection (peft excludes the LM head)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decay down to lr * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    data: str | None = None  # None: the built-in calibration text
    teacher: str | None = None  # dense model for knowledge distillation
    kd_alpha: float = 0.5  # loss = kd_alpha * LM + (1 - kd_alpha) * KL(teacher || student)
    kd_temperature: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    save_every: int = 25  # checkpoint interval in steps (0: never)
    log_every: int = 10
    eval_data: str | None = None  # held-out text for perplexity before / during / after
    eval_every: int = 0  # 0: only before and after
    eval_windows: int = 48
    eval_seq_len: int = 512
    merge: bool = True

    def __post_init__(self) -> None:
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.lora_rank
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.seq_len >= 2, f"--seq-len must be >= 2, got {self.seq_len}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.lora_rank >= 1, f"--lora-rank must be >= 1, got {self.lora_rank}"),
            (0.0 <= self.kd_alpha <= 1.0, f"--kd-alpha must be in [0, 1], got {self.kd_alpha}"),
            (self.kd_temperature > 0, f"--kd-temperature must be > 0, got {self.kd_temperature}"),
            (0.0 <= self.lora_dropout < 1.0, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}"),
            (self.save_every >= 0 and self.eval_every >= 0, "--save-every and --eval-every must be >= 0"),
            (self.eval_windows >= 1 and self.eval_seq_len >= 2, "--eval-windows must be >= 1 and --eval-seq-len >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ShearHubError(message)

    def schedule(self) -> LRSchedule:
        """The learning rate per step: linear warm-up over warmup_steps, cosine decay to lr * min_lr_ratio."""
        return LRSchedule(steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self, model: str) -> str:
        """Identifies runs whose checkpoints are interchangeable (same model and training settings)."""
        keys = {k: v for k, v in self.to_dict().items() if k not in _NOT_FINGERPRINTED}
        keys["model"] = model
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]
