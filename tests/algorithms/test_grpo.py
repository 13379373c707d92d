"""GRPO pieces against hand-computed numbers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.algorithms import ADVANTAGE_ESTIMATORS, CORRECTIONS, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES, AdvantageInputs, AlgorithmConfig, PolicyLossInputs, aggregate
from rlx.algorithms.registry import Registry

CONFIG = AlgorithmConfig()


def grpo(rewards, groups, mask, config=CONFIG):
    inputs = AdvantageInputs(rewards, groups, mask, jnp.zeros_like(mask), jnp.zeros_like(mask))
    return ADVANTAGE_ESTIMATORS.get("grpo")(inputs, config)[0]


def test_grpo_advantages_by_hand():
    # group 0: rewards 1, 0, 0, 1 -> mean 0.5, std 0.5 -> +-1; group 1: 1, 1, 1, 0 -> mean .75, std .4330
    rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    groups = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])
    mask = jnp.ones((8, 2)).at[1, 1].set(0.0)
    advantages = grpo(rewards, groups, mask)
    std1 = np.sqrt(0.75 * 0.25)
    expected = np.array([1, -1, -1, 1, 0.25 / std1, 0.25 / std1, 0.25 / std1, -0.75 / std1])
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-4)
    assert advantages[1, 1] == 0.0  # masked tokens carry no advantage


def test_dr_grpo_skips_std_normalization():
    rewards = jnp.array([1.0, 0.0, 1.0, 1.0])
    groups = jnp.array([0, 0, 1, 1])
    advantages = grpo(rewards, groups, jnp.ones((4, 1)), dataclasses.replace(CONFIG, norm_adv_by_std=False))
    np.testing.assert_allclose(advantages[:, 0], [0.5, -0.5, 0.0, 0.0])


def test_uniform_group_gets_zero_advantage():
    advantages = grpo(jnp.ones(4), jnp.zeros(4, jnp.int32), jnp.ones((4, 3)))
    np.testing.assert_array_equal(advantages, 0.0)


def ppo(log_probs, old, advantages, mask=None, **overrides):
    mask = jnp.ones_like(log_probs) if mask is None else mask
    config = dataclasses.replace(CONFIG, **overrides)
    return POLICY_LOSSES.get("ppo_clip")(PolicyLossInputs(log_probs, old, advantages, mask, old), config)


def test_ppo_clip_by_hand():
    old = jnp.zeros((1, 4))
    ratios = jnp.array([[1.5, 0.5, 1.1, 0.7]])
    advantages = jnp.array([[1.0, 1.0, -2.0, -1.0]])
    loss, metrics = ppo(jnp.log(ratios), old, advantages)
    # A>0: -min(r, clip(r))*A ; A<0: -max(r, clip(r))*A
    expected = [-1.2, -0.5, 2.2, 0.8]
    np.testing.assert_allclose(loss[0], expected, rtol=1e-5)
    assert float(metrics["actor/pg_clipfrac"]) == pytest.approx(0.5)  # tokens 0 and 3 are clipped
    np.testing.assert_allclose(float(aggregate(loss, jnp.ones_like(loss), "token-mean")), np.mean(expected), rtol=1e-5)


def test_clip_higher_is_asymmetric():
    loss, _ = ppo(jnp.log(jnp.array([[1.25]])), jnp.zeros((1, 1)), jnp.ones((1, 1)), clip_ratio_high=0.28)
    np.testing.assert_allclose(loss, [[-1.25]], rtol=1e-6)  # inside [0.8, 1.28]: unclipped


def test_ratio_one_gives_negative_mean_advantage_and_its_gradient():
    advantages = jnp.array([[0.5, -1.0, 2.0], [1.0, 0.0, 3.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    log_probs = jnp.array([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]])

    def total(lp):
        loss, _ = ppo(lp, jax.lax.stop_gradient(lp), advantages, mask)
        return aggregate(loss, mask, "token-mean")

    value, grad = jax.value_and_grad(total)(log_probs)
    assert float(value) == pytest.approx(-float(jnp.sum(advantages * mask) / jnp.sum(mask)), rel=1e-6)
    np.testing.assert_allclose(grad, -advantages * mask / jnp.sum(mask), rtol=1e-6)


def test_token_mean_ignores_masked_tokens():
    loss = jnp.array([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(aggregate(loss, mask, "token-mean")) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "name, expected",
    [("k1", [0.5, -0.5]), ("k2", [0.125, 0.125]), ("k3", [np.exp(-0.5) + 0.5 - 1, np.exp(0.5) - 0.5 - 1])],
)
def test_kl_estimators_by_hand(name, expected):
    log_probs = jnp.array([-1.0, -1.5])
    ref = jnp.array([-1.5, -1.0])
    np.testing.assert_allclose(KL_ESTIMATORS.get(name)(log_probs, ref), expected, rtol=1e-6)


def test_registries_list_their_entries_on_unknown_names():
    for registry in (ADVANTAGE_ESTIMATORS, POLICY_LOSSES, KL_ESTIMATORS, LOSS_AGGREGATIONS, CORRECTIONS):
        with pytest.raises(ValueError, match="registered: " + ", ".join(registry.names())):
            registry.get("no-such-thing")


def test_registry_rejects_duplicates():
    registry: Registry = Registry("thing")
    registry.register("a")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(lambda: None)
    assert "a" in registry and registry.names() == ["a"]
