"""The fused drafting step (unembedding + Gumbel-max sampling + log-prob over vocabulary blocks): chunked and
Pallas (TPU and GPU kernels, interpreted) against the materializing reference, and that its draws follow
softmax(z / T); the residual draw likewise, its draws following max(0, p - q) normalised, and p where p == q.
N and V are not multiples of the blocks: the last row block and vocabulary block are partial."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import draft_tokens
from pallas_kernels.mtp_draft import reference_draft_tokens, reference_residual_tokens, residual_tokens

BLOCKS = {"chunked": dict(block_v=128), "pallas_interpret": dict(block_n=8, block_v=128),
          "pallas_gpu_interpret": dict(block_n=16, block_v=64)}
# (N, D, V, temperature): D = 24 is one partial GPU hidden block; V = 90 is smaller than one TPU block.
CASES = [(13, 24, 300, 1.0), (5, 16, 90, 0.6)]


def _inputs(n, d, v, seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((n, d), np.float32))
    w = jnp.asarray(rng.standard_normal((d, v), np.float32) * (2.0 / np.sqrt(d)))
    seeds = jnp.asarray(rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32))
    return h, w, seeds


@pytest.mark.parametrize("impl, case", [("chunked", CASES[0]), ("pallas_interpret", CASES[0]), ("pallas_interpret", CASES[1]),
                                        ("pallas_gpu_interpret", CASES[0]), ("pallas_gpu_interpret", CASES[1])])
def test_each_implementation_draws_the_references_token_and_log_prob(impl, case):
    n, d, v, temperature = case
    h, w, seeds = _inputs(n, d, v)
    expected_tokens, expected_logp = reference_draft_tokens(h, w, seeds, temperature)
    tokens, logp = jax.jit(lambda h, w, s: draft_tokens(h, w, s, temperature, impl=impl, **BLOCKS[impl]))(h, w, seeds)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logp, expected_logp, rtol=1e-5, atol=1e-5)
    full = jax.nn.log_softmax(h @ w / temperature, axis=-1)
    np.testing.assert_allclose(logp, full[jnp.arange(n), tokens], rtol=1e-5, atol=1e-5)


def test_draws_follow_the_softmax():
    """Many rows of one distribution, each with its own seed: token frequencies match softmax(z / T) (chi-square;
    the other implementations draw the reference's tokens)."""
    rows, vocab, temperature = 4000, 6, 0.8
    h = jnp.ones((rows, 1))
    w = jnp.asarray([[0.3, -1.0, 1.2, 0.0, 0.7, -0.4]])
    seeds = jax.random.bits(jax.random.key(7), (rows,), jnp.uint32)
    tokens, _ = draft_tokens(h, w, seeds, temperature, impl="reference")
    observed = np.bincount(np.asarray(tokens), minlength=vocab)
    expected = rows * np.asarray(jax.nn.softmax(w[0] / temperature))
    chi_square = float(np.sum((observed - expected) ** 2 / expected))
    assert chi_square < 20.5, (observed, expected)  # the 0.999 quantile at 5 degrees of freedom


def test_other_seeds_draw_other_tokens_and_the_same_seeds_the_same():
    h, w, seeds = _inputs(64, 16, 50)
    first, _ = draft_tokens(h, w, seeds, impl="reference")
    again, _ = draft_tokens(h, w, seeds, impl="reference")
    other, _ = draft_tokens(h, w, seeds + 1, impl="reference")
    np.testing.assert_array_equal(first, again)
    assert np.mean(np.asarray(first) != np.asarray(other)) > 0.3


def _target(n, v):
    return jax.nn.log_softmax(jnp.asarray(np.random.default_rng(1).standard_normal((n, v), np.float32)) * 1.5, axis=-1)


@pytest.mark.parametrize("impl, case", [("chunked", CASES[0]), ("pallas_interpret", CASES[0]), ("pallas_interpret", CASES[1]),
                                        ("pallas_gpu_interpret", CASES[0]), ("pallas_gpu_interpret", CASES[1])])
def test_each_implementation_draws_the_references_residual_token(impl, case):
    n, d, v, temperature = case
    h, w, seeds = _inputs(n, d, v)
    target = _target(n, v)
    expected = reference_residual_tokens(target, h, w, seeds, temperature)
    tokens = jax.jit(lambda t, h, w, s: residual_tokens(t, h, w, s, temperature, impl=impl, **BLOCKS[impl]))(target, h, w, seeds)
    np.testing.assert_array_equal(tokens, expected)
    residual = np.asarray(jnp.exp(target) - jax.nn.softmax(h @ w / temperature, axis=-1))
    assert np.all(residual[np.arange(n), np.asarray(tokens)] > 0)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_residual_draws_follow_the_normalised_residual(impl):
    """Many rows of one (p, q) pair, each with its own seed: token frequencies match max(0, p - q) / its sum
    (chi-square over the tokens with residual mass; the others are never drawn)."""
    rows, temperature = 4000, 0.8
    w = jnp.asarray([[0.3, -1.0, 1.2, 0.0, 0.7, -0.4]])
    target = jnp.log(jnp.asarray([0.05, 0.3, 0.1, 0.25, 0.2, 0.1]))
    seeds = jax.random.bits(jax.random.key(3), (rows,), jnp.uint32)
    tokens = residual_tokens(jnp.tile(target, (rows, 1)), jnp.ones((rows, 1)), w, seeds, temperature, impl=impl, block_v=4)
    residual = np.maximum(np.exp(np.asarray(target)) - np.asarray(jax.nn.softmax(w[0] / temperature)), 0.0)
    observed = np.bincount(np.asarray(tokens), minlength=6)
    assert np.all(observed[residual == 0] == 0), (observed, residual)
    expected = rows * residual[residual > 0] / residual.sum()
    chi_square = float(np.sum((observed[residual > 0] - expected) ** 2 / expected))
    assert chi_square < 13.82, (observed, expected)  # the 0.999 quantile at 2 degrees of freedom (3 tokens with mass)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_an_empty_residual_draws_from_the_target(impl):
    """p == q (both uniform, the same bits) leaves no residual: the draw is p's Gumbel-max with the same seeds."""
    rows, vocab = 2000, 5
    target = jnp.full((rows, vocab), -jnp.log(jnp.float32(vocab)))
    seeds = jax.random.bits(jax.random.key(4), (rows,), jnp.uint32)
    tokens = residual_tokens(target, jnp.ones((rows, 1)), jnp.zeros((1, vocab)), seeds, impl=impl)
    expected, _ = draft_tokens(jnp.ones((rows, 1)), jnp.zeros((1, vocab)), seeds, impl="reference")
    np.testing.assert_array_equal(tokens, expected)
    observed = np.bincount(np.asarray(tokens), minlength=vocab)
    assert float(np.sum((observed - rows / vocab) ** 2 / (rows / vocab))) < 18.47, observed  # 0.999 quantile, 4 d.o.f.


@pytest.mark.parametrize("bad, match", [
    (dict(seeds=jnp.zeros(3, jnp.int32)), "seeds must be integers"),
    (dict(seeds=jnp.zeros(4, jnp.float32)), "seeds must be integers"),
    (dict(temperature=0.0), "temperature"),
    (dict(impl="fast"), "unknown impl"),
])
def test_bad_inputs_are_refused(bad, match):
    args = dict(h=jnp.zeros((4, 8)), w=jnp.zeros((8, 10)), seeds=jnp.zeros(4, jnp.int32), temperature=1.0)
    impl = bad.pop("impl", "reference")
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        draft_tokens(**args, impl=impl)
