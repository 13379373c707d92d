"""Optimizer and supervised warm-up settings."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up, then constant, and global-norm clipping."""

    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    warmup_steps: int = 0
    grad_clip: float = 1.0
    max_nonfinite_steps: int = 3  # consecutive skipped updates before the run stops

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0 and grad_clip > 0")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")


@dataclasses.dataclass(frozen=True)
class WarmupConfig:
    """Supervised steps on the train split before RL, so the policy starts with non-zero reward."""

    sft_steps: int = 0
    batch_size: int = 64
    learning_rate: float = 3e-3

    def __post_init__(self) -> None:
        if self.sft_steps < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("need sft_steps >= 0, batch_size >= 1 and learning_rate > 0")
