"""Loss aggregation modes and the low-variance KL estimator against hand-computed numbers."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlx.algorithms import KL_ESTIMATORS, aggregate

LOSS = jnp.array([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
MASK = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", (1 + 2 + 3) / 3),
        ("seq-mean-token-mean", (1.5 + 3.0) / 2),
        ("seq-mean-token-sum", (3.0 + 3.0) / 2),
        ("seq-mean-token-sum-norm", 6.0 / (2 * 3)),  # divided by rows * generation budget
    ],
)
def test_aggregation_by_hand(mode, expected):
    assert float(aggregate(LOSS, MASK, mode)) == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_sequence_modes_skip_rows_without_tokens(mode):
    loss = jnp.concatenate([LOSS, jnp.full((1, 3), 50.0)])
    mask = jnp.concatenate([MASK, jnp.zeros((1, 3))])  # a row dropped by a correction
    assert float(aggregate(loss, mask, mode)) == pytest.approx(float(aggregate(LOSS, MASK, mode)))


def test_sequence_mean_weighs_sequences_equally():
    """A long and a short response with the same per-token loss: token-mean favours the long one."""
    loss = jnp.array([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert float(aggregate(loss, mask, "token-mean")) == pytest.approx(9 / 5)
    assert float(aggregate(loss, mask, "seq-mean-token-mean")) == pytest.approx(3.0)


def test_low_var_kl_equals_k3_in_range_and_is_bounded():
    log_probs = jnp.array([-1.0, -1.5, 0.0])
    ref = jnp.array([-1.5, -1.0, 15.0])  # the last token: k3 = e^15 - 16, far out of range
    low_var = KL_ESTIMATORS.get("low_var_kl")(log_probs, ref)
    np.testing.assert_allclose(low_var[:2], KL_ESTIMATORS.get("k3")(log_probs, ref)[:2], rtol=1e-6)
    assert float(low_var[2]) == 10.0
