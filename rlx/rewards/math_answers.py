"""`reward.fn: math_verify`: 1.0 iff the response's final answer equals the reference mathematically.

Through Hugging Face's math-verify (as veRL, AReaL and MaxText use it): the response's last
`\\boxed{...}`, `$...$` expression or final number is extracted, both sides are parsed into SymPy,
and compared as numbers, fractions, roots, sets, intervals, equations or expressions
(`\\frac{1}{2}` = `0.5` = `1/2`; `\\{1,2\\}` = `\\{2,1\\}`; `(x+1)^2` = `x^2+2x+1`). The reference
answer is read as the content of a `\\boxed{}` (`"18"`, `"\\frac{\\sqrt{3}}{2}"`), as veRL does.

Each call runs in the reward worker pool with a deadline of `reward.timeout_s` (`rlx.rewards.isolation`):
SymPy can hang on inputs such as `9^{9^{9^{9}}}`, and math-verify's own signal-based timeouts work
only in a main thread, while rewards are scored from the generator role's thread. A call past its
deadline kills its worker, scores `reward.on_error_reward` and is counted in `reward/errors` and `reward/timeouts`.
"""

from __future__ import annotations

import logging

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rlx.data.records import PromptRecord


def verify_answer(response: str, reference: str) -> float:
    """Runs in a worker process; without math-verify's signal timeouts (the pool holds the deadline)."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeouts are off: the caller has one
    gold = parse(f"\\boxed{{{reference}}}", [LatexExtractionConfig()], fallback_mode="no_fallback", parsing_timeout=None)
    if not gold:
        raise ValueError(f"math-verify cannot parse the reference answer {reference!r}")
    predicted = parse(response, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)
    return float(verify(gold, predicted, timeout_seconds=None))


def verify_record(response: str, record: PromptRecord) -> float:
    """The `math_verify` reward (served by the reward worker pool)."""
    return verify_answer(response, record.answer)
