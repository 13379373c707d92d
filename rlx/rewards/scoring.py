"""Scores a batch of responses, isolating crashes of user reward functions."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

import numpy as np

from rlx.data.records import PromptRecord
from rlx.rewards.verifiers import RewardFn

log = logging.getLogger(__name__)
FLOAT32_MAX = float(np.finfo(np.float32).max)
LOGGED_ERRORS = 3  # per scored batch; the rest are counted in one line


@dataclasses.dataclass(frozen=True)
class Scores:
    rewards: np.ndarray  # [B] float32
    errors: int  # responses whose reward function raised, timed out or returned a value that is not a finite float32


def score_responses(fn: RewardFn, responses: Sequence[str], records: Sequence[PromptRecord], on_error: float) -> Scores:
    """Calls `fn(response, record)` per row; a crash or a non-finite value scores `on_error` and is counted."""
    rewards = np.empty(len(responses), np.float32)
    errors = 0
    for row, (response, record) in enumerate(zip(responses, records, strict=True)):
        try:
            value = float(fn(response, record))
            if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
                raise ValueError(f"returned {value}, which is not a finite float32 reward")
        except Exception as err:  # a user plug-in may raise anything; the run must go on
            errors += 1
            if errors <= LOGGED_ERRORS:
                log.warning("reward function failed on record %r (response %r): %r; scoring %s", record.id, response, err, on_error)
            value = on_error
        rewards[row] = value
    if errors > LOGGED_ERRORS:
        log.warning("reward function failed on %d more of these %d responses", errors - LOGGED_ERRORS, len(responses))
    return Scores(rewards, errors)
