"""The proximal policy's log-probs without a recompute pass (AReaL's version interpolation).

Decoupled PPO needs log pi_prox: the learner's weights before this update. Recomputing them
costs one forward pass over the batch. AReaL (Fu et al. 2025) instead interpolates, per token,
between the behaviour log-probs (weights of version v_b) and the current ones (v_theta) in
policy-version space, as if log-probs moved linearly with versions:

    log pi_prox ~= log pi_b + alpha * (sg(log pi_theta) - log pi_b),
    alpha = (v_prox - v_b) / (v_theta - v_b) = staleness / (staleness + progress),

where `staleness = v_prox - v_b` (versions the learner is ahead of the sampler) and `progress`
is how far this update has moved the weights, in versions (optimizer steps taken / steps per
update). On the first minibatch (progress 0) the estimate is exactly sg(log pi_theta) = log
pi_prox; a token sampled by the proximal weights themselves (staleness 0) gets log pi_b, which
equals log pi_prox up to sampler numerics. In between it is an approximation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def interpolated_proximal_log_probs(behaviour: jax.Array, current: jax.Array, staleness: jax.Array, progress: jax.Array) -> jax.Array:
    """[B, T] estimate of log pi_prox; `staleness` [B, T] >= 0, `progress` a scalar >= 0. No gradient flows."""
    staleness = staleness.astype(jnp.float32)
    span = staleness + progress
    alpha = jnp.where(span > 0, staleness / jnp.where(span > 0, span, 1.0), 1.0)
    return jax.lax.stop_gradient(behaviour + alpha * (current - behaviour))
