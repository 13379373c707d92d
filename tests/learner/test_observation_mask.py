"""Multi-turn rows: observation tokens (mask 0 between policy tokens) never reach the loss, its gradient,
the log-prob mismatch metrics, corrections, KL or entropy, whatever values sit there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.algorithms import CORRECTIONS, POLICY_LOSSES, AlgorithmConfig
from rlx.algorithms.aggregation import LOSS_AGGREGATIONS
from rlx.learner.config import DistillConfig
from rlx.learner.objective import Objective, TrainBatch

MASK = np.array([[1, 1, 0, 0, 0, 1, 1, 0], [1, 0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]], np.float32)


def per_token(seed: int, low: float, high: float) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, MASK.shape).astype(np.float32)


def with_observations(values: np.ndarray, seed: int) -> jnp.ndarray:
    """`values` with other (wild) numbers on the observation tokens and padding."""
    return jnp.asarray(np.where(MASK > 0, values, per_token(seed, -30.0, 5.0)))


def loss_and_metrics(objective: Objective, seed: int):
    """(loss, metrics, d loss / d log-probs) with the same policy-token values and seed-dependent observation values."""
    rows = MASK.shape[0]
    batch = TrainBatch(tokens=jnp.zeros((rows, 3 + MASK.shape[1]), jnp.int32), start=jnp.zeros(rows, jnp.int32), mask=jnp.asarray(MASK),
                       rewards=jnp.array([1.0, 0.0, 0.5, 0.0]), group_ids=jnp.array([0, 0, 1, 1], jnp.int32),
                       behaviour_log_probs=with_observations(per_token(1, -3.0, -0.1), seed),
                       staleness=with_observations(np.zeros(MASK.shape, np.float32), seed + 1))
    old = with_observations(per_token(2, -3.0, -0.1), seed + 2)
    ref = with_observations(per_token(3, -3.0, -0.1), seed + 3)
    log_probs = with_observations(per_token(4, -3.0, -0.1), seed + 4)
    entropy = with_observations(per_token(5, 0.0, 2.0), seed + 5)
    targets, _, prepared = objective.prepare(batch, old, ref, None, jnp.zeros_like(old))
    weights = objective.loss_weights((batch, targets))

    def loss(log_probs):
        return objective.loss(log_probs, entropy, batch, targets, weights, jnp.float32(0.0))

    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(log_probs)
    return value, {**prepared, **metrics}, grad


# Every policy loss, every correction and every aggregation once (each case compiles: not their product).
CASES = [(p, "none", "token-mean") for p in POLICY_LOSSES.names()]
CASES += [("ppo_clip", c, "token-mean") for c in CORRECTIONS.names() if c != "none"]
CASES += [("ppo_clip", "none", mode) for mode in LOSS_AGGREGATIONS.names() if mode != "token-mean"]
CASES = [(*case, ("loss", "reward")[i % 2]) for i, case in enumerate(CASES)]  # the KL as a loss term or a reward penalty


@pytest.mark.parametrize("policy_loss,correction,aggregation,kl_penalty", CASES)
def test_observation_tokens_never_contribute_to_the_loss_or_the_mismatch_metrics(policy_loss, correction, aggregation, kl_penalty):
    algorithm = AlgorithmConfig(policy_loss=policy_loss, correction=correction, loss_agg_mode=aggregation, kl_coef=0.1,
                                kl_penalty=kl_penalty, entropy_coef=0.01)
    objective = Objective(algorithm, DistillConfig(), "recompute")
    loss_a, metrics_a, grad_a = loss_and_metrics(objective, seed=10)
    loss_b, metrics_b, grad_b = loss_and_metrics(objective, seed=20)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for name in metrics_a:
        np.testing.assert_allclose(metrics_a[name], metrics_b[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert "training/rollout_probs_diff_max" in metrics_a
    assert (np.asarray(grad_a)[MASK == 0] == 0).all() and (np.asarray(grad_b)[MASK == 0] == 0).all()
    np.testing.assert_allclose(grad_a, grad_b, rtol=1e-5, atol=1e-8)
    assert np.abs(np.asarray(grad_a)[MASK > 0]).max() > 0  # the policy tokens do get a gradient
