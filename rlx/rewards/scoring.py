"""Scores a batch of responses, isolating crashes of user reward functions.

A reward with `submit` (`rlx.rewards.composite.WeightedSum`: terms in the worker pool) gets every
response first and is read afterwards, so the pool scores the batch concurrently; with `EarlyScores`,
responses were submitted as their samples finished, while the rest of the batch generated."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict, deque
from typing import Any, Sequence

import numpy as np

from rlx.data.records import PromptRecord
from rlx.rewards.composite import run_now
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
    early: int = 0  # responses whose reward started while their batch still generated (`EarlyScores`)


class EarlyScores:
    """Rewards started as samples finish: `start(response, record)` submits to the reward's worker pool at once;
    `score_responses(..., early=this)` then reads those results instead of submitting again, and ages what it
    did not read: a start not read by the next two batches scored (a partial rollout restarted as stale) is dropped."""

    def __init__(self, fn: Any):  # a reward with `submit`
        self.fn = fn
        self._current: dict[tuple[int, str], deque] = defaultdict(deque)
        self._older: dict[tuple[int, str], deque] = {}

    def start(self, response: str, record: PromptRecord) -> None:
        self._current[id(record), response].append(self.fn.submit(response, record))

    def take(self, response: str, record: PromptRecord) -> Any | None:
        for started in (self._current, self._older):
            waiting = started.get((id(record), response))
            if waiting:
                return waiting.popleft()
        return None

    def age(self) -> None:
        self._older, self._current = self._current, defaultdict(deque)


def score_responses(fn: RewardFn, responses: Sequence[str], records: Sequence[PromptRecord], on_error: float,
                    early: EarlyScores | None = None) -> Scores:
    """Calls `fn(response, record)` per row (or reads the call `early` started); a crash or a non-finite value
    scores `on_error` and is counted."""
    rewards = np.empty(len(responses), np.float32)
    errors = timeouts = 0
    submit = getattr(fn, "submit", None)
    started = [early.take(response, record) if early is not None else None for response, record in zip(responses, records, strict=True)]
    # Without `submit`, each call runs here, one at a time (as the function expects).
    outcomes = [begun if begun is not None else submit(response, record) if submit is not None else run_now(fn, response, record)
                for response, record, begun in zip(responses, records, started)]
    if early is not None:
        early.age()
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
    return Scores(rewards, errors, timeouts, sum(begun is not None for begun in started))

