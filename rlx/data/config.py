"""Where prompts come from and how they are batched."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """Synthetic `a+b=` prompts; operands have `min_digits..max_digits` digits.

    `warmup_carry_error` is the fraction of warm-up demonstrations written by a "student"
    who forgets to carry (157+291 -> 348): the warmed-up policy knows the format but makes a
    systematic error that only the verifier-driven RL phase can remove.
    """

    min_digits: int = 1
    max_digits: int = 3
    warmup_carry_error: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits <= 9:
            raise ValueError(f"need 1 <= min_digits <= max_digits <= 9, got {self.min_digits}..{self.max_digits}")
        if not 0.0 <= self.warmup_carry_error <= 1.0:
            raise ValueError(f"warmup_carry_error must be in [0, 1], got {self.warmup_carry_error}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`source: arithmetic` generates the built-in task; `source: jsonl` reads `train_path`/`val_path`."""

    source: Literal["arithmetic", "jsonl"] = "arithmetic"
    train_path: str | None = None
    val_path: str | None = None
    train_size: int = 20_000
    val_size: int = 256
    prompts_per_step: int = 32
    max_prompt_len: int = 16
    seed: int = 0
    on_bad_row: Literal["skip", "error"] = "skip"
    arithmetic: ArithmeticConfig = ArithmeticConfig()

    def __post_init__(self) -> None:
        for name in ("train_size", "val_size", "prompts_per_step", "max_prompt_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.source == "jsonl" and not (self.train_path and self.val_path):
            raise ValueError("source: jsonl needs data.train_path and data.val_path")
