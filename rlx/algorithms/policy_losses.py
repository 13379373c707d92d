"""Policy-gradient losses: per-token loss [B, T] and metrics; aggregation happens afterwards.

Every loss has the signature `fn(inputs: PolicyLossInputs, config) -> (token_loss, metrics)`;
`token_loss` is zero on masked tokens. log-probs are of the sampled tokens: `log_probs` from
the weights being trained, `old_log_probs` from the proximal policy (the learner's weights
before this step's updates), `behaviour_log_probs` from the engine that sampled.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from rlx.algorithms.aggregation import masked_mean
from rlx.algorithms.config import AlgorithmConfig
from rlx.algorithms.registry import Registry


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PolicyLossInputs:
    log_probs: jax.Array  # current policy, [B, T]
    old_log_probs: jax.Array  # proximal policy the ratio is taken against, [B, T]
    advantages: jax.Array  # [B, T]
    mask: jax.Array  # [B, T], 1 on response tokens (EOS included)
    behaviour_log_probs: jax.Array  # sampler's policy, [B, T]


Metrics = dict[str, jax.Array]
PolicyLossFn = Callable[[PolicyLossInputs, AlgorithmConfig], tuple[jax.Array, Metrics]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


def clipped_surrogate(ratio: jax.Array, advantages: jax.Array, mask: jax.Array, config: AlgorithmConfig) -> tuple[jax.Array, Metrics]:
    """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), then for A < 0 at most c * |A| (dual clip)."""
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_ratio_low, 1.0 + config.clip_ratio_high)
    unclipped_loss = -ratio * advantages
    clipped_loss = -clipped_ratio * advantages
    loss = jnp.maximum(unclipped_loss, clipped_loss)
    dual_bound = -config.clip_ratio_c * advantages
    dual_active = (advantages < 0) & (loss > dual_bound)
    loss = jnp.where(dual_active, dual_bound, loss)
    metrics = {
        "actor/pg_clipfrac": masked_mean((clipped_loss > unclipped_loss).astype(jnp.float32), mask),
        "actor/pg_clipfrac_lower": masked_mean(dual_active.astype(jnp.float32), mask),
    }
    return loss * mask, metrics


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(inputs: PolicyLossInputs, config: AlgorithmConfig) -> tuple[jax.Array, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017) with asymmetric clip (DAPO clip-higher) and dual clip:

    r = exp(logp - logp_old);  L = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A);
    for A < 0: L = min(L, -c * A) (dual-clip PPO, Ye et al. 2020; c = clip_ratio_c, inf = off).
    """
    log_ratio = inputs.log_probs - inputs.old_log_probs
    loss, metrics = clipped_surrogate(jnp.exp(log_ratio), inputs.advantages, inputs.mask, config)
    metrics["actor/ppo_kl"] = masked_mean(-log_ratio, inputs.mask)
    return loss, metrics


def _sequence_log_ratio(inputs: PolicyLossInputs) -> jax.Array:
    """(1 / |y_i|) sum_t (logp - logp_old), [B]: the log of GSPO's length-normalized sequence ratio."""
    lengths = jnp.maximum(jnp.sum(inputs.mask, axis=1), 1.0)
    return jnp.sum((inputs.log_probs - inputs.old_log_probs) * inputs.mask, axis=1) / lengths


@POLICY_LOSSES.register("gspo")
def gspo(inputs: PolicyLossInputs, config: AlgorithmConfig) -> tuple[jax.Array, Metrics]:
    """GSPO (Zheng et al. 2025): one length-normalized ratio per sequence,

    s_i = exp((1 / |y_i|) sum_t (logp_t - logp_old_t));  L_it = -min(s_i A_it, clip(s_i, 1 - eps_low, 1 + eps_high) A_it).
    The paper's clip range is ~1e-3 (eps_low = 3e-4, eps_high = 4e-4), set it in the config.
    """
    seq_log_ratio = _sequence_log_ratio(inputs)
    ratio = jnp.broadcast_to(jnp.exp(seq_log_ratio)[:, None], inputs.mask.shape)
    loss, metrics = clipped_surrogate(ratio, inputs.advantages, inputs.mask, config)
    metrics["actor/ppo_kl"] = masked_mean(jnp.broadcast_to(-seq_log_ratio[:, None], inputs.mask.shape), inputs.mask)
    return loss, metrics


