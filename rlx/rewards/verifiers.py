"""Verifiers: reward 1.0 for a correct response, 0.0 otherwise. Evaluation calls the same ones."""

from __future__ import annotations

import functools
import re
from typing import Callable

from rlx.data.records import PromptRecord
from rlx.plugins import PluginError, load_object
from rlx.rewards.composite import PooledTerm, WeightedSum, parse_terms
from rlx.rewards.config import RewardConfig
from rlx.rewards.isolation import WorkerPool

RewardFn = Callable[[str, PromptRecord], float]
RewardFactory = Callable[[RewardConfig], RewardFn]  # for verifiers that read settings of the reward section

_VERIFIERS: dict[str, RewardFactory] = {}
# Verifiers that can hang or crash (SymPy): they run in the reward worker pool, as plug-ins do.
# Their factories are called in the workers, so they must be module-level functions.
_ISOLATED: dict[str, RewardFactory] = {}


def register_verifier_factory(name: str, *, isolated: bool = False) -> Callable[[RewardFactory], RewardFactory]:
    """`isolated`: calls run in worker processes under `reward.timeout_s` (for verifiers that can hang)."""
    def add(factory: RewardFactory) -> RewardFactory:
        if name in _VERIFIERS:
            raise ValueError(f"verifier {name!r} is already registered")
        _VERIFIERS[name] = factory
        if isolated:
            _ISOLATED[name] = factory
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


@register_verifier_factory("math_verify", isolated=True)
def math_verify(config: RewardConfig) -> RewardFn:
    """1.0 iff the final answer equals the reference mathematically (`rlx.rewards.math_answers`)."""
    from rlx.rewards.math_answers import verify_record

    return verify_record


@register_verifier_factory("format")
def answer_format(config: RewardConfig) -> RewardFn:
    """1.0 iff `reward.format_pattern` occurs in the response (default: a `\\boxed{...}` answer)."""
    pattern = re.compile(config.format_pattern)

    def has_format(response: str, record: PromptRecord) -> float:
        return float(pattern.search(response) is not None)
    return has_format


def resolve_reward_fn(expression: str, config: RewardConfig = RewardConfig()) -> RewardFn:
    """The reward `expression` names (`reward.fn`): one registered verifier or plug-in, or a weighted sum of them.

    Plug-ins and isolated verifiers (`math_verify`) run in a pool of `reward.workers` processes
    (`rlx.rewards.isolation`), started here: the returned `WeightedSum` owns it, `close` it when done.
    Other registered verifiers run in the calling thread; one of them alone is returned as it is.
    """
    terms = parse_terms(expression)
    pooled = sorted({term.name for term in terms if _runs_in_pool(term.name)})
    if not pooled and len(terms) == 1 and terms[0].weight == 1.0:
        return _VERIFIERS[terms[0].name](config)
    pool = _start_pool(pooled, config) if pooled else None
    return WeightedSum([(term.weight, PooledTerm(pool, term.name) if term.name in pooled else _VERIFIERS[term.name](config))
                        for term in terms], pool)


def _start_pool(names: list[str], config: RewardConfig) -> WorkerPool:
    """The worker pool serving `names`. Each worker builds, by name, an isolated verifier from its factory (pickled by
    reference, so one a plug-in module registered is found there too) or loads a plug-in by its dotted path."""
    served: dict[str, RewardFactory | str] = {}
    for name in names:
        if name not in _ISOLATED:
            _load_plugin(name)  # a bad path fails here, not in every worker
        served[name] = _ISOLATED.get(name, name)
    preload = [name.split(":")[0] for name in names if ":" in name] + [factory.__module__ for factory in served.values() if callable(factory)]
    if "math_verify" in names:
        preload.append("rlx.rewards.math_answers")  # math-verify and SymPy, imported once by the fork server
    return WorkerPool(functools.partial(pooled_functions, served, config), config.workers, config.timeout_s, preload=preload)


def pooled_functions(served: dict[str, RewardFactory | str], config: RewardConfig) -> dict[str, RewardFn]:
    """Runs in each reward worker: the functions it serves, by term name."""
    return {name: _load_plugin(how) if isinstance(how, str) else how(config) for name, how in served.items()}


def check_reward_plugins(expression: str) -> None:
    """Raises PluginError when a term of `expression` is neither registered nor an importable callable; builds nothing."""
    for term in parse_terms(expression):
        if term.name not in _VERIFIERS:
            _load_plugin(term.name)


def _runs_in_pool(name: str) -> bool:
    return name in _ISOLATED or name not in _VERIFIERS


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
