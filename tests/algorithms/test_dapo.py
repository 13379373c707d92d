"""DAPO: zero-variance group filter, dynamic sampling fill, overlong reward shaping."""

import numpy as np
import pytest

from rlx.algorithms import groups_with_signal, overlong_penalty
from rlx.data import PromptRecord
from rlx.rollout import Generation, GroupRollout
from rlx.services.dynamic_sampling import ScoredRollout, fill_with_varied_groups


def test_groups_with_signal_flags_rows_of_varied_groups():
    rewards = np.array([1, 1, 0, 1, 0, 0, 0.5, 0.5])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(groups_with_signal(rewards, groups), [False, False, True, True, False, False, False, False])


def test_overlong_penalty_by_hand():
    # L_max = 10, L_cache = 4: free up to 6 tokens, then -(len - 6) / 4, -1 at the budget
    np.testing.assert_allclose(overlong_penalty(np.array([5, 6, 8, 10]), 10, 4, 0.5), [0, 0, -0.25, -0.5])
    np.testing.assert_array_equal(overlong_penalty(np.array([10]), 10, 0, 1.0), [0.0])


def scored(rewards, tag, n=2):
    rows = len(rewards)
    records = [PromptRecord(f"{tag}{row // n}", "1+1=", "2") for row in range(rows)]
    generation = Generation(np.zeros((rows, 3), np.int32), np.zeros((rows, 3), np.float32),
                            np.ones((rows, 3), np.float32), np.full(rows, 3, np.int32))
    rollout = GroupRollout(records, np.zeros((rows, 4), np.int32), np.zeros(rows, np.int32), np.arange(rows, dtype=np.int32) // n,
                           generation, np.zeros((rows, 3), np.int32), {"rollout/x": 1.0})
    return ScoredRollout(rollout, [f"{tag}{i}" for i in range(rows)], np.asarray(rewards, np.float32))


def test_dynamic_sampling_drops_flat_groups_and_draws_more():
    rounds = {1: scored([1, 0, 1, 1], "b"), 2: scored([0, 1, 0, 0], "c")}
    batch, metrics = fill_with_varied_groups(scored([1, 1, 0, 0], "a"), rounds.__getitem__, group_size=2, groups_needed=2, max_rounds=5)
    assert batch.responses == ["b0", "b1", "c0", "c1"]  # the varied group of each extra round
    assert [r.id for r in batch.rollout.records] == ["b0", "b0", "c0", "c0"]
    np.testing.assert_array_equal(batch.scores, [1, 0, 0, 1])
    np.testing.assert_array_equal(batch.rollout.group_ids, [0, 0, 1, 1])
    assert batch.rollout.generation.tokens.shape == (4, 3)
    assert metrics == {"dapo/dropped_groups": 4.0, "dapo/sampling_rounds": 3.0, "dapo/filled_groups": 0.0}


def test_dynamic_sampling_fills_with_flat_groups_after_max_rounds():
    def draw(round_):
        return scored([1, 1, 0, 0], f"r{round_}")

    batch, metrics = fill_with_varied_groups(scored([1, 0, 1, 1], "a"), draw, group_size=2, groups_needed=2, max_rounds=2)
    assert batch.responses == ["a0", "a1", "a2", "a3"]  # the varied group first, then a flat one keeps the shape
    assert metrics["dapo/filled_groups"] == 1.0 and metrics["dapo/sampling_rounds"] == 2.0


def test_dynamic_sampling_stops_after_first_round_when_enough():
    batch, metrics = fill_with_varied_groups(scored([1, 0, 0, 1], "a"), pytest.fail, group_size=2, groups_needed=2, max_rounds=3)
    assert metrics["dapo/sampling_rounds"] == 1.0 and metrics["dapo/dropped_groups"] == 0.0
    assert len(batch.scores) == 4
