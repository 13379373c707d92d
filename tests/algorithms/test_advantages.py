"""Advantage estimators against hand-computed numbers."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from rlx.algorithms import ADVANTAGE_ESTIMATORS, AdvantageInputs, AlgorithmConfig
from rlx.algorithms.advantages import discounted_returns, masked_whiten

CONFIG = AlgorithmConfig()


def advantages(name, rewards, groups, mask, values=None, token_rewards=None, **overrides):
    mask = jnp.asarray(mask, jnp.float32)
    values = jnp.zeros_like(mask) if values is None else jnp.asarray(values, jnp.float32)
    token_rewards = jnp.zeros_like(mask) if token_rewards is None else jnp.asarray(token_rewards, jnp.float32)
    inputs = AdvantageInputs(jnp.asarray(rewards, jnp.float32), jnp.asarray(groups, jnp.int32), mask, values, token_rewards)
    return ADVANTAGE_ESTIMATORS.get(name)(inputs, dataclasses.replace(CONFIG, **overrides))


def test_rloo_leaves_each_sample_out_of_its_baseline():
    # group 0: 1, 0, 0, 1 -> row 0: 1 - (0 + 0 + 1) / 3; group 1 has one sample: no baseline, A = 0
    adv, _ = advantages("rloo", [1, 0, 0, 1, 5], [0, 0, 0, 0, 1], np.ones((5, 2)))
    np.testing.assert_allclose(adv[:, 0], [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(adv[:, 1], adv[:, 0])


def test_reinforce_plus_plus_whitens_returns_over_the_batch():
    mask = [[1, 1, 1], [1, 1, 0]]
    adv, returns = advantages("reinforce_plus_plus", [1, 0], [0, 1], mask)
    np.testing.assert_allclose(returns, [[1, 1, 1], [0, 0, 0]])
    std = np.sqrt((3 * 0.4**2 + 2 * 0.6**2) / 5)  # 5 tokens with mean 0.6
    np.testing.assert_allclose(adv, [[0.4 / std] * 3, [-0.6 / std, -0.6 / std, 0.0]], rtol=1e-4)


def test_reinforce_plus_plus_discounts_token_rewards():
    _, returns = advantages("reinforce_plus_plus", [4], [0], [[1, 1, 1]], token_rewards=[[1, 2, 0]], gamma=0.5)
    # r = [1, 2, 4]: G_2 = 4, G_1 = 2 + 0.5 * 4 = 4, G_0 = 1 + 0.5 * 4 = 3
    np.testing.assert_allclose(returns, [[3, 4, 4]])


def test_reinforce_plus_plus_baseline_centres_in_group_then_whitens_batch():
    adv, _ = advantages("reinforce_plus_plus_baseline", [1, 0, 1, 1], [0, 0, 1, 1], np.ones((4, 1)))
    # centred [0.5, -0.5, 0, 0]: mean 0, std sqrt(0.125)
    np.testing.assert_allclose(adv[:, 0], [0.5 / np.sqrt(0.125), -0.5 / np.sqrt(0.125), 0, 0], rtol=1e-4)


def test_gae_with_lambda_one_is_return_minus_value():
    values = [[0.5, 0.6, 0.8]]
    adv, returns = advantages("gae", [1], [0], [[1, 1, 1]], values=values)
    np.testing.assert_allclose(returns, [[1, 1, 1]], rtol=1e-6)
    np.testing.assert_allclose(adv, masked_whiten(jnp.array([[0.5, 0.4, 0.2]]), jnp.ones((1, 3))), rtol=1e-5)


def test_gae_by_hand():
    # gamma .9, lam .5: deltas [.9*.6-.5, .9*.8-.6, 1-.8] = [.04, .12, .2]; A = [.04+.45*.21, .12+.45*.2, .2]
    values = [[0.5, 0.6, 0.8, 7.0]]  # the last column is padding: its value must not leak in
    adv, returns = advantages("gae", [1], [0], [[1, 1, 1, 0]], values=values, gamma=0.9, lam=0.5)
    raw = np.array([[0.1345, 0.21, 0.2, 0.0]])
    np.testing.assert_allclose(returns, raw + np.array([[0.5, 0.6, 0.8, 0.0]]), rtol=1e-5)
    np.testing.assert_allclose(adv, masked_whiten(jnp.asarray(raw), jnp.array([[1.0, 1, 1, 0]])), rtol=1e-4)


def test_token_rewards_add_their_return_to_outcome_advantages():
    adv, _ = advantages("grpo", [1, 0], [0, 0], np.ones((2, 2)), token_rewards=[[0.1, 0.2], [0.0, 0.3]], norm_adv_by_std=False)
    np.testing.assert_allclose(adv, [[0.8, 0.7], [-0.2, -0.2]], rtol=1e-6)


def test_discounted_returns_stop_at_the_mask():
    returns = discounted_returns(jnp.array([[1.0, 1.0, 9.0]]), jnp.array([[1.0, 1.0, 0.0]]), 1.0)
    np.testing.assert_allclose(returns, [[2, 1, 0]])


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_masked_tokens_get_no_advantage(name):
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    adv, returns = advantages(name, [1, 0, 0.5, 1], [0, 0, 1, 1], mask, values=np.full((4, 3), 0.3))
    assert adv.shape == returns.shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(adv)[mask == 0], 0.0)
    np.testing.assert_array_equal(np.asarray(returns)[mask == 0], 0.0)


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "gae"])
def test_observation_holes_in_the_mask_are_skipped_as_if_the_policy_tokens_were_contiguous(name):
    """Multi-turn rows interleave policy tokens (mask 1) and observations (mask 0): every estimator gives
    the policy tokens what it gives the same tokens without the holes, and the holes nothing."""
    rng = np.random.default_rng(0)
    holed = np.array([[1, 1, 0, 0, 1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], np.float32)
    rows, width = holed.shape
    compact = np.zeros_like(holed)
    values, token_rewards = rng.normal(size=holed.shape), rng.normal(size=holed.shape) * holed
    compact_values, compact_rewards = np.zeros_like(values), np.zeros_like(token_rewards)
    for row in range(rows):
        kept = np.flatnonzero(holed[row])
        compact[row, :len(kept)] = 1
        compact_values[row, :len(kept)], compact_rewards[row, :len(kept)] = values[row, kept], token_rewards[row, kept]
    settings = dict(gamma=0.9, lam=0.8)
    rewards, groups = [1.0, 0.0, 0.5], [0, 0, 1]
    adv, ret = advantages(name, rewards, groups, holed, values=values, token_rewards=token_rewards, **settings)
    adv_c, ret_c = advantages(name, rewards, groups, compact, values=compact_values, token_rewards=compact_rewards, **settings)
    for row in range(rows):
        kept = np.flatnonzero(holed[row])
        np.testing.assert_allclose(np.asarray(adv)[row, kept], np.asarray(adv_c)[row, :len(kept)], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ret)[row, kept], np.asarray(ret_c)[row, :len(kept)], rtol=1e-5, atol=1e-6)
    assert (np.asarray(adv)[holed == 0] == 0).all() and (np.asarray(ret)[holed == 0] == 0).all()
