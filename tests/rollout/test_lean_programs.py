"""Lean programs: length-bucketed decode equals dense attention, no full-width logits anywhere,
chunked in-place recompute, and a steady-state rollout step that compiles nothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rlx.rollout.engine as engine_module
from rlx.rollout import Engine, RolloutDriver, SamplingParams
from tests.rollout.conftest import GREEDY, PAD, PROMPTS, prompt_batch

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def decode(engine, columns, calls=4, sampling=SamplingParams(1.0)):
    """Tokens and log-probs of `calls` generate calls over three inserted prompts; `columns(c)` is what
    the caller tells the engine the slots hold after call c (None: read every column)."""
    params = engine.load_params()
    state = engine.decode_state(jax.random.key(2))
    prefix = engine.prefill_batch(params, PROMPTS[:3])
    state = engine.insert_rows(prefix, state, [0, 1, 2], [0, 1, 2])
    bucket, results = prefix.cache.k.shape[2], []
    for call in range(calls):
        state, result = engine.generate(params, state, sampling, columns(bucket + engine.steps_per_generate * (call + 1)))
        results.append(result.convert_to_numpy())
    engine.release(state)
    return np.concatenate([r.tokens for r in results], 1), np.concatenate([r.log_probs for r in results], 1)


def test_length_bucketed_decode_equals_dense_attention(make_engine):
    engine = make_engine()
    assert engine.kv_buckets == (8, 16, 20) and engine.kv_bucket(10) == 16 and engine.kv_bucket(None) == 20
    bucketed_tokens, bucketed = decode(engine, lambda columns: columns)  # reads 16 of 20 columns
    dense_tokens, dense = decode(engine, lambda columns: None)
    np.testing.assert_array_equal(bucketed_tokens, dense_tokens)
    np.testing.assert_allclose(bucketed, dense, atol=1e-5)
    assert engine._generate[16]._cache_size() >= 1 and engine._generate[20]._cache_size() >= 1  # both programs ran


def vocab_wide_intermediates(jaxpr, vocab: int) -> list[tuple[int, ...]]:
    """Shapes of every value `[rows, columns > 1, vocab]` a program computes, sub-programs included."""
    found = []
    for eqn in jaxpr.eqns:
        found += [tuple(v.aval.shape) for v in eqn.outvars
                  if hasattr(v.aval, "shape") and len(v.aval.shape) == 3 and v.aval.shape[1] > 1 and v.aval.shape[2] == vocab]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += vocab_wide_intermediates(inner, vocab)
    return found


def test_prefill_recompute_and_extend_never_compute_logits_for_every_column(make_engine):
    engine = make_engine()
    params, vocab, slots = engine.load_params(), engine.model_config.vocab_size, engine.max_concurrent_decodes
    tokens, start = jnp.zeros((4, 12), jnp.int32), jnp.zeros((4,), jnp.int32)
    assert not vocab_wide_intermediates(jax.make_jaxpr(engine._prefill_impl)(params, tokens, start, None).jaxpr, vocab)
    state = engine._abstract_state()
    sequences, chosen = jnp.zeros((slots, engine._chunked_width(engine.max_len)), jnp.int32), jnp.ones((slots,), bool)
    assert not vocab_wide_intermediates(jax.make_jaxpr(engine._recompute_impl)(params, state, sequences, chosen).jaxpr, vocab)
    per_slot = jnp.zeros((slots,), jnp.int32)
    assert not vocab_wide_intermediates(jax.make_jaxpr(engine._extend_impl)(params, state, sequences, per_slot, per_slot).jaxpr, vocab)
    # The detector does see full-width logits where a program computes them (teacher-forced scoring does).
    score = jax.make_jaxpr(engine._score_impl, static_argnums=(3, 4))(params, tokens, start, 4, GREEDY)
    assert vocab_wide_intermediates(score.jaxpr, vocab)


def to_host(state):
    return jax.tree.map(np.asarray, dataclasses.replace(state, key=None))


def recomputed(engine: Engine, new_params):
    """(state before, state after) a recompute of slots 0 and 2 under `new_params`, with the token rows it used."""
    params = engine.load_params()
    state = engine.decode_state(jax.random.key(0))
    state = engine.insert_rows(engine.prefill_batch(params, PROMPTS[:3]), state, [0, 1, 2], [0, 1, 2])
    generated = []
    for _ in range(3):
        state, result = engine.generate(params, state, GREEDY)
        generated.append(result.convert_to_numpy().tokens)
    generated = np.concatenate(generated, axis=1)
    before = to_host(state)
    rows = np.full((engine.max_concurrent_decodes, engine.max_len), PAD, np.int32)
    for slot, prompt in enumerate(PROMPTS[:3]):
        sequence = np.concatenate([prompt, generated[slot]])
        rows[slot, before.start[slot]:before.start[slot] + len(sequence)] = sequence
    state = engine.recompute(new_params, state, rows, np.array([0, 2]))
    after = to_host(state)
    engine.release(state)
    return before, after, rows


def test_chunked_recompute_matches_one_pass_and_leaves_other_slots_alone(model, make_engine, monkeypatch):
    whole = make_engine()
    monkeypatch.setattr(engine_module, "RECOMPUTE_COLUMNS", 8)  # 20 columns in 3 chunks
    graphdef, params = nnx.split(model)
    chunked = Engine(graphdef, params, model.config, max_concurrent_decodes=3, max_prefill_length=12, max_decode_length=8,
                     stop_tokens=(), pad_id=PAD, steps_per_generate=2)
    assert chunked._chunked_width(chunked.max_len) == 24 and whole._chunked_width(whole.max_len) == 20
    other = jax.tree.map(lambda x: x * 1.5, whole.load_params())
    before, after, rows = recomputed(chunked, other)
    _, after_whole, _ = recomputed(whole, other)
    for chosen in (0, 2):
        columns = slice(before.start[chosen], before.index[chosen])
        np.testing.assert_allclose(after.cache.k[:, chosen, columns], after_whole.cache.k[:, chosen, columns], atol=1e-5)
        assert not np.allclose(after.cache.k[:, chosen, columns], before.cache.k[:, chosen, columns], atol=1e-3)
        # Next-token logits: those of a full forward pass of the new weights over the sequence so far.
        sequence = rows[chosen:chosen + 1, :before.index[chosen]]
        reference = nnx.merge(graphdef, other)(jnp.asarray(sequence), start=jnp.asarray(before.start[chosen:chosen + 1]))[0][0, -1]
        np.testing.assert_allclose(after.logits[chosen], reference, atol=1e-4)
    np.testing.assert_array_equal(after.cache.k[:, 1], before.cache.k[:, 1])
    np.testing.assert_array_equal(after.logits[1], before.logits[1])


@pytest.mark.parametrize("sampling", [SamplingParams(1.0), SamplingParams(0.8, top_p=0.9, top_k=5)])
def test_a_steady_state_rollout_step_compiles_nothing(make_engine, sampling, no_persistent_cache):
    engine = make_engine()
    driver = RolloutDriver(engine, engine.load_params())
    batch, keys = prompt_batch(PROMPTS), [jax.random.key(i) for i in range(3)]
    warm = [driver.generate_groups(batch, 2, keys[i], sampling, 6) for i in range(2)]  # the second reuses the decode state
    compiles = []

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        steady = driver.generate_groups(batch, 2, keys[2], sampling, 6)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    assert steady.metrics["rollout/compiles"] == warm[1].metrics["rollout/compiles"] == engine.compiled_variants() > 0
