"""Advantage estimators: per-token advantages [B, T] from sequence rewards."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlx.algorithms.config import AlgorithmConfig
from rlx.algorithms.registry import Registry

AdvantageFn = Callable[[jax.Array, jax.Array, jax.Array, AlgorithmConfig], jax.Array]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")

EPS = 1e-6


def group_mean_std(values: jax.Array, group_ids: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array]:
    """Per-row mean and (population) standard deviation of the row's group."""
    counts = jax.ops.segment_sum(jnp.ones_like(values), group_ids, num_groups)
    means = jax.ops.segment_sum(values, group_ids, num_groups) / jnp.maximum(counts, 1)
    squares = jax.ops.segment_sum((values - means[group_ids]) ** 2, group_ids, num_groups)
    stds = jnp.sqrt(squares / jnp.maximum(counts, 1))
    return means[group_ids], stds[group_ids]


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards: jax.Array, group_ids: jax.Array, mask: jax.Array, config: AlgorithmConfig) -> jax.Array:
    """GRPO (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    With `norm_adv_by_std: false` the division is skipped (Dr. GRPO, Liu et al. 2025).
    Every token of a response gets its sequence's advantage.
    """
    mean, std = group_mean_std(rewards, group_ids, rewards.shape[0])
    advantages = rewards - mean
    if config.norm_adv_by_std:
        advantages = advantages / (std + EPS)
    return advantages[:, None] * mask
