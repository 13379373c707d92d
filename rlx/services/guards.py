"""Stops a run that goes bad, loudly, before it can report success or checkpoint the damage.

The learner already skips updates with a non-finite loss or gradient and stops after
`optimizer.max_nonfinite_steps` of them in a row, and stops at once when an update leaves a
parameter non-finite (`rlx.learner.train_step`). Here the loop checks each step's metrics: a
non-finite metric counts like a skipped update, and a reward function failing on more than
`reward.max_error_rate` of the responses over the last `reward.error_window` steps stops the run.
"""

from __future__ import annotations

import collections
import math

from rlx.config import Config
from rlx.errors import RunStopped


class RunGuard:
    def __init__(self, config: Config):
        self._max_nonfinite = config.optimizer.max_nonfinite_steps
        self._max_error_rate = config.reward.max_error_rate
        self._window: collections.deque[tuple[float, float]] = collections.deque(maxlen=config.reward.error_window)
        self._nonfinite_in_a_row = 0

    def check(self, step: int, metrics: dict[str, float]) -> None:
        """Raises RunStopped when step `step`'s metrics say the run went bad."""
        self._check_finite(step, metrics)
        if "reward/errors" in metrics and "reward/scored" in metrics:
            self._check_reward_errors(step, metrics["reward/errors"], metrics["reward/scored"])

    def _check_finite(self, step: int, metrics: dict[str, float]) -> None:
        bad = sorted(name for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value))
        self._nonfinite_in_a_row = self._nonfinite_in_a_row + 1 if bad else 0
        if self._nonfinite_in_a_row >= self._max_nonfinite:
            raise RunStopped(
                f"step {step}: metrics {', '.join(bad[:5])} are not finite, {self._nonfinite_in_a_row} step(s) in a row "
                f"(optimizer.max_nonfinite_steps={self._max_nonfinite}); lower optimizer.learning_rate or check the rewards"
            )

    def _check_reward_errors(self, step: int, errors: float, scored: float) -> None:
        self._window.append((errors, scored))
        failed, total = (sum(column) for column in zip(*self._window))
        if total and failed / total > self._max_error_rate:
            raise RunStopped(
                f"step {step}: the reward function failed on {failed:.0f} of the last {total:.0f} responses "
                f"({failed / total:.0%} > reward.max_error_rate={self._max_error_rate:g} over {len(self._window)} step(s)); "
                "the warnings above show its errors; fix reward.fn (or raise reward.max_error_rate)"
            )
