"""AReaL-style proximal log-probs: the interpolation by hand, and the learner using it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.algorithms import AlgorithmConfig, interpolated_proximal_log_probs
from rlx.learner import LearnerConfig
from tests.learner.test_learner import make_batch, make_learner


def test_interpolation_by_hand():
    behaviour = jnp.array([[-1.0, -2.0, -3.0]])
    current = jnp.array([[-0.5, -1.0, -1.0]])
    staleness = jnp.array([[0.0, 1.0, 3.0]])
    # progress 0: alpha = 1 wherever the token is stale; a fresh token (0/0) is the current policy too
    np.testing.assert_allclose(interpolated_proximal_log_probs(behaviour, current, staleness, 0.0), current)
    # progress 1: alpha = s / (s + 1) -> 0, 1/2, 3/4
    got = interpolated_proximal_log_probs(behaviour, current, staleness, 1.0)
    np.testing.assert_allclose(got, [[-1.0, -2.0 + 0.5 * 1.0, -3.0 + 0.75 * 2.0]])
    grad = jax.grad(lambda c: interpolated_proximal_log_probs(behaviour, c, staleness, 1.0).sum())(current)
    assert not np.any(grad)


def test_approximate_equals_recompute_on_a_single_minibatch():
    """With one minibatch and one epoch the estimate is the proximal policy itself: same update."""
    algorithm = AlgorithmConfig(policy_loss="decoupled_ppo")
    batch = dataclasses.replace(make_batch(behaviour_log_prob=-2.0), staleness=jnp.full((4, 3), 2.0))
    recompute = make_learner(algorithm)
    approximate = make_learner(algorithm, learner=LearnerConfig(proximal="approximate"))
    exact, estimated = recompute.update(batch), approximate.update(batch)
    assert exact["actor/grad_norm"] > 0
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/ppo_kl"):
        assert estimated[key] == pytest.approx(exact[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(jax.tree.leaves(recompute.params), jax.tree.leaves(approximate.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_approximate_needs_versions():
    learner = make_learner(learner=LearnerConfig(proximal="approximate"))
    with pytest.raises(ValueError, match="staleness"):
        learner.update(make_batch())
