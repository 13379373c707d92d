"""Which function scores a response."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """`fn` is a registered verifier name or a plug-in `package.module:function` taking (response, record)."""

    fn: str = "exact_match"
    on_error_reward: float = 0.0
