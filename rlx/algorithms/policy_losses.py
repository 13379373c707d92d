"""Policy-gradient losses: per-token loss [B, T] and metrics; aggregation happens afterwards."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from rlx.algorithms.aggregation import masked_mean
from rlx.algorithms.config import AlgorithmConfig
from rlx.algorithms.registry import Registry


@dataclasses.dataclass(frozen=True)
class PolicyLossInputs:
    log_probs: jax.Array  # current policy, [B, T]
    old_log_probs: jax.Array  # policy that the ratio is taken against, [B, T]
    advantages: jax.Array  # [B, T]
    mask: jax.Array  # [B, T], 1 on response tokens (EOS included)


PolicyLossFn = Callable[[PolicyLossInputs, AlgorithmConfig], tuple[jax.Array, dict[str, jax.Array]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(inputs: PolicyLossInputs, config: AlgorithmConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate (Schulman et al. 2017) with asymmetric clip (DAPO clip-higher):

    r = exp(logp - logp_old);  L = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A).
    """
    log_ratio = inputs.log_probs - inputs.old_log_probs
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_ratio_low, 1.0 + config.clip_ratio_high)
    unclipped_loss = -ratio * inputs.advantages
    clipped_loss = -clipped_ratio * inputs.advantages
    loss = jnp.maximum(unclipped_loss, clipped_loss)
    metrics = {
        "actor/pg_clipfrac": masked_mean((clipped_loss > unclipped_loss).astype(jnp.float32), inputs.mask),
        "actor/ppo_kl": masked_mean(-log_ratio, inputs.mask),
    }
    return loss * inputs.mask, metrics
