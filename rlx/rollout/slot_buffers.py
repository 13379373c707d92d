"""The rollout driver's host-side per-slot response buffers (`rlx.rollout.driver`): tokens, behaviour log-probs, policy
versions, policy mask and routes of each decode slot's sample, filled column by column from the engine's `ResultTokens`,
and the cache columns each slot holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rlx.rollout.stops import StopStrings

if TYPE_CHECKING:
    from rlx.rollout.driver import Completion


class SlotBuffers:
    """Host-side per-slot response buffers, filled column by column from `ResultTokens`."""

    def __init__(self, slots: int, width: int, route_shape: tuple[int, int] | None = None):
        self.tokens = np.zeros((slots, width), np.int32)
        self.routes = np.zeros((slots, width, *route_shape), np.int32) if route_shape is not None else None
        self.log_probs = np.zeros((slots, width), np.float32)
        self.versions = np.full((slots, width), -1, np.int32)
        self.policy = np.zeros((slots, width), np.float32)  # 1 on sampled tokens, 0 on inserted observations
        self.count = np.zeros((slots,), np.int32)
        self.turn_start = np.zeros((slots,), np.int32)  # first token of the current policy turn (stop strings look from there)
        self.stopped = np.zeros((slots,), bool)  # the last turn ended at a stop token or string (not at a limit)
        self.limit = np.zeros((slots,), np.int32)
        self.active = np.zeros((slots,), bool)
        self.since = np.zeros((slots,), np.int64)  # first generate step whose tokens belong to the slot's sample
        # Version of the weights that computed each slot's pending next-token logits: a generate
        # call samples its first token from them, so after a weight swap without recompute that
        # token still comes from the old weights.
        self.logits_version = np.full((slots,), -1, np.int32)
        # Cache columns each slot holds once the generate calls dispatched so far are done (prompt
        # bucket + tokens): the longest live one picks the engine's attention length bucket.
        self.columns = np.zeros((slots,), np.int64)
        self.origin = np.zeros((slots,), np.int64)  # cache column of the slot's first response token (its prompt bucket)
        self.appended = 0  # tokens appended since creation (a token budget counts them)

    def reset(self, slot: int, max_tokens: int, since: int) -> None:
        self.count[slot], self.limit[slot], self.active[slot], self.since[slot] = 0, min(max_tokens, self.tokens.shape[1]), True, since
        self.turn_start[slot], self.stopped[slot] = 0, False

    def restore(self, slot: int, sample: Completion, max_tokens: int, since: int, origin: int, logits_version: int) -> None:
        """Puts a sample saved part-way (`RolloutDriver.sample_so_far`) back in `slot`, whose cache holds its prompt from
        column `origin` on and its tokens after it; its next-token logits came from weights `logits_version`."""
        self.reset(slot, max_tokens, since)
        length = len(sample.tokens)
        self.tokens[slot, :length], self.log_probs[slot, :length], self.versions[slot, :length] = sample.tokens, sample.log_probs, sample.versions
        self.policy[slot, :length] = 1.0 if sample.mask is None else sample.mask
        if self.routes is not None:
            self.routes[slot, :length] = sample.routes[len(sample.prompt):]
        self.count[slot], self.origin[slot], self.columns[slot] = length, origin, origin + length
        self.logits_version[slot] = logits_version

    def observe(self, slot: int, tokens: np.ndarray, since: int, logits_version: int) -> int:
        """Appends observation tokens (no log-prob, version -1, mask 0) to a waiting slot, which decodes
        again from generate step `since`; returns the cache column they start at."""
        first, end = self.count[slot], self.count[slot] + len(tokens)
        self.tokens[slot, first:end], self.log_probs[slot, first:end], self.versions[slot, first:end] = tokens, 0.0, -1
        self.policy[slot, first:end] = 0.0
        self.count[slot] = self.turn_start[slot] = end
        self.active[slot], self.stopped[slot], self.since[slot], self.logits_version[slot] = True, False, since, logits_version
        self.columns[slot] = self.origin[slot] + end
        return int(self.origin[slot] + first)

    def advance(self, live: list[int], steps: int) -> int:
        """Counts a generate call of `steps` tokens on the `live` slots; returns the most columns one then holds."""
        self.columns[live] += steps
        return int(self.columns[live].max())

    def settle(self, rows: np.ndarray, ahead: int) -> None:
        """Bounds the columns of `rows` [slots] bool, whose tokens so far are all appended, by those tokens plus the
        `ahead` columns the calls dispatched since may add (`advance` counted the most each call can add)."""
        self.columns[rows] = np.minimum(self.columns[rows], self.origin[rows] + self.count[rows] + ahead)

    def append(self, result, step: int, version: int, stop_tokens: tuple[int, ...], stop_strings: StopStrings | None = None) -> list[int]:
        """Adds generate step `step`'s tokens; returns the slots that finished."""
        tokens, valid, log_probs = result.tokens, result.valid, np.asarray(result.log_probs)
        mine = self.active & (self.since <= step)
        finished = np.zeros_like(self.active)
        rows = np.arange(len(self.count))
        for j in range(result.columns_run):
            live = mine & ~finished & valid[:, j]
            column = np.minimum(self.count, self.tokens.shape[1] - 1)
            self.tokens[live, column[live]] = tokens[live, j]
            self.log_probs[live, column[live]] = log_probs[live, j]
            self.versions[live, column[live]] = self.logits_version[live] if j == 0 else version
            if self.routes is not None:
                self.routes[live, column[live]] = result.routes[live, j]
            self.policy[live, column[live]] = 1.0
            self.count += live
            self.appended += int(live.sum())
            stopped = live & np.isin(tokens[:, j], stop_tokens)
            if stop_strings is not None:
                for slot in np.flatnonzero(live & ~stopped):
                    stopped[slot] = stop_strings.completed(self.tokens[slot, self.turn_start[slot]:self.count[slot]])
            self.stopped |= stopped
            # An invalid token on an active slot means the engine's row is full (an invalid draft column: a rejected draft).
            full = ~valid[:, j] if not (result.drafts and j % 2 == 1) else np.zeros_like(valid[:, j])
            finished |= mine & (stopped | (self.count >= self.limit) | full)
        self.logits_version[mine] = version
        self.active &= ~finished
        return list(rows[finished])

    def take(self, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(tokens, behaviour log-probs, versions, policy mask, routes or None when not recorded) of the slot's sample."""
        length = self.count[slot]
        routes = self.routes[slot, :length].copy() if self.routes is not None else None
        return (*(array[slot, :length].copy() for array in (self.tokens, self.log_probs, self.versions, self.policy)), routes)
