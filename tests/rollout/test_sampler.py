import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.learner.logprobs import response_log_probs
from rlx.models import ModelConfig, Qwen3
from rlx.rollout import Sampler, sample_tokens, top_p_keep

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def model() -> Qwen3:
    config = ModelConfig(vocab_size=19, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    return Qwen3(config, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def prompts():
    tokens = np.array([[0, 0, 1, 7, 8, 9], [1, 5, 6, 7, 8, 9], [0, 0, 0, 1, 4, 4]], np.int32)
    return tokens, np.array([2, 0, 3], np.int32)


def greedy_by_full_forward(model, tokens, start, steps):
    """Reference: append argmax of a full (cache-free) forward pass, one token at a time."""
    sequence = jnp.asarray(tokens)
    for _ in range(steps):
        logits, _ = model(sequence, start=jnp.asarray(start))
        sequence = jnp.concatenate([sequence, jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)], axis=1)
    return np.asarray(sequence[:, tokens.shape[1]:])


def test_greedy_tokens_equal_full_forward_argmax(model, prompts):
    tokens, start = prompts
    graphdef, params = nnx.split(model)
    sampler = Sampler(graphdef, eos_id=-1, pad_id=PAD, max_new_tokens=6)  # no EOS: compare every step
    out = sampler.generate(params, tokens, start, jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(out.tokens, greedy_by_full_forward(model, tokens, start, 6))
    assert out.mask.sum() == 18 and (out.lengths == 6).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_log_probs_equal_learner_recomputation(model, prompts, temperature):
    tokens, start = prompts
    graphdef, params = nnx.split(model)
    sampler = Sampler(graphdef, eos_id=EOS, pad_id=PAD, max_new_tokens=8)
    out = sampler.generate(params, tokens, start, jax.random.key(1), temperature=temperature)
    full = np.concatenate([tokens, out.tokens], axis=1)
    recomputed, _ = response_log_probs(model, jnp.asarray(full), jnp.asarray(start), tokens.shape[1], temperature)
    np.testing.assert_allclose(np.asarray(recomputed) * out.mask, out.log_probs * out.mask, atol=1e-5)


def test_eos_is_inside_the_mask_and_padding_after_it(model, prompts):
    tokens, start = prompts
    graphdef, params = nnx.split(model)
    # Make EOS the most likely token everywhere by treating the argmax of step 0 as "EOS".
    first = Sampler(graphdef, eos_id=-1, pad_id=PAD, max_new_tokens=1).generate(params, tokens, start, jax.random.key(0), 0.0)
    eos = int(first.tokens[0, 0])
    out = Sampler(graphdef, eos_id=eos, pad_id=PAD, max_new_tokens=5).generate(params, tokens, start, jax.random.key(0), 0.0)
    assert out.tokens[0, 0] == eos and out.mask[0, 0] == 1.0 and out.lengths[0] == 1
    assert (out.mask[0, 1:] == 0).all() and (out.tokens[0, 1:] == PAD).all()


def test_different_keys_give_different_samples_and_same_key_repeats(model, prompts):
    tokens, start = prompts
    graphdef, params = nnx.split(model)
    sampler = Sampler(graphdef, eos_id=-1, pad_id=PAD, max_new_tokens=8)
    a = sampler.generate(params, tokens, start, jax.random.key(1), 1.0).tokens
    b = sampler.generate(params, tokens, start, jax.random.key(1), 1.0).tokens
    c = sampler.generate(params, tokens, start, jax.random.key(2), 1.0).tokens
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


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
