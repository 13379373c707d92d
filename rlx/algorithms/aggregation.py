"""Loss aggregation modes: how a per-token loss [B, T] becomes one number.

The modes differ in how much each token weighs (Liu et al. 2025, "Understanding R1-Zero-like
training"): token-mean weighs every token alike, seq-mean-* weigh every sequence alike.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlx.algorithms.registry import Registry

AggregationFn = Callable[[jax.Array, jax.Array], jax.Array]
LOSS_AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation mode")


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _sequence_mean(per_sequence: jax.Array, mask: jax.Array) -> jax.Array:
    # Rows without response tokens (none after filtering) do not count as sequences.
    has_tokens = (jnp.sum(mask, axis=1) > 0).astype(per_sequence.dtype)
    return jnp.sum(per_sequence * has_tokens) / jnp.maximum(jnp.sum(has_tokens), 1.0)


@LOSS_AGGREGATIONS.register("token-mean")
def token_mean(loss: jax.Array, mask: jax.Array) -> jax.Array:
    """L = sum_{i,t} l_it / sum_{i,t} m_it: long responses weigh more (DAPO, Yu et al. 2025)."""
    return masked_mean(loss, mask)


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(loss: jax.Array, mask: jax.Array) -> jax.Array:
    """L = mean_i (sum_t l_it / sum_t m_it): the original GRPO sample-level loss (Shao et al. 2024)."""
    per_sequence = jnp.sum(loss * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return _sequence_mean(per_sequence, mask)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(loss: jax.Array, mask: jax.Array) -> jax.Array:
    """L = mean_i sum_t l_it: each sequence's summed loss, averaged over sequences."""
    return _sequence_mean(jnp.sum(loss * mask, axis=1), mask)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss: jax.Array, mask: jax.Array) -> jax.Array:
    """L = sum_{i,t} l_it / (B * T), T the generation budget: Dr. GRPO's length-unbiased constant (Liu et al. 2025)."""
    return jnp.sum(loss * mask) / (mask.shape[0] * mask.shape[1])


def aggregate(loss: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
    return LOSS_AGGREGATIONS.get(mode)(loss, mask)
