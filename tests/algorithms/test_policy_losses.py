"""Policy losses: hand-computed values, gradients, and the ratio = 1 invariant for every registered loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlx.algorithms import POLICY_LOSSES, AlgorithmConfig, PolicyLossInputs, aggregate

CONFIG = AlgorithmConfig()


def loss(name, log_probs, old, advantages, mask=None, behaviour=None, **overrides):
    log_probs = jnp.asarray(log_probs, jnp.float32)
    mask = jnp.ones_like(log_probs) if mask is None else jnp.asarray(mask, jnp.float32)
    old = jnp.asarray(old, jnp.float32)
    behaviour = old if behaviour is None else jnp.asarray(behaviour, jnp.float32)
    inputs = PolicyLossInputs(log_probs, old, jnp.asarray(advantages, jnp.float32), mask, behaviour)
    return POLICY_LOSSES.get(name)(inputs, dataclasses.replace(CONFIG, policy_loss=name, **overrides))


def test_dual_clip_bounds_negative_advantage_loss():
    # r = 3, A = -1: PPO loss max(3, 1.2) = 3 > c = 2 -> 2.  r = 0.5, A = -1: max(0.5, 0.8) = 0.8.  A > 0 untouched.
    token_loss, metrics = loss("ppo_clip", jnp.log(jnp.array([[3.0, 0.5, 3.0]])), jnp.zeros((1, 3)), [[-1.0, -1.0, 1.0]], clip_ratio_c=2.0)
    np.testing.assert_allclose(token_loss, [[2.0, 0.8, -1.2]], rtol=1e-6)
    assert float(metrics["actor/pg_clipfrac_lower"]) == pytest.approx(1 / 3)


def test_gspo_uses_one_length_normalized_ratio_per_sequence():
    # token log-ratios [log 2, 0] -> s = exp(log 2 / 2) = sqrt 2; padding ignored
    log_probs = jnp.array([[jnp.log(2.0), 0.0, 5.0]])
    mask = [[1, 1, 0]]
    token_loss, _ = loss("gspo", log_probs, jnp.zeros((1, 3)), jnp.ones((1, 3)), mask, clip_ratio_high=0.5)
    np.testing.assert_allclose(token_loss, [[-np.sqrt(2), -np.sqrt(2), 0.0]], rtol=1e-6)
    clipped, metrics = loss("gspo", log_probs, jnp.zeros((1, 3)), jnp.ones((1, 3)), mask)
    np.testing.assert_allclose(clipped, [[-1.2, -1.2, 0.0]], rtol=1e-6)
    assert float(metrics["actor/pg_clipfrac"]) == 1.0


def test_gspo_token_has_gspo_value_but_per_token_gradients():
    log_probs = jnp.array([[0.3, -0.1]])
    advantages = jnp.array([[1.0, 3.0]])
    wide = {"clip_ratio_high": 10.0, "clip_ratio_low": 0.9}

    def total(name, lp):
        token_loss, _ = loss(name, lp, jnp.zeros((1, 2)), advantages, **wide)
        return aggregate(token_loss, jnp.ones((1, 2)), "token-mean")

    s = np.exp(0.1)  # mean log-ratio (0.3 - 0.1) / 2
    assert float(total("gspo", log_probs)) == pytest.approx(float(total("gspo_token", log_probs)), rel=1e-6)
    # gspo: d/dlp_t [-s * mean(A)] = -(s / 2) * 2 / 2; gspo_token: -s * A_t / 2
    np.testing.assert_allclose(jax.grad(lambda lp: total("gspo", lp))(log_probs), [[-s, -s]], rtol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda lp: total("gspo_token", lp))(log_probs), [[-s / 2, -3 * s / 2]], rtol=1e-5)


def test_cispo_clips_the_weight_and_keeps_the_gradient():
    old = jnp.array([[-1.0 - np.log(2.0), -1.0]])
    log_probs = jnp.array([[-1.0, -1.0]])  # ratios 2 and 1

    def total(lp):
        token_loss, _ = loss("cispo", lp, old, [[1.0, -2.0]], clip_ratio_high=0.5)
        return jnp.sum(token_loss)

    token_loss, metrics = loss("cispo", log_probs, old, [[1.0, -2.0]], clip_ratio_high=0.5)
    np.testing.assert_allclose(token_loss, [[1.5 * 1.0 * 1.0, -2.0]], rtol=1e-6)  # -w A logp with w = 1.5, 1
    np.testing.assert_allclose(jax.grad(total)(log_probs), [[-1.5, 2.0]], rtol=1e-6)  # clipped token still learns
    assert float(metrics["actor/pg_clipfrac"]) == 0.5


@pytest.mark.parametrize("cap, weight", [(np.inf, 2.0), (1.5, 1.5)])
def test_decoupled_ppo_weights_by_proximal_over_behaviour(cap, weight):
    old = jnp.array([[-1.0]])
    behaviour = old - jnp.log(2.0)  # pi_prox / pi_behav = 2
    token_loss, metrics = loss("decoupled_ppo", old, old, [[3.0]], behaviour=behaviour, behaviour_weight_cap=cap)
    np.testing.assert_allclose(token_loss, [[-weight * 3.0]], rtol=1e-6)
    assert float(metrics["actor/behaviour_weight_mean"]) == pytest.approx(weight)


def test_decoupled_ppo_clips_around_the_proximal_policy():
    # behaviour far away, current = proximal * 1.5: the clip acts on pi / pi_prox, not pi / pi_behav
    token_loss, _ = loss("decoupled_ppo", jnp.log(jnp.array([[1.5]])), jnp.zeros((1, 1)), [[1.0]], behaviour=jnp.zeros((1, 1)))
    np.testing.assert_allclose(token_loss, [[-1.2]], rtol=1e-6)


def test_pg_is_reinforce():
    token_loss, _ = loss("pg", [[-0.5, -2.0]], [[0.0, 0.0]], [[2.0, -1.0]], mask=[[1, 0]])
    np.testing.assert_allclose(token_loss, [[1.0, 0.0]])


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_ratio_one_gives_negative_advantage_gradient(name):
    """At pi = pi_old = pi_behav every loss has the policy gradient -A grad logp (token-mean)."""
    advantages = jnp.array([[0.5, 0.5, 0.5], [-1.0, -1.0, -1.0]])  # constant per row: sequence-level losses agree too
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    log_probs = jnp.array([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]])

    def total(lp):
        token_loss, _ = loss(name, lp, jax.lax.stop_gradient(lp), advantages, mask)
        return aggregate(token_loss, mask, "token-mean")

    np.testing.assert_allclose(jax.grad(total)(log_probs), -advantages * mask / jnp.sum(mask), rtol=1e-5, atol=1e-7)
    if name not in ("pg", "cispo"):  # those two weigh logp itself, not the ratio
        assert float(total(log_probs)) == pytest.approx(-float(jnp.sum(advantages * mask) / jnp.sum(mask)), rel=1e-6)


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "decoupled_ppo", "pg"])
def test_gradients_match_finite_differences(name):
    """Losses whose gradient is the derivative of their value (cispo and gspo_token deliberately are not)."""
    old = jnp.array([[-1.0, -1.2, -0.8]])
    advantages = jnp.array([[1.0, -0.5, 0.7]])

    def total(lp):
        token_loss, _ = loss(name, lp, old, advantages, behaviour=old - 0.1)
        return jnp.sum(token_loss)

    check_grads(total, (jnp.array([[-1.05, -1.1, -0.82]]),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
