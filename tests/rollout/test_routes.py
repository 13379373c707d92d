"""Rollout routing replay (R3), the recording side: the engine records the experts every prompt and generated
token went to, the driver ships them per row, aligned with the learner's tokens, through partial and interrupted rollouts."""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.models import ModelConfig, Qwen3
from rlx.rollout import Engine, RolloutConfig, RolloutDriver, SamplingParams, build_engine
from tests.rollout.conftest import PAD, PROMPTS, TOKENIZER, prompt_batch

# Two MoE layers around a dense one: two scanned MoE stacks whose routes interleave in layer order.
CONFIG = ModelConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_seq_len=24, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16, mlp_only_layers=(1,))
SAMPLE = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def moe():
    return nnx.split(Qwen3(CONFIG, rngs=nnx.Rngs(5)))


def make_engine(moe, record=True, stop=()):
    graphdef, params = moe
    return Engine(graphdef, params, CONFIG, max_concurrent_decodes=3, max_prefill_length=8, max_decode_length=8, stop_tokens=stop,
                  pad_id=PAD, steps_per_generate=2, tokenizer=TOKENIZER, record_routes=record)


@pytest.fixture(scope="module")
def engine(moe):
    return make_engine(moe, stop=(5,))  # a stop token: responses of different lengths, slots reused mid-run


def full_forward_routes(graphdef, params, rollout):
    """The routes a full (cache-free) forward computes for the rollout's tokens: [B, P + R, moe_layers, k]."""
    tokens = jnp.asarray(np.concatenate([rollout.prompt_tokens, rollout.generation.tokens], axis=1))
    return np.asarray(_own_routes(graphdef, params, tokens, jnp.asarray(rollout.start)))


@partial(jax.jit, static_argnums=0)
def _own_routes(graphdef, params, tokens, start):
    return nnx.merge(graphdef, params).hidden_states_and_routes(tokens, start=start)[2]


def real_columns(rollout):
    """[B, P + R] True on the prompt's and response's real tokens."""
    prompt_width = rollout.prompt_tokens.shape[1]
    columns = np.arange(prompt_width + rollout.generation.tokens.shape[1])[None, :]
    return (columns >= rollout.start[:, None]) & (columns < prompt_width + rollout.generation.lengths[:, None])


def test_recorded_routes_equal_a_full_forward_under_the_same_weights(moe, engine):
    driver = RolloutDriver(engine, engine.load_params())
    rollout = driver.generate_groups(prompt_batch(PROMPTS), 2, jax.random.key(1), SAMPLE, max_new_tokens=7)
    rows, width = rollout.generation.tokens.shape[0], rollout.prompt_tokens.shape[1] + 7
    assert rollout.routes.shape == (rows, width, CONFIG.moe_layers, 2) == (8, width, 2, 2) and rollout.routes.dtype == np.int32
    assert len(set(rollout.generation.lengths)) > 1  # samples finished at different steps and slots were reused
    real = real_columns(rollout)
    np.testing.assert_array_equal(rollout.routes[real], full_forward_routes(moe[0], engine.load_params(), rollout)[real])
    assert (rollout.routes[~real] == -1).all()  # padding: nothing recorded, nothing to replay


def test_engine_records_nothing_unless_asked(moe):
    driver = RolloutDriver(make_engine(moe, record=False), moe[1])
    rollout = driver.generate_groups(prompt_batch(PROMPTS[:1]), 2, jax.random.key(0), SAMPLE, max_new_tokens=3)
    assert rollout.routes is None
    dense = dataclasses.replace(CONFIG, num_experts=0)
    with pytest.raises(ValueError, match="this model has none"):
        Engine(*nnx.split(Qwen3(dense, rngs=nnx.Rngs(0))), dense, max_concurrent_decodes=1, max_prefill_length=8,
               max_decode_length=8, stop_tokens=(), record_routes=True)


def test_partial_and_interrupted_rollouts_keep_each_tokens_routes(moe, engine):
    """A token budget carries samples over weight swaps that recompute their caches: every token (and the prompt,
    prefilled with its first token's weights) keeps the routes of the version that sampled it, which over a cache
    rebuilt by that version are a full forward's under it; also across a resume (a fresh driver taking up the carried
    work before step 3). One sample per prompt: no prefill waits across a swap."""
    graphdef, params = moe
    versions = {v: engine.publish(jax.tree.map(lambda x: x * (1 + 0.2 * v), params)) for v in range(6)}
    batches = (prompt_batch(PROMPTS[i % 4:i % 4 + 1]) for i in range(100))

    def budgeted(version):
        driver = RolloutDriver(engine, versions[version], version=version, token_budget=4, interrupt="recompute_cache")
        driver.partial.draw = lambda: next(batches)
        return driver

    driver, carried, mixed = budgeted(0), 0, 0
    for step in range(1, 6):
        if step == 3:
            work = driver.partial.snapshot()
            assert work.in_flight
            driver = budgeted(2)
            driver.partial.resume(work)
        rollout = driver.generate_groups(next(batches), 1, jax.random.key(step), SAMPLE, 8)
        driver.update_weights(versions[step], version=step)
        carried += rollout.metrics["rollout/carried_over_samples"]
        real, prompt_width = real_columns(rollout), rollout.prompt_tokens.shape[1]
        token_version = np.concatenate([np.repeat(rollout.policy_version[:, :1], prompt_width, axis=1), rollout.policy_version], axis=1)
        for version in np.unique(rollout.policy_version[rollout.policy_version >= 0]):
            here = real & (token_version == version)
            np.testing.assert_array_equal(rollout.routes[here], full_forward_routes(graphdef, versions[version], rollout)[here])
        assert (rollout.routes[~real] == -1).all()
        mixed += sum(len(set(row[row >= 0])) > 1 for row in rollout.policy_version)
    assert carried > 0 and mixed > 0  # samples did carry over and hold tokens of several versions


def test_rollout_dtype_makes_a_bfloat16_generator_for_a_float32_model(moe):
    graphdef, params = moe
    config = RolloutConfig(max_new_tokens=4, max_concurrent_decodes=2, dtype="bfloat16")
    engine = build_engine(graphdef, params, CONFIG, config, 8, eos_id=0, pad_id=PAD, record_routes=True)
    assert engine.model_config.dtype == "bfloat16" and CONFIG.dtype == "float32"
    assert {leaf.dtype for leaf in jax.tree.leaves(engine.load_params())} == {jnp.dtype(jnp.bfloat16)}
    assert engine.decode_state().cache.k.dtype == jnp.uint16  # bf16 cache words
    rollout = RolloutDriver(engine, engine.load_params()).generate_groups(prompt_batch(PROMPTS[:2]), 2, jax.random.key(0), SAMPLE, 4)
    assert (rollout.routes[real_columns(rollout)] >= 0).all()
