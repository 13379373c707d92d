"""Synthetic multi-digit arithmetic with a held-out validation split: `"37+485="` -> `"522"`.

Addition is the single-turn demo's task. Multiplication of 4-5 digit numbers (`"12345*6789="` ->
`"83810205"`, the `calculator` data source) is the agentic demo's: a tiny model cannot multiply
such numbers itself, so it has to learn to call a calculator tool (`rlx.envs.calculator`).
"""

from __future__ import annotations

from typing import Callable

import operator
import string

import numpy as np

from rlx.data.config import ArithmeticConfig
from rlx.data.records import PromptRecord

ALPHABET = "0123456789+="
CALCULATOR_ALPHABET = string.printable  # tool calls, tool results and error messages are text too
OPERATORS = {"+": operator.add, "*": operator.mul}


def add_without_carry(a: int, b: int) -> int:
    """Digit-wise sum mod 10, the classic carry-forgetting mistake: 157 + 291 -> 348."""
    result, place = 0, 1
    while a or b:
        result += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return result


def ramble(answer: str, rng: np.random.Generator, median_chars: int) -> str:
    """The correct answer, then a lognormal-length run (median `median_chars`, sigma 1: p90 ~ 3.6x the median) of
    its own digits repeated (`522` -> `52252252`), the degenerate repetition loop that gives LLM responses their long tail."""
    extra = int(np.ceil(rng.lognormal(np.log(median_chars), 1.0)))
    return answer + (answer * (extra // len(answer) + 1))[:extra]


WARMUP_FLAWS: dict[str, Callable[[int, int, np.random.Generator, ArithmeticConfig], str]] = {
    "no_carry": lambda a, b, rng, config: str(add_without_carry(a, b)),
    "reversed": lambda a, b, rng, config: str(a + b)[::-1],
    "ramble": lambda a, b, rng, config: ramble(str(a + b), rng, config.ramble_median_chars),
}


def warmup_demonstrations(records: list[PromptRecord], config: ArithmeticConfig, seed: int) -> list[PromptRecord]:
    """Copies of `records` whose answers carry `config.warmup_flaw` with probability `warmup_flaw_rate`."""
    if config.warmup_flaw == "none":
        return list(records)
    flawed = WARMUP_FLAWS[config.warmup_flaw]
    rng = np.random.default_rng(seed)
    demonstrations = []
    for record in records:
        a, b = (int(x) for x in record.prompt.rstrip("=").split("+"))
        answer = flawed(a, b, rng, config) if rng.random() < config.warmup_flaw_rate else str(a + b)
        demonstrations.append(PromptRecord(id=record.id, prompt=record.prompt, answer=answer))
    return demonstrations


def _operand(rng: np.random.Generator, config: ArithmeticConfig) -> int:
    digits = int(rng.integers(config.min_digits, config.max_digits + 1))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, 10**digits))


def arithmetic_splits(config: ArithmeticConfig, train_size: int, val_size: int, seed: int,
                      symbol: str = "+") -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Deterministic train and validation records of `a<symbol>b=` (`+` or `*`); no operand pair appears in both."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int]] = set()
    splits: list[list[PromptRecord]] = []
    for name, size in (("val", val_size), ("train", train_size)):
        records: list[PromptRecord] = []
        attempts = 0
        while len(records) < size:
            attempts += 1
            if attempts > 50 * size + 1000:
                raise ValueError(
                    f"cannot draw {size} distinct {name} problems with {config.min_digits}..{config.max_digits} digits; "
                    "lower data.train_size/val_size or allow more digits"
                )
            a, b = _operand(rng, config), _operand(rng, config)
            if (a, b) in seen:
                continue
            seen.add((a, b))
            records.append(PromptRecord(id=f"{name}-{len(records)}", prompt=f"{a}{symbol}{b}=", answer=str(OPERATORS[symbol](a, b))))
        splits.append(records)
    val, train = splits
    return train, val
