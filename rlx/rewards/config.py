"""Which function scores a response."""

from __future__ import annotations

import dataclasses
import re

from rlx.rewards.composite import parse_terms


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """`fn`: one reward, or a weighted sum of rewards (`math_verify + 0.1 * format`). Each term is a
    registered verifier (`exact_match`, `integer_match`, `math_verify`, `format`) or a plug-in
    `package.module:function` taking (response, record).

    Plug-ins and `math_verify` run in a pool of `workers` processes (`rlx.rewards.isolation`), started
    once per run, scoring a step's responses concurrently; the other verifiers run in the generator's
    thread. `timeout_s`: the deadline of one call in the pool; past it the worker is killed and
    replaced. `format_pattern`: the regular expression the `format` reward looks for anywhere in the
    response (`re.search`; anchor it with `^...$` to require the whole response). A reward that raises,
    times out, crashes its worker or is not a finite float32 scores `on_error_reward`, counted in
    `reward/errors` (timeouts also in `reward/timeouts`); a run stops when more than `max_error_rate`
    of the responses of its last `error_window` steps scored so (1.0: never).
    """

    fn: str = "exact_match"
    on_error_reward: float = 0.0
    timeout_s: float = 5.0
    workers: int = 2
    format_pattern: str = r"\\boxed\{.+\}"
    max_error_rate: float = 0.5
    error_window: int = 10

    def __post_init__(self) -> None:
        parse_terms(self.fn)
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be in [0, 1] (a fraction of responses), got {self.max_error_rate}")
        if self.error_window < 1:
            raise ValueError(f"error_window must be >= 1 step, got {self.error_window}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1 reward worker processes, got {self.workers}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")
        try:
            re.compile(self.format_pattern)
        except re.error as err:
            raise ValueError(f"format_pattern {self.format_pattern!r} is not a regular expression: {err}") from None
