"""Lossless speculative decoding: the verify step keeps the target distribution (chi-square), and the engine's
drafted samples are distributed as the model's own, with the model's log-probs recorded, through the driver too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.config import ConfigError, load_config
from rlx.learner.logprobs import response_log_probs
from rlx.models import ModelConfig, Qwen3
from rlx.models.mtp_config import MTPConfig
from rlx.rollout import Engine, RolloutDriver, SamplingParams
from rlx.rollout.speculative import lossless_verify
from tests.conftest import tiny_overrides
from tests.rollout.conftest import PAD, prompt_batch

CHI2_999 = {4: 18.47, 15: 37.70}  # 0.999 quantiles of chi-square by degrees of freedom


def chi_square(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sum((observed - expected) ** 2 / expected))


def test_verify_draws_the_target_distribution_whatever_the_draft():
    rows = 4000
    target = jnp.log(jnp.array([0.1, 0.4, 0.2, 0.25, 0.05]))
    draft = jnp.log(jnp.array([0.3, 0.1, 0.3, 0.1, 0.2]))
    draft_key, verify_key = jax.random.split(jax.random.key(0))
    drafts = jax.random.categorical(draft_key, draft, shape=(rows,)).astype(jnp.int32)
    kept, tokens, log_probs = lossless_verify(verify_key, jnp.tile(target, (rows, 1)), jnp.tile(draft, (rows, 1)), drafts)
    observed = np.bincount(np.asarray(tokens), minlength=5)
    assert chi_square(observed, rows * np.exp(np.asarray(target))) < CHI2_999[4], observed
    np.testing.assert_allclose(log_probs, target[tokens], rtol=1e-6)
    expected_kept = float(jnp.sum(jnp.minimum(jnp.exp(target), jnp.exp(draft))))  # sum_v min(p, q)
    assert abs(float(jnp.mean(kept)) - expected_kept) < 0.04
    assert bool(jnp.all(jnp.where(kept, tokens == drafts, True)))


VOCAB = 4
PROMPT = [1, 2, 3]


@pytest.fixture(scope="module")
def spec_engine():
    """A tiny model with MTP heads over 4 tokens; the tied embedding scaled up so the target and draft distributions
    are far from uniform and from each other (drafts are both kept and rejected)."""
    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                         max_seq_len=16, mtp=MTPConfig(enabled=True, confidence_width=8))
    model = Qwen3(config, rngs=nnx.Rngs(5))
    model.embed[...] = model.embed[...] * 10.0
    graphdef, params = nnx.split(model)
    engine = Engine(graphdef, params, config, max_concurrent_decodes=256, max_prefill_length=8, max_decode_length=8, stop_tokens=(),
                    pad_id=PAD, steps_per_generate=2, speculative=True)
    return engine, model


def test_engine_samples_are_the_models_distribution_with_its_log_probs(spec_engine):
    engine, model = spec_engine
    slots = engine.max_concurrent_decodes
    params = engine.load_params()
    state = engine.insert_rows(engine.prefill_batch(params, [np.array(PROMPT, np.int32)]), engine.decode_state(jax.random.key(3)),
                               rows=[0] * slots, slots=list(range(slots)))
    _, result = engine.generate(params, state, SamplingParams(1.0))
    result = result.convert_to_numpy()
    tokens, valid, log_probs = result.tokens, result.valid, result.log_probs
    assert result.drafts and valid[:, 0].all() and valid[:, 2].all()  # every forward emits its token
    first_two = np.argsort(~valid, axis=1, kind="stable")[:, :2]  # each slot's first two emitted tokens: x, then the kept draft or the next x
    pairs = np.take_along_axis(tokens, first_two, axis=1)
    recorded = np.take_along_axis(log_probs, first_two, axis=1)
    kept = valid[:, 1].mean()
    assert 0.1 < kept < 0.9, kept

    # The exact joint of the first two tokens, by full forwards of the prompt and each first token.
    ids = jnp.asarray([PROMPT + [t] for t in range(VOCAB)], jnp.int32)
    logits, _ = model(ids)
    first = jax.nn.log_softmax(logits[0, -2])
    second = jax.nn.log_softmax(logits[:, -1], axis=-1)  # [first token, second token]
    joint = np.exp(np.asarray(first)[:, None] + np.asarray(second))
    observed = np.zeros((VOCAB, VOCAB))
    np.add.at(observed, (pairs[:, 0], pairs[:, 1]), 1)
    assert chi_square(observed.ravel(), slots * joint.ravel()) < CHI2_999[15], (observed, slots * joint)
    np.testing.assert_allclose(recorded[:, 0], np.asarray(first)[pairs[:, 0]], atol=1e-4)
    np.testing.assert_allclose(recorded[:, 1], np.asarray(second)[pairs[:, 0], pairs[:, 1]], atol=1e-4)


def test_driver_keeps_rejected_drafts_from_ending_samples_and_reports_acceptance(spec_engine):
    engine, model = spec_engine
    driver = RolloutDriver(engine, engine.load_params())
    prompts = [np.array(p, np.int32) for p in ([1, 2, 3], [3, 3], [0, 1, 2, 3, 2])]
    rollout = driver.generate_groups(prompt_batch(prompts), 4, jax.random.key(1), SamplingParams(1.0), max_new_tokens=7)
    generation = rollout.generation
    assert (generation.lengths == 7).all()
    full = np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1)
    recomputed, _ = response_log_probs(model, jnp.asarray(full), jnp.asarray(rollout.start), rollout.prompt_tokens.shape[1], 1.0)
    np.testing.assert_allclose(np.asarray(recomputed), generation.log_probs, atol=1e-4)
    rate = rollout.metrics["spec/accept_rate"]
    assert 0.0 < rate < 1.0 and rollout.metrics["spec/tokens_per_forward"] == pytest.approx(1.0 + rate)


@pytest.mark.parametrize("overrides, match", [
    (["rollout.speculative=lossless"], "model.mtp.enabled"),
    (["rollout.speculative=lossless", "model.mtp.enabled=true", "rollout.top_k=5"], "top_k: 0"),
    (["rollout.speculative=lossless", "model.mtp.enabled=true", "rollout.temperature=0"], "temperature > 0"),
])
def test_config_refuses_speculation_it_cannot_make_lossless(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*tiny_overrides(tmp_path), *overrides])


def test_engine_refuses_to_speculate_without_heads():
    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                         max_seq_len=16)
    abstract = nnx.split(nnx.eval_shape(lambda: Qwen3(config, rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match="model.mtp.enabled"):
        Engine(*abstract, config, max_concurrent_decodes=2, max_prefill_length=8, max_decode_length=8, stop_tokens=(), speculative=True)


def test_the_speculative_demo_config_loads():
    config = load_config("configs/demo_spec.yaml")
    assert config.model.mtp.enabled and config.rollout.speculative == "lossless"


def test_partial_rollouts_carry_drafted_samples_across_steps(spec_engine):
    """With a token budget, unfinished samples keep their slots (and their draft context) into the next step."""
    engine, model = spec_engine
    driver = RolloutDriver(engine, engine.load_params(), token_budget=8)
    prompts = prompt_batch([np.array(p, np.int32) for p in ([1, 2, 3], [3, 3])])
    for step in range(2):
        rollout = driver.generate_groups(prompts, 2, jax.random.key(step), SamplingParams(1.0), max_new_tokens=7)
        generation = rollout.generation
        full = np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1)
        recomputed, _ = response_log_probs(model, jnp.asarray(full), jnp.asarray(rollout.start), rollout.prompt_tokens.shape[1], 1.0)
        np.testing.assert_allclose(np.asarray(recomputed) * generation.mask, generation.log_probs * generation.mask, atol=1e-4)
        assert (generation.lengths == 7).all() and "spec/tokens_per_forward" in rollout.metrics
