"""Token choice: greedy, temperature, top-k and top-p."""

import jax
import jax.numpy as jnp
import numpy as np

from rlx.rollout import sample_tokens, top_k_keep, top_p_keep


def test_top_p_keeps_the_smallest_nucleus():
    log_probs = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_array_equal(top_p_keep(log_probs, 0.5), [[True, False, False, False]])
    np.testing.assert_array_equal(top_p_keep(log_probs, 0.8), [[True, True, False, False]])
    np.testing.assert_array_equal(top_p_keep(log_probs, 0.81), [[True, True, True, False]])
    np.testing.assert_array_equal(top_p_keep(log_probs, 1.0), [[True, True, True, True]])


def test_top_p_never_emits_excluded_tokens():
    logits = jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1]))[None].repeat(4096, axis=0)
    tokens, _ = sample_tokens(jax.random.key(0), logits, 1.0, 0.65)
    assert set(np.unique(tokens)) == {0, 1}


def test_sampled_frequencies_match_softmax():
    probs = np.array([0.5, 0.25, 0.15, 0.1])
    logits = jnp.log(jnp.asarray(probs))[None].repeat(20000, axis=0)
    tokens, log_probs = sample_tokens(jax.random.key(7), logits, 1.0, 1.0)
    counts = np.bincount(np.asarray(tokens), minlength=4)
    chi2 = float(np.sum((counts - probs * 20000) ** 2 / (probs * 20000)))
    assert chi2 < 16.27  # p = 0.001 with 3 degrees of freedom
    np.testing.assert_allclose(np.asarray(log_probs), np.log(probs)[np.asarray(tokens)], rtol=1e-5)


def test_greedy_scores_at_temperature_one():
    logits = jnp.array([[2.0, 1.0, 0.0]])
    tokens, log_probs = sample_tokens(jax.random.key(0), logits, 0.0, 1.0)
    assert int(tokens[0]) == 0
    np.testing.assert_allclose(log_probs, jax.nn.log_softmax(logits)[:, 0], rtol=1e-6)


def test_top_k_keeps_the_k_most_likely():
    log_probs = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]]))
    np.testing.assert_array_equal(top_k_keep(log_probs, 1), [[False, True, False, False]])
    np.testing.assert_array_equal(top_k_keep(log_probs, 2), [[False, True, False, True]])
    np.testing.assert_array_equal(top_k_keep(log_probs, 0), [[True, True, True, True]])


def test_top_k_and_top_p_never_emit_excluded_tokens():
    logits = jnp.log(jnp.array([0.1, 0.4, 0.2, 0.3]))[None].repeat(4096, axis=0)
    tokens, _ = sample_tokens(jax.random.key(0), logits, 1.0, 1.0, top_k=2)
    assert set(np.unique(tokens)) == {1, 3}
    tokens, _ = sample_tokens(jax.random.key(1), logits, 1.0, 0.5, top_k=3)  # top-p is the tighter one here
    assert set(np.unique(tokens)) == {1, 3}
