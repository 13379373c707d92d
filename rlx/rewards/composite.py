"""`reward.fn` as a weighted sum of named rewards: `math_verify + 0.1 * format`."""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from rlx.data.records import PromptRecord

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


class WeightedSum:
    """sum_i weight_i * fn_i(response, record); a term that raises makes the whole reward raise (counted as an error)."""

    def __init__(self, terms: list[tuple[float, Callable[[str, PromptRecord], float]]]):
        self.terms = terms

    def __call__(self, response: str, record: PromptRecord) -> float:
        return sum(weight * float(fn(response, record)) for weight, fn in self.terms)
