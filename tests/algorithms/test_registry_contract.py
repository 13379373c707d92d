"""Contract of every registered algorithm function: a docstring with a formula, the common
signature, shapes, and masked tokens left alone."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from rlx.algorithms import (
    ADVANTAGE_ESTIMATORS, CORRECTIONS, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES, AdvantageInputs, AlgorithmConfig,
    CorrectionInputs, PolicyLossInputs,
)

REGISTRIES = {
    "advantage": (ADVANTAGE_ESTIMATORS, ["inputs", "config"]),
    "policy_loss": (POLICY_LOSSES, ["inputs", "config"]),
    "correction": (CORRECTIONS, ["inputs", "config"]),
    "kl": (KL_ESTIMATORS, ["log_probs", "ref_log_probs"]),
    "aggregation": (LOSS_AGGREGATIONS, ["loss", "mask"]),
}
ENTRIES = [(kind, name) for kind, (registry, _) in REGISTRIES.items() for name in registry.names()]
B, T = 3, 4
rng = np.random.default_rng(0)
LOG_PROBS = jnp.asarray(-rng.uniform(0.1, 2.0, (B, T)), jnp.float32)
OLD = LOG_PROBS + jnp.asarray(rng.normal(0, 0.1, (B, T)), jnp.float32)
MASK = jnp.array([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("kind, name", ENTRIES)
def test_docstring_gives_a_formula(kind, name):
    doc = inspect.getdoc(REGISTRIES[kind][0].get(name)) or ""
    assert "=" in doc, f"{kind} {name!r} needs its formula in the docstring"


@pytest.mark.parametrize("kind, name", ENTRIES)
def test_common_signature(kind, name):
    registry, params = REGISTRIES[kind]
    assert list(inspect.signature(registry.get(name)).parameters) == params


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_advantage_shapes(name):
    inputs = AdvantageInputs(jnp.array([1.0, 0.0, 1.0]), jnp.array([0, 0, 1]), MASK, jnp.zeros((B, T)), jnp.zeros((B, T)))
    advantages, returns = ADVANTAGE_ESTIMATORS.get(name)(inputs, AlgorithmConfig())
    assert advantages.shape == returns.shape == (B, T)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_policy_loss_shapes_and_masking(name):
    inputs = PolicyLossInputs(LOG_PROBS, OLD, jnp.ones((B, T)), MASK, OLD - 0.05)
    loss, metrics = POLICY_LOSSES.get(name)(inputs, AlgorithmConfig(policy_loss=name))
    assert loss.shape == (B, T)
    np.testing.assert_array_equal(np.asarray(loss)[np.asarray(MASK) == 0], 0.0)
    assert all(jnp.shape(value) == () and key.startswith("actor/") for key, value in metrics.items())


@pytest.mark.parametrize("name", CORRECTIONS.names())
def test_correction_shapes_and_masking(name):
    weights, kept, metrics = CORRECTIONS.get(name)(CorrectionInputs(OLD, LOG_PROBS, MASK), AlgorithmConfig())
    assert weights.shape == kept.shape == (B, T)
    assert np.all(np.asarray(kept) <= np.asarray(MASK))
    assert {"training/correction_masked_frac", "training/correction_weight_mean"} <= set(metrics)


@pytest.mark.parametrize("name", KL_ESTIMATORS.names())
def test_kl_shapes_and_zero_at_equal_policies(name):
    assert KL_ESTIMATORS.get(name)(LOG_PROBS, OLD).shape == (B, T)
    np.testing.assert_allclose(KL_ESTIMATORS.get(name)(LOG_PROBS, LOG_PROBS), 0.0, atol=1e-7)


@pytest.mark.parametrize("name", LOSS_AGGREGATIONS.names())
def test_aggregation_is_a_scalar_blind_to_masked_tokens(name):
    noisy = LOG_PROBS + 100.0 * (1 - MASK)
    assert LOSS_AGGREGATIONS.get(name)(noisy, MASK).shape == ()
    assert float(LOSS_AGGREGATIONS.get(name)(noisy, MASK)) == pytest.approx(float(LOSS_AGGREGATIONS.get(name)(LOG_PROBS, MASK)))
