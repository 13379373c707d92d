"""Advantage estimators: per-token advantages and returns [B, T] from rewards (and values).

Every estimator has the signature `fn(inputs: AdvantageInputs, config) -> (advantages, returns)`.
`returns` is the critic's regression target; estimators without a critic still return their
discounted reward-to-go so the contract is uniform.

Token-level rewards (a KL penalty in the reward, on-policy distillation) enter every estimator.
Outcome estimators (grpo, rloo, reinforce_plus_plus_baseline) normalize only the sequence
reward within its group and then add the discounted reward-to-go of the token rewards
unnormalized: veRL folds token rewards into the sequence score first, which would average a
distillation signal over the whole response. reinforce_plus_plus and gae treat the sequence
reward as one more token reward, on the last response token, as in their papers.

The mask need not be contiguous: a multi-turn trajectory's observation tokens (mask 0) sit between
policy tokens. Returns and GAE then run over the policy tokens only, as if the observations were
not there: one discount step per policy token, and the value after a turn's last token is that
of the next turn's first.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from rlx.algorithms.config import AlgorithmConfig
from rlx.algorithms.registry import Registry

EPS = 1e-6


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AdvantageInputs:
    rewards: jax.Array  # [B] sequence (outcome) reward
    group_ids: jax.Array  # [B] int32 in [0, B): rows of one prompt share a value
    mask: jax.Array  # [B, T] 1 on the policy's response tokens (EOS included); 0 on padding and observations
    values: jax.Array  # [B, T] critic values V(s_t); zeros without a critic
    token_rewards: jax.Array  # [B, T] per-token rewards; zeros when none


AdvantageFn = Callable[[AdvantageInputs, AlgorithmConfig], tuple[jax.Array, jax.Array]]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")


def group_mean_std(values: jax.Array, group_ids: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array]:
    """Per-row mean and (population) standard deviation of the row's group."""
    counts = jax.ops.segment_sum(jnp.ones_like(values), group_ids, num_groups)
    means = jax.ops.segment_sum(values, group_ids, num_groups) / jnp.maximum(counts, 1)
    squares = jax.ops.segment_sum((values - means[group_ids]) ** 2, group_ids, num_groups)
    stds = jnp.sqrt(squares / jnp.maximum(counts, 1))
    return means[group_ids], stds[group_ids]


def discounted_returns(token_rewards: jax.Array, mask: jax.Array, gamma: float) -> jax.Array:
    """G_t = sum_{k >= t} gamma^(k - t) r_k over the masked tokens (k, t counting those only), [B, T]."""
    def back(carry, column):
        reward, kept = column
        carry = jnp.where(kept > 0, reward + gamma * carry, carry)
        return carry, carry

    _, returns = jax.lax.scan(back, jnp.zeros(token_rewards.shape[0]), (token_rewards.T, mask.T), reverse=True)
    return returns.T * mask


def outcome_on_last_token(rewards: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, T] with each row's sequence reward on its last masked token."""
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)
    return jax.nn.one_hot(last, mask.shape[1], dtype=rewards.dtype) * rewards[:, None] * mask


def masked_whiten(values: jax.Array, mask: jax.Array) -> jax.Array:
    """(x - mean) / (std + eps) over the masked tokens of the whole batch."""
    count = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(values * mask) / count
    var = jnp.sum(((values - mean) * mask) ** 2) / count
    return (values - mean) / (jnp.sqrt(var) + EPS) * mask


def _with_token_rewards(sequence_advantages: jax.Array, inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array]:
    token_returns = discounted_returns(inputs.token_rewards, inputs.mask, config.gamma)
    advantages = sequence_advantages[:, None] * inputs.mask + token_returns
    returns = discounted_returns(inputs.token_rewards + outcome_on_last_token(inputs.rewards, inputs.mask), inputs.mask, config.gamma)
    return advantages, returns


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array]:
    """GRPO (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    With `norm_adv_by_std: false` the division is skipped (Dr. GRPO, Liu et al. 2025).
    Every token of a response gets its sequence's advantage.
    """
    mean, std = group_mean_std(inputs.rewards, inputs.group_ids, inputs.rewards.shape[0])
    advantages = inputs.rewards - mean
    if config.norm_adv_by_std:
        advantages = advantages / (std + EPS)
    return _with_token_rewards(advantages, inputs, config)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array]:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - (sum_group r - r_i) / (n - 1) = n / (n - 1) * (r_i - mean(r_group)).

    A group of one has no other sample to compare with and gets A = 0.
    """
    num = inputs.rewards.shape[0]
    counts = jax.ops.segment_sum(jnp.ones_like(inputs.rewards), inputs.group_ids, num)[inputs.group_ids]
    totals = jax.ops.segment_sum(inputs.rewards, inputs.group_ids, num)[inputs.group_ids]
    baseline = (totals - inputs.rewards) / jnp.maximum(counts - 1, 1)
    advantages = jnp.where(counts > 1, inputs.rewards - baseline, 0.0)
    return _with_token_rewards(advantages, inputs, config)


@ADVANTAGE_ESTIMATORS.register("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline_advantages(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array]:
    """REINFORCE++-baseline (Hu et al. 2025): A = whiten_batch(r_i - mean(r_group)).

    The group mean removes the prompt's difficulty; the std used to scale comes from the whole
    batch's tokens rather than the group, which keeps zero-variance groups from exploding.
    """
    mean, _ = group_mean_std(inputs.rewards, inputs.group_ids, inputs.rewards.shape[0])
    centred = (inputs.rewards - mean)[:, None] * inputs.mask
    advantages = masked_whiten(centred, inputs.mask)
    token_returns = discounted_returns(inputs.token_rewards, inputs.mask, config.gamma)
    returns = discounted_returns(inputs.token_rewards + outcome_on_last_token(inputs.rewards, inputs.mask), inputs.mask, config.gamma)
    return advantages + token_returns, returns


@ADVANTAGE_ESTIMATORS.register("reinforce_plus_plus")
def reinforce_plus_plus_advantages(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array]:
    """REINFORCE++ (Hu et al. 2025): G_t = sum_{k >= t} gamma^(k - t) r_k;  A = whiten_batch(G).

    r_k holds the token rewards plus the sequence reward on the last token; no critic, no group.
    """
    returns = discounted_returns(inputs.token_rewards + outcome_on_last_token(inputs.rewards, inputs.mask), inputs.mask, config.gamma)
    return masked_whiten(returns, inputs.mask), returns


@ADVANTAGE_ESTIMATORS.register("gae")
def gae_advantages(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[jax.Array, jax.Array]:
    """GAE (Schulman et al. 2016) with a critic V:

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t) (V = 0 after the last token; t + 1 is the next masked token);
    A_t = sum_k (gamma lam)^k delta_{t+k};  returns_t = A_t + V(s_t);  A = whiten_batch(A) as in PPO.
    """
    mask = inputs.mask
    rewards = (inputs.token_rewards + outcome_on_last_token(inputs.rewards, mask)) * mask
    values = inputs.values * mask

    def back(carry, column):
        next_value, next_advantage = carry
        reward, value, kept = column
        advantage = reward + config.gamma * next_value - value + config.gamma * config.lam * next_advantage
        carry = (jnp.where(kept > 0, value, next_value), jnp.where(kept > 0, advantage, next_advantage))
        return carry, carry[1]

    zeros = jnp.zeros(mask.shape[0])
    _, advantages = jax.lax.scan(back, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True)
    advantages = advantages.T * mask
    return masked_whiten(advantages, mask), (advantages + values) * mask
