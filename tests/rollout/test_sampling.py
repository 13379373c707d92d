"""Token choice (greedy, temperature, top-k, top-p) and the exactness of the recorded behaviour log-probs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlx.rollout import SamplingParams, sample_tokens, token_log_probs


def truncated_reference(probs: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """The truncated distribution by hand: top-k, then the smallest top-p nucleus of the renormalised rest."""
    order = np.argsort(-probs, kind="stable")
    kept = order[:top_k] if top_k else order
    renormalised = probs[kept] / probs[kept].sum()
    before = np.cumsum(renormalised) - renormalised
    kept = kept[before < top_p]
    mu = np.zeros_like(probs)
    mu[kept] = probs[kept] / probs[kept].sum()
    return mu


def primitives(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("top_k, top_p", [(0, 0.7), (3, 1.0), (4, 0.8), (0, 1.0)])
def test_sampled_frequencies_match_the_recorded_behaviour_log_probs(top_k, top_p):
    """Chi-square: tokens are drawn with probability exp(recorded log-prob), which is the truncated,
    renormalised distribution (not the untruncated softmax); excluded tokens never appear."""
    probs = np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05])
    draws = 40000
    sampling = SamplingParams(1.0, top_p, top_k)
    logits = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(draws, axis=0)
    tokens, log_probs = jax.jit(sample_tokens, static_argnums=2)(jax.random.key(3), logits, sampling)
    tokens, log_probs = np.asarray(tokens), np.asarray(log_probs)
    mu = truncated_reference(probs, top_k, top_p)
    recorded = np.full(len(probs), -np.inf)
    recorded[tokens] = log_probs  # one value per token: the same logits on every row
    np.testing.assert_allclose(np.exp(recorded), mu, atol=1e-6)
    kept = mu > 0
    counts = np.bincount(tokens, minlength=len(probs))
    assert (counts[~kept] == 0).all()
    expected = mu[kept] * draws
    chi2 = float(np.sum((counts[kept] - expected) ** 2 / expected))
    assert chi2 < stats.chi2.ppf(0.999, int(kept.sum()) - 1), (chi2, counts, expected)
    np.testing.assert_allclose(token_log_probs(logits[:8], jnp.asarray(tokens[:8]), sampling), log_probs[:8], rtol=1e-6)


def test_draws_across_blocks_of_a_large_vocabulary_match_the_softmax():
    """Vocabulary of 700 (three draw blocks): mass on tokens in different blocks, at block edges too."""
    vocab, draws = 700, 40000
    heavy = np.array([3, 255, 256, 300, 555, 699])
    probs = np.full(vocab, 0.04 / (vocab - len(heavy)))
    probs[heavy] = [0.3, 0.1, 0.2, 0.05, 0.15, 0.16]
    logits = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(draws, axis=0)
    tokens, log_probs = jax.jit(sample_tokens, static_argnums=2)(jax.random.key(9), logits, SamplingParams(1.0))
    tokens = np.asarray(tokens)
    np.testing.assert_allclose(np.exp(np.asarray(log_probs)), probs[tokens], rtol=1e-4)
    observed = np.append(np.bincount(tokens, minlength=vocab)[heavy], np.isin(tokens, heavy, invert=True).sum())
    expected = np.append(probs[heavy], 0.04) * draws
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < stats.chi2.ppf(0.999, len(expected) - 1), (observed, expected)


def test_truncation_and_temperature_compose():
    """log mu = log softmax(z / T) - log of the kept mass: what the learner's pi / mu ratio sees."""
    logits = jnp.array([[2.0, 1.5, 0.3, -1.0, -2.0]])
    sampling = SamplingParams(temperature=0.7, top_k=2)
    tempered = jax.nn.log_softmax(logits / 0.7)
    got = token_log_probs(logits.repeat(5, axis=0), jnp.arange(5), sampling)
    expected = tempered[0, :2] - jax.nn.logsumexp(tempered[0, :2])
    np.testing.assert_allclose(got[:2], expected, rtol=1e-6)
    assert np.isneginf(np.asarray(got[2:])).all()


def test_no_truncation_sorts_nothing_and_top_k_uses_lax_top_k():
    key, logits = jax.random.key(0), jnp.zeros((4, 32))
    plain = primitives(lambda k, x: sample_tokens(k, x, SamplingParams(1.0, 1.0, 0)), key, logits)
    assert not re.search(r"\bsort\b", plain) and "top_k" not in plain
    top_k = primitives(lambda k, x: sample_tokens(k, x, SamplingParams(1.0, 1.0, 5)), key, logits)
    assert "top_k" in top_k and not re.search(r"\bsort\b", top_k)
    top_p = primitives(lambda k, x: sample_tokens(k, x, SamplingParams(1.0, 0.9, 0)), key, logits)
    assert len(re.findall(r"\bsort\b", top_p)) == 1  # one sort of the vocabulary, not two


def test_greedy_takes_the_argmax_and_scores_at_temperature_one():
    logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    for sampling in (SamplingParams(temperature=0.0), SamplingParams(temperature=0.0, top_p=0.5, top_k=1)):
        tokens, log_probs = sample_tokens(jax.random.key(0), logits, sampling)
        np.testing.assert_array_equal(tokens, [0, 1])
        np.testing.assert_allclose(log_probs, jax.nn.log_softmax(logits)[jnp.arange(2), tokens], rtol=1e-6)


def test_top_p_keeps_the_smallest_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]])).repeat(4, axis=0)
    kept = lambda top_p: np.isfinite(np.asarray(token_log_probs(logits, jnp.arange(4), SamplingParams(1.0, top_p))))
    np.testing.assert_array_equal(kept(0.5), [True, False, False, False])
    np.testing.assert_array_equal(kept(0.8), [True, True, False, False])
    np.testing.assert_array_equal(kept(0.81), [True, True, True, False])
    np.testing.assert_array_equal(kept(1.0), [True, True, True, True])


def test_invalid_sampling_params_are_refused():
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        SamplingParams(top_k=-1)
