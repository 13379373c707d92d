"""Verifiers: reward 1.0 for a correct response, 0.0 otherwise. Evaluation calls the same ones."""

from __future__ import annotations

import re
from typing import Callable

from rlx.data.records import PromptRecord
from rlx.plugins import PluginError, load_object
from rlx.rewards.composite import WeightedSum, parse_terms
from rlx.rewards.config import RewardConfig
from rlx.rewards.deadline import WithDeadline

RewardFn = Callable[[str, PromptRecord], float]
RewardFactory = Callable[[RewardConfig], RewardFn]  # for verifiers that read settings of the reward section

_VERIFIERS: dict[str, RewardFactory] = {}


def register_verifier_factory(name: str) -> Callable[[RewardFactory], RewardFactory]:
    def add(factory: RewardFactory) -> RewardFactory:
        if name in _VERIFIERS:
            raise ValueError(f"verifier {name!r} is already registered")
        _VERIFIERS[name] = factory
        return factory
    return add


def register_verifier(name: str) -> Callable[[RewardFn], RewardFn]:
    def add(fn: RewardFn) -> RewardFn:
        register_verifier_factory(name)(lambda config: fn)
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


@register_verifier_factory("math_verify")
def math_verify(config: RewardConfig) -> RewardFn:
    """1.0 iff the final answer equals the reference mathematically (`rlx.rewards.math_answers`)."""
    from rlx.rewards.math_answers import MathVerify

    return MathVerify(config.timeout_s)


@register_verifier_factory("format")
def answer_format(config: RewardConfig) -> RewardFn:
    """1.0 iff `reward.format_pattern` occurs in the response (default: a `\\boxed{...}` answer)."""
    pattern = re.compile(config.format_pattern)

    def has_format(response: str, record: PromptRecord) -> float:
        return float(pattern.search(response) is not None)
    return has_format


def resolve_reward_fn(expression: str, config: RewardConfig = RewardConfig()) -> RewardFn:
    """The reward `expression` names (`reward.fn`): one registered verifier or plug-in, or a weighted sum of them."""
    terms = parse_terms(expression)
    if len(terms) == 1 and terms[0].weight == 1.0:
        return _resolve_one(terms[0].name, config)
    return WeightedSum([(term.weight, _resolve_one(term.name, config)) for term in terms])


def check_reward_plugins(expression: str) -> None:
    """Raises PluginError when a term of `expression` is neither registered nor an importable callable; builds nothing."""
    for term in parse_terms(expression):
        if term.name not in _VERIFIERS:
            _load_plugin(term.name)


def _resolve_one(name: str, config: RewardConfig) -> RewardFn:
    """A registered verifier by name, or a plug-in by dotted path `package.module:function` (with `timeout_s` per call)."""
    if name in _VERIFIERS:
        return _VERIFIERS[name](config)
    return WithDeadline(_load_plugin(name), config.timeout_s, name)


def _load_plugin(name: str) -> RewardFn:
    if ":" not in name:
        raise PluginError(
            f"reward.fn: unknown reward function {name!r}; registered: {', '.join(sorted(_VERIFIERS))}, "
            "or give a plug-in as 'package.module:function'"
        )
    fn = load_object(name)
    if not callable(fn):
        raise PluginError(f"reward.fn: {name!r} is not callable")
    return fn
