"""The RL update's math: what is fixed before the first optimizer step, and the loss of one micro-batch.

Micro-batching must not change the gradient. Every loss term is an aggregation that is linear in
its per-token values (`rlx.algorithms.aggregation`: token-mean, seq-mean-*, masked means), so
over a minibatch it equals `sum(values * C)` with `C` its per-token coefficients, obtained once
per minibatch as the gradient of the aggregation (`LossWeights`). A micro-batch's loss is then
its rows' share of that sum, and the micro-batches' gradients add up to the minibatch's exactly.
Policy losses are per row (GSPO's sequence ratio included), so rows can be split freely.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlx.algorithms import (
    ADVANTAGE_ESTIMATORS, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES, AdvantageInputs, AlgorithmConfig, CorrectionInputs,
    PolicyLossInputs, aggregate, interpolated_proximal_log_probs, masked_mean,
)
from rlx.learner.config import DistillConfig

Metrics = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainBatch:
    """One step's rollouts, grouped: rows of a prompt group share a `group_ids` value."""

    tokens: jax.Array  # [B, P + R] left-padded prompt, then the response
    start: jax.Array  # [B] first real prompt column
    mask: jax.Array  # [B, R] 1 on response tokens, EOS included
    rewards: jax.Array  # [B]
    group_ids: jax.Array  # [B] int32 in [0, B)
    behaviour_log_probs: jax.Array  # [B, R] from the sampler
    media: dict[str, jax.Array] | None = None  # encoder inputs per row (rlx.models.multimodal.Media); None for text
    staleness: jax.Array | None = None  # [B, R] versions the learner is ahead of each token's sampler (proximal: approximate)
    routes: jax.Array | None = None  # [B, P + R, moe_layers, k] int32 experts the sampler routed each token to, -1 where none

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1] - self.mask.shape[1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StepTargets:
    """Per-token arrays [B, R] that stay fixed across one update's minibatches and epochs."""

    old_log_probs: jax.Array  # proximal policy: the weights before this update
    ref_log_probs: jax.Array  # reference policy for the KL loss; zeros without one
    advantages: jax.Array
    weights: jax.Array  # rollout-correction weight per token
    mask: jax.Array  # response tokens the correction keeps


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LossWeights:
    """Per-token coefficients [B, R] of one minibatch's aggregations (see the module docstring)."""

    policy: jax.Array  # of the policy and KL losses: d aggregate(l, kept mask) / d l
    entropy: jax.Array  # of the entropy bonus: mask / tokens
    token_share: jax.Array  # kept / kept tokens: a micro-batch's share of the minibatch's masked means


def linear_coefficients(mask: jax.Array, mode: str) -> jax.Array:
    """C with aggregate(l, mask, mode) == sum(l * C) for every l (the aggregations are linear in l)."""
    return jax.grad(lambda loss: aggregate(loss, mask, mode))(jnp.zeros_like(mask))


@dataclasses.dataclass(frozen=True)
class Objective:
    algorithm: AlgorithmConfig
    distill: DistillConfig
    proximal: str  # LearnerConfig.proximal

    def prepare(self, batch: TrainBatch, old_log_probs, ref_log_probs, teacher_log_probs, values) -> tuple[StepTargets, jax.Array, Metrics]:
        """Token rewards, advantages, returns and correction weights: everything fixed before the first minibatch."""
        algo, mask = self.algorithm, batch.mask
        metrics = {}
        token_rewards = jnp.zeros_like(old_log_probs)
        if ref_log_probs is not None and algo.kl_penalty == "reward":
            kl = KL_ESTIMATORS.get(algo.kl_estimator)(old_log_probs, ref_log_probs)
            token_rewards = token_rewards - algo.kl_coef * kl
            metrics["actor/reward_kl_penalty"] = masked_mean(kl, mask)
        if teacher_log_probs is not None:
            reverse_kl = old_log_probs - teacher_log_probs
            token_rewards = token_rewards - self.distill.coef * reverse_kl
            metrics["distill/reverse_kl"] = masked_mean(reverse_kl, mask)
        inputs = AdvantageInputs(batch.rewards * self.distill.task_reward_coef, batch.group_ids, mask, values, token_rewards)
        advantages, returns = ADVANTAGE_ESTIMATORS.get(algo.adv_estimator)(inputs, algo)
        correction = CorrectionInputs(old_log_probs, batch.behaviour_log_probs, mask)
        weights, kept, correction_metrics = CORRECTIONS.get(algo.correction)(correction, algo)
        metrics.update(correction_metrics)
        if self.proximal == "recompute":  # with `approximate` there are no learner log-probs to compare yet
            mismatch = jnp.abs(jnp.exp(batch.behaviour_log_probs) - jnp.exp(old_log_probs)) * mask
            metrics["training/rollout_probs_diff_mean"] = jnp.sum(mismatch) / jnp.maximum(jnp.sum(mask), 1)
            metrics["training/rollout_probs_diff_max"] = jnp.max(mismatch)
        metrics["critic/advantages/mean"] = masked_mean(advantages, mask)
        use_ref_loss = ref_log_probs is not None and algo.kl_penalty == "loss"
        ref_for_loss = ref_log_probs if use_ref_loss else jnp.zeros_like(old_log_probs)
        return StepTargets(old_log_probs, ref_for_loss, advantages, weights, kept), returns, metrics

    def loss_weights(self, rows: tuple[TrainBatch, StepTargets]) -> LossWeights:
        """The coefficients of one minibatch (`rows`), before it is split into micro-batches."""
        batch, targets = rows
        kept = targets.mask
        return LossWeights(linear_coefficients(kept, self.algorithm.loss_agg_mode), linear_coefficients(batch.mask, "token-mean"),
                           linear_coefficients(kept, "token-mean"))

    def loss(self, log_probs: jax.Array, entropy: jax.Array, batch: TrainBatch, targets: StepTargets, weights: LossWeights,
             progress: jax.Array) -> tuple[jax.Array, Metrics]:
        """A micro-batch's share of its minibatch's loss and metrics (summed over micro-batches they are the minibatch's)."""
        algo = self.algorithm
        proximal = targets.old_log_probs
        if self.proximal == "approximate":
            proximal = interpolated_proximal_log_probs(batch.behaviour_log_probs, log_probs, batch.staleness, progress)
        inputs = PolicyLossInputs(log_probs, proximal, targets.advantages, targets.mask, batch.behaviour_log_probs)
        token_loss, loss_metrics = POLICY_LOSSES.get(algo.policy_loss)(inputs, algo)
        share = jnp.sum(weights.token_share)  # the loss's metrics are masked means over this micro-batch's kept tokens
        metrics = {key: value * share for key, value in loss_metrics.items()}
        pg_loss = jnp.sum(token_loss * targets.weights * weights.policy)
        entropy_mean = jnp.sum(entropy * weights.entropy)
        loss = pg_loss - algo.entropy_coef * entropy_mean
        metrics.update({"actor/pg_loss": pg_loss, "actor/entropy": entropy_mean})
        if algo.kl_coef > 0 and algo.kl_penalty == "loss":
            kl = jnp.sum(KL_ESTIMATORS.get(algo.kl_estimator)(log_probs, targets.ref_log_probs) * weights.policy)
            loss = loss + algo.kl_coef * kl
            metrics["actor/kl_loss"] = kl
        metrics["actor/loss"] = loss
        return loss, metrics
