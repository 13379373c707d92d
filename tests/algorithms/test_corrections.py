"""Rollout/train mismatch corrections: TIS, IcePop, geometric-mean sequence masking."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from rlx.algorithms import CORRECTIONS, AlgorithmConfig, CorrectionInputs

CONFIG = AlgorithmConfig()


def correct(name, train, rollout, mask=None, **overrides):
    train = jnp.asarray(train, jnp.float32)
    mask = jnp.ones_like(train) if mask is None else jnp.asarray(mask, jnp.float32)
    return CORRECTIONS.get(name)(CorrectionInputs(train, jnp.asarray(rollout, jnp.float32), mask), dataclasses.replace(CONFIG, **overrides))


def test_tis_token_level_truncates_at_c():
    weights, kept, metrics = correct("tis", jnp.log(jnp.array([[1.0, 3.0, 0.5]])), jnp.zeros((1, 3)), tis_cap=2.0)
    np.testing.assert_allclose(weights, [[1.0, 2.0, 0.5]], rtol=1e-6)
    np.testing.assert_array_equal(kept, 1.0)
    assert float(metrics["training/correction_masked_frac"]) == 0.0


@pytest.mark.parametrize("cap, expected", [(2.0, 1.5), (1.0, 1.0)])
def test_tis_sequence_level_uses_the_product_ratio(cap, expected):
    train = jnp.log(jnp.array([[1.0, 3.0, 0.5, 7.0]]))  # padding (ratio 7) must not count
    weights, _, _ = correct("tis", train, jnp.zeros((1, 4)), [[1, 1, 1, 0]], tis_cap=cap, correction_level="sequence")
    np.testing.assert_allclose(weights, [[expected, expected, expected, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_tis_with_infinite_cap_and_identical_policies_changes_nothing(level):
    log_probs = jnp.array([[-0.3, -2.0, -1.1], [-0.7, -0.2, -4.0]])
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    weights, kept, _ = correct("tis", log_probs, log_probs, mask, tis_cap=np.inf, correction_level=level)
    np.testing.assert_array_equal(weights, mask)
    np.testing.assert_array_equal(kept, mask)


def test_icepop_masks_exactly_the_tokens_outside_the_band():
    rho = jnp.array([[0.4, 0.5, 1.0, 2.0, 2.5, 1.0]])
    mask = [[1, 1, 1, 1, 1, 0]]
    weights, kept, metrics = correct("icepop", jnp.log(rho), jnp.zeros((1, 6)), mask, correction_low=0.5, correction_high=2.0)
    np.testing.assert_array_equal(kept, [[0, 1, 1, 1, 0, 0]])
    np.testing.assert_allclose(weights, [[0, 0.5, 1.0, 2.0, 0, 0]], rtol=1e-6)
    assert float(metrics["training/correction_masked_frac"]) == pytest.approx(2 / 5)


def test_geo_mask_drops_whole_sequences_by_geometric_mean_ratio():
    # row 0: log-ratios [log 4, 0] -> geometric mean 2 (inside [0.5, 2]); row 1: [log 9, 0] -> 3 (outside)
    train = jnp.array([[np.log(4.0), 0.0], [np.log(9.0), 0.0]])
    weights, kept, metrics = correct("geo_mask", train, jnp.zeros((2, 2)), correction_low=0.5, correction_high=2.0001)
    np.testing.assert_array_equal(kept, [[1, 1], [0, 0]])
    np.testing.assert_array_equal(weights, kept)
    assert float(metrics["training/correction_masked_frac"]) == 0.5


def test_none_keeps_everything():
    weights, kept, _ = correct("none", [[-1.0, -9.0]], [[-5.0, -0.1]], [[1, 0]])
    np.testing.assert_array_equal(weights, 1.0)
    np.testing.assert_array_equal(kept, [[1, 0]])
