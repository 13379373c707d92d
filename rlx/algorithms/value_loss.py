"""Critic loss for GAE: clipped value regression, and the explained-variance diagnostic."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.algorithms.aggregation import masked_mean


def clipped_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array, clip: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO value loss (Schulman et al. 2017; as in OpenAI baselines / veRL), token-mean over `mask`:

    V_clip = V_old + clip(V - V_old, -c, c);  L = 1/2 * mean_t max((V - R)^2, (V_clip - R)^2).
    The clip keeps one update from moving the value of a state by more than c.
    """
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(jnp.maximum(unclipped_error, clipped_error), mask)
    return loss, {"critic/vf_loss": loss, "critic/vf_clipfrac": masked_mean((clipped_error > unclipped_error).astype(jnp.float32), mask)}


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 is a perfect critic, 0 no better than a constant."""
    def variance(x):
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)

    return 1.0 - variance(returns - values) / jnp.maximum(variance(returns), 1e-8)
