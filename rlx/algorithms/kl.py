"""KL estimators between the current policy p and a reference q, per token (Schulman 2020, "Approximating KL").

All take log p(y_t) and log q(y_t) of the sampled token, [B, T] -> [B, T].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlx.algorithms.registry import Registry

KLFn = Callable[[jax.Array, jax.Array], jax.Array]
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")

LOW_VAR_KL_BOUND = 10.0


@KL_ESTIMATORS.register("k1")
def kl_k1(log_probs: jax.Array, ref_log_probs: jax.Array) -> jax.Array:
    """k1 = log p - log q (unbiased, high variance)."""
    return log_probs - ref_log_probs


@KL_ESTIMATORS.register("k2")
def kl_k2(log_probs: jax.Array, ref_log_probs: jax.Array) -> jax.Array:
    """k2 = (log p - log q)^2 / 2."""
    return 0.5 * (log_probs - ref_log_probs) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(log_probs: jax.Array, ref_log_probs: jax.Array) -> jax.Array:
    """k3 = exp(log q - log p) - (log q - log p) - 1 (unbiased, always >= 0)."""
    log_ratio = ref_log_probs - log_probs
    return jnp.exp(log_ratio) - log_ratio - 1.0


@KL_ESTIMATORS.register("low_var_kl")
def kl_low_var(log_probs: jax.Array, ref_log_probs: jax.Array) -> jax.Array:
    """low_var_kl = clip(k3, -10, 10) with log q - log p clipped to [-20, 20] first (veRL's name for clipped k3).

    Bounds one badly mismatched token's contribution, so a single outlier cannot blow up the loss.
    """
    log_ratio = jnp.clip(ref_log_probs - log_probs, -20.0, 20.0)
    return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -LOW_VAR_KL_BOUND, LOW_VAR_KL_BOUND)
