"""Rollout/train mismatch corrections: the sampler's probabilities differ from the learner's
(different kernels, precision, stale weights), so the rollouts are slightly off-policy.

Every correction has the signature `fn(inputs: CorrectionInputs, config) -> (weights, mask, metrics)`
with rho_t = pi_train(y_t) / pi_rollout(y_t) from the learner's proximal log-probs and the
sampler's behaviour log-probs (log mu of the distribution each token was drawn from, i.e. after
top-p/top-k truncation; the learner's pi is untruncated). The learner multiplies the per-token policy loss by `weights`
and trains only on `mask`. Neither depends on the weights being trained, so both are computed
once per step.
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
class CorrectionInputs:
    train_log_probs: jax.Array  # [B, T] learner, proximal weights
    rollout_log_probs: jax.Array  # [B, T] sampler (behaviour)
    mask: jax.Array  # [B, T]


Metrics = dict[str, jax.Array]
CorrectionFn = Callable[[CorrectionInputs, AlgorithmConfig], tuple[jax.Array, jax.Array, Metrics]]
CORRECTIONS: Registry[CorrectionFn] = Registry("rollout correction")


def _metrics(weights: jax.Array, kept: jax.Array, mask: jax.Array) -> Metrics:
    return {
        "training/correction_masked_frac": 1.0 - jnp.sum(kept * mask) / jnp.maximum(jnp.sum(mask), 1.0),
        "training/correction_weight_mean": masked_mean(weights, kept * mask),
    }


def _log_rho(inputs: CorrectionInputs) -> jax.Array:
    return (inputs.train_log_probs - inputs.rollout_log_probs) * inputs.mask


@CORRECTIONS.register("none")
def no_correction(inputs: CorrectionInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array, Metrics]:
    """w_t = 1 on every response token: treat the rollouts as on-policy."""
    weights = jnp.ones_like(inputs.mask)
    return weights, inputs.mask, _metrics(weights, inputs.mask, inputs.mask)


@CORRECTIONS.register("tis")
def truncated_importance_sampling(inputs: CorrectionInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array, Metrics]:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL"):

    token level: w_t = min(rho_t, C);  sequence level: w_i = min(prod_t rho_t, C) on every token of row i.
    C = tis_cap (.inf: plain importance sampling).
    """
    log_rho = _log_rho(inputs)
    if config.correction_level == "sequence":
        log_rho = jnp.broadcast_to(jnp.sum(log_rho, axis=1, keepdims=True), log_rho.shape)
    weights = jnp.minimum(jnp.exp(log_rho), config.tis_cap) * inputs.mask
    return weights, inputs.mask, _metrics(weights, inputs.mask, inputs.mask)


@CORRECTIONS.register("icepop")
def icepop(inputs: CorrectionInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array, Metrics]:
    """IcePop (Ling Team 2025, Ring-1T): w_t = rho_t if alpha <= rho_t <= beta, else the token is masked.

    alpha, beta = correction_low, correction_high. Tokens far outside the band are the ones whose
    gradients the mismatch corrupts most; dropping them beats down-weighting them.
    """
    rho = jnp.exp(_log_rho(inputs))
    kept = inputs.mask * ((rho >= config.correction_low) & (rho <= config.correction_high))
    weights = rho * kept
    return weights, kept, _metrics(weights, kept, inputs.mask)


@CORRECTIONS.register("geo_mask")
def geometric_mean_mask(inputs: CorrectionInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array, Metrics]:
    """Sequence masking on the geometric-mean ratio: rho_i = exp((1 / |y_i|) sum_t log rho_t);

    row i is trained (w = 1) iff correction_low <= rho_i <= correction_high, else dropped whole.
    Length-normalized, so long responses are not rejected just for being long.
    """
    lengths = jnp.maximum(jnp.sum(inputs.mask, axis=1), 1.0)
    rho = jnp.exp(jnp.sum(_log_rho(inputs), axis=1) / lengths)
    in_band = (rho >= config.correction_low) & (rho <= config.correction_high)
    kept = inputs.mask * in_band[:, None]
    return kept, kept, _metrics(kept, kept, inputs.mask)