@POLICY_LOSSES.register("gspo_token")
def gspo_token(inputs: PolicyLossInputs, config: AlgorithmConfig) -> tuple[jax.Array, Metrics]:
    """GSPO-token (Zheng et al. 2025): s_it = sg(s_i) * pi(y_t) / sg(pi(y_t)),

    equal in value to GSPO's s_i, but each token's gradient is its own (for token-level advantages).
    """
    seq_log_ratio = jax.lax.stop_gradient(_sequence_log_ratio(inputs))
    log_ratio = seq_log_ratio[:, None] + inputs.log_probs - jax.lax.stop_gradient(inputs.log_probs)
    loss, metrics = clipped_surrogate(jnp.exp(log_ratio), inputs.advantages, inputs.mask, config)
    metrics["actor/ppo_kl"] = masked_mean(-log_ratio, inputs.mask)
    return loss, metrics


@POLICY_LOSSES.register("cispo")
def cispo(inputs: PolicyLossInputs, config: AlgorithmConfig) -> tuple[jax.Array, Metrics]:
    """CISPO (MiniMax-M1, 2025): clip the importance weight, not the update, so every token keeps a gradient:

    L = -sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * logp,  r = exp(logp - logp_old).
    MiniMax uses a wide upper bound (eps_high of a few units) and no effective lower bound.
    """
    log_ratio = inputs.log_probs - inputs.old_log_probs
    ratio = jnp.exp(log_ratio)
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - config.clip_ratio_low, 1.0 + config.clip_ratio_high))
    loss = -weight * inputs.advantages * inputs.log_probs
    clipped = (ratio < 1.0 - config.clip_ratio_low) | (ratio > 1.0 + config.clip_ratio_high)
    metrics = {
        "actor/pg_clipfrac": masked_mean(clipped.astype(jnp.float32), inputs.mask),
        "actor/ppo_kl": masked_mean(-log_ratio, inputs.mask),
    }
    return loss * inputs.mask, metrics


@POLICY_LOSSES.register("decoupled_ppo")
def decoupled_ppo(inputs: PolicyLossInputs, config: AlgorithmConfig) -> tuple[jax.Array, Metrics]:
    """Decoupled PPO (Hilton et al. 2022; AReaL, Fu et al. 2025) for stale or mismatched rollouts:

    w = min(sg(pi_prox / pi_behav), cap);  L = -w * min(r A, clip(r, 1 - eps_low, 1 + eps_high) A),  r = pi / pi_prox.
    The trust region is centred on the proximal policy (learner weights before the update); the
    behaviour policy that sampled only enters through the importance weight w.
    """
    log_ratio = inputs.log_probs - inputs.old_log_probs
    loss, metrics = clipped_surrogate(jnp.exp(log_ratio), inputs.advantages, inputs.mask, config)
    weight = jnp.minimum(jnp.exp(inputs.old_log_probs - inputs.behaviour_log_probs), config.behaviour_weight_cap)
    weight = jax.lax.stop_gradient(weight)
    metrics["actor/ppo_kl"] = masked_mean(-log_ratio, inputs.mask)
    metrics["actor/behaviour_weight_mean"] = masked_mean(weight, inputs.mask)
    return loss * weight, metrics


@POLICY_LOSSES.register("pg")
def vanilla_pg(inputs: PolicyLossInputs, config: AlgorithmConfig) -> tuple[jax.Array, Metrics]:
    """REINFORCE (Williams 1992): L = -A * logp. No ratio, no clip: correct for one on-policy step only."""
    return -inputs.advantages * inputs.log_probs * inputs.mask, {}
