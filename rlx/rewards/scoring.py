"""Scores a batch of responses, isolating crashes of user reward functions.

A reward with `submit` (`rlx.rewards.composite.WeightedSum`: terms in the worker pool) gets every
response first and is read afterwards, so the pool scores the batch concurrently."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

import numpy as np

from rlx.data.records import PromptRecord
from rlx.rewards.isolation import CallTimeout
from rlx.rewards.verifiers import RewardFn

log = logging.getLogger(__name__)
FLOAT32_MAX = float(np.finfo(np.float32).max)
LOGGED_ERRORS = 3  # per scored batch; the rest are counted in one line


@dataclasses.dataclass(frozen=True)
class Scores:
    rewards: np.ndarray  # [B] float32
    errors: int  # responses whose reward function raised, timed out, crashed or returned a value that is not a finite float32
    timeouts: int = 0  # of those, calls past `reward.timeout_s`


def score_responses(fn: RewardFn, responses: Sequence[str], records: Sequence[PromptRecord], on_error: float) -> Scores:
    """Calls `fn(response, record)` per row; a crash or a non-finite value scores `on_error` and is counted."""
    rewards = np.empty(len(responses), np.float32)
    errors = timeouts = 0
    submit = getattr(fn, "submit", None)
    # Without `submit`, each call runs when its result is read (one at a time, as the function expects).
    outcomes = [submit(response, record) if submit is not None else _Deferred(fn, response, record)
                for response, record in zip(responses, records, strict=True)]
    for row, (response, record, outcome) in enumerate(zip(responses, records, outcomes)):
        try:
            value = float(outcome.result())
            if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
                raise ValueError(f"returned {value}, which is not a finite float32 reward")
        except Exception as err:  # a user plug-in may raise anything; the run must go on
            errors += 1
            timeouts += isinstance(err, CallTimeout)
            if errors <= LOGGED_ERRORS:
                log.warning("reward function failed on record %r (response %r): %r; scoring %s", record.id, response, err, on_error)
            value = on_error
        rewards[row] = value
    if errors > LOGGED_ERRORS:
        log.warning("reward function failed on %d more of these %d responses", errors - LOGGED_ERRORS, len(responses))
    return Scores(rewards, errors, timeouts)


class _Deferred:
    def __init__(self, fn: RewardFn, response: str, record: PromptRecord):
        self.fn, self.args = fn, (response, record)

    def result(self) -> float:
        return self.fn(*self.args)
