"""DAPO (Yu et al. 2025) pieces that act on rewards before the loss: dynamic-sampling group
filter and overlong reward shaping. Host-side numpy: they decide which rollouts to train on.
"""

from __future__ import annotations

import numpy as np


def groups_with_signal(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """[B] bool: True where the row's group has non-zero reward variance.

    A group whose samples all scored the same (all right or all wrong) has zero group-relative
    advantage and only dilutes the batch; DAPO's dynamic sampling drops it.
    """
    rewards = np.asarray(rewards, np.float64)
    lowest = np.full(group_ids.max() + 1, np.inf)
    highest = np.full(group_ids.max() + 1, -np.inf)
    np.minimum.at(lowest, group_ids, rewards)
    np.maximum.at(highest, group_ids, rewards)
    return (highest > lowest)[group_ids]


def overlong_penalty(lengths: np.ndarray, max_len: int, buffer: int, factor: float) -> np.ndarray:
    """Soft overlong punishment, added to the reward:

    R_len(y) = 0 if |y| <= L_max - L_cache;  ((L_max - L_cache) - |y|) / L_cache if |y| <= L_max;  -1 beyond,
    times `factor`, with L_max = max_len (the generation budget) and L_cache = buffer.
    """
    if buffer <= 0:
        return np.zeros(len(lengths), np.float32)
    free = max_len - buffer
    penalty = np.clip((free - np.asarray(lengths, np.float64)) / buffer, -1.0, 0.0)
    return (factor * penalty).astype(np.float32)
