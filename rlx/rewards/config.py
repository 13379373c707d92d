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

    `timeout_s`: the deadline of one `math_verify` call (it runs in a worker process, killed and
    restarted past it). `format_pattern`: the regular expression the `format` reward looks for
    anywhere in the response (`re.search`; anchor it with `^...$` to require the whole response).
    A reward that raises, times out or is not finite scores `on_error_reward`, counted in `reward/errors`.
    """

    fn: str = "exact_match"
    on_error_reward: float = 0.0
    timeout_s: float = 5.0
    format_pattern: str = r"\\boxed\{.+\}"

    def __post_init__(self) -> None:
        parse_terms(self.fn)
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")
        try:
            re.compile(self.format_pattern)
        except re.error as err:
            raise ValueError(f"format_pattern {self.format_pattern!r} is not a regular expression: {err}") from None
