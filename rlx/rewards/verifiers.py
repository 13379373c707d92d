"""Verifiers: reward 1.0 for a correct response, 0.0 otherwise. Evaluation calls the same ones."""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

from rlx.data.records import PromptRecord
from rlx.plugins import load_object

RewardFn = Callable[[str, PromptRecord], float]

_VERIFIERS: dict[str, RewardFn] = {}


def register_verifier(name: str) -> Callable[[RewardFn], RewardFn]:
    def add(fn: RewardFn) -> RewardFn:
        if name in _VERIFIERS:
            raise ValueError(f"verifier {name!r} is already registered")
        _VERIFIERS[name] = fn
        return fn
    return add


@register_verifier("exact_match")
def exact_match(response: str, record: PromptRecord) -> float:
    """1.0 iff the response equals the answer, ignoring surrounding whitespace."""
    return float(response.strip() == record.answer.strip())


@register_verifier("integer_match")
def integer_match(response: str, record: PromptRecord) -> float:
    """1.0 iff both parse as the same integer (so `007` matches `7`)."""
    try:
        return float(int(response.strip()) == int(record.answer.strip()))
    except ValueError:
        return 0.0


@register_verifier("boxed_answer")
def boxed_answer(response: str, record: PromptRecord) -> float:
    """1.0 iff the response's last `\\boxed{...}` holds the answer: numbers by value (`1,000` = `1000.0`,
    `0.75` = `3/4`), anything else as text without spaces or `$`. No `\\boxed` scores 0."""
    boxed = last_boxed(response)
    return float(boxed is not None and _normal_answer(boxed) == _normal_answer(record.answer))


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text` (nested braces kept), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for end in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth < 0:
            return text[begin:end]
    return None  # unclosed


def _normal_answer(text: str) -> Fraction | str:
    text = text.replace("$", "").replace(" ", "").rstrip(".")
    try:
        return Fraction(text.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return text


def resolve_reward_fn(name: str) -> RewardFn:
    """A registered verifier by name, or a plug-in by dotted path `package.module:function`."""
    if name in _VERIFIERS:
        return _VERIFIERS[name]
    if ":" not in name:
        raise ValueError(
            f"unknown reward function {name!r}; registered: {', '.join(sorted(_VERIFIERS))}, "
            "or give a plug-in as 'package.module:function'"
        )
    fn = load_object(name)
    if not callable(fn):
        raise ValueError(f"reward function {name!r} is not callable")
    return fn
