"""`reward.fn` as a weighted sum of named rewards: `math_verify + 0.1 * format`."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from rlx.data.records import PromptRecord
from rlx.rewards.isolation import Pending, WorkerPool

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(rf"\s*(?P<sign>[-+])?\s*(?:(?P<weight>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z_][\w.]*(?::[A-Za-z_]\w*)?)\s*")


@dataclasses.dataclass(frozen=True)
class Term:
    weight: float
    name: str  # a registered verifier, or a plug-in `package.module:function`


def parse_terms(expression: str) -> tuple[Term, ...]:
    """`"a + 0.5 * b - c"` -> (Term(1.0, "a"), Term(0.5, "b"), Term(-1.0, "c")); raises ValueError naming the bad part."""
    terms, position = [], 0
    while position < len(expression) or not terms:
        match = _TERM.match(expression, position)
        if match is None or (terms and match["sign"] is None):
            raise ValueError(
                f"reward.fn {expression!r}: cannot read {expression[position:].strip()!r}; write one reward (`math_verify`, "
                "`mypkg.rewards:score`) or a weighted sum (`math_verify + 0.1 * format`, weights as `number * name`)"
            )
        weight = float(match["weight"]) if match["weight"] is not None else 1.0
        terms.append(Term(-weight if match["sign"] == "-" else weight, match["name"]))
        position = match.end()
    return tuple(terms)


class PooledTerm:
    """A reward computed by the worker pool (`rlx.rewards.isolation`), which serves it under its name."""

    def __init__(self, pool: WorkerPool, name: str):
        self.pool, self.name = pool, name

    def submit(self, response: str, record: PromptRecord) -> Pending:
        return self.pool.submit(self.name, response, record)


def run_now(fn: Callable[[str, PromptRecord], Any], response: str, record: PromptRecord) -> Pending:
    """`fn(response, record)` called here, as a finished Pending (its value, or what it raised)."""
    done = Pending()
    try:
        done.set_result(fn(response, record))
    except Exception as err:  # handed to whoever reads the result, who counts it
        done.set_exception(err)
    return done


class _Sum:
    def __init__(self, parts: list[tuple[float, Pending]]):
        self.parts = parts

    def result(self) -> float:
        return sum(weight * float(part.result()) for weight, part in self.parts)


class WeightedSum:
    """sum_i weight_i * fn_i(response, record); a term that raises makes the whole reward raise (counted as an error).

    Terms in the worker pool (`PooledTerm`) are submitted there; the others run in the calling thread.
    `submit` returns at once with something whose `result()` is the reward, so a batch is scored across
    the pool concurrently. The sum owns the pool: `close` stops its workers.
    """

    def __init__(self, terms: list[tuple[float, Callable[[str, PromptRecord], float] | PooledTerm]], pool: WorkerPool | None = None):
        self.terms, self.pool = terms, pool

    def submit(self, response: str, record: PromptRecord) -> _Sum:
        return _Sum([(weight, fn.submit(response, record) if isinstance(fn, PooledTerm) else run_now(fn, response, record))
                     for weight, fn in self.terms])

    def __call__(self, response: str, record: PromptRecord) -> float:
        return self.submit(response, record).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


