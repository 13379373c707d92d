"""The engine and the continuous-batching driver against full-forward references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.learner.logprobs import response_log_probs
from rlx.rollout import Engine, Request, RolloutDriver, SamplingParams, token_log_probs
from tests.rollout.conftest import GREEDY, PAD, PROMPTS, prompt_batch


def test_greedy_tokens_equal_full_forward_argmax_with_queued_requests_and_reused_slots(greedy_reference, driver):
    requests = [Request(p, max_tokens=6, samples=2, tag=i) for i, p in enumerate(PROMPTS)]  # 8 samples, 3 slots
    completions = list(driver.stream(requests, jax.random.key(0), GREEDY))
    assert sorted((c.tag, c.sample) for c in completions) == [(i, s) for i in range(4) for s in range(2)]
    for completion in completions:
        np.testing.assert_array_equal(completion.tokens, greedy_reference(PROMPTS[completion.tag], 6))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behaviour_log_probs_equal_learner_recomputation(model, driver, temperature):
    rollout = driver.generate_groups(prompt_batch(PROMPTS), 2, jax.random.key(1), SamplingParams(temperature), max_new_tokens=7)
    generation = rollout.generation
    full = np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1)
    recomputed, _ = response_log_probs(model, jnp.asarray(full), jnp.asarray(rollout.start), rollout.prompt_tokens.shape[1], temperature)
    np.testing.assert_allclose(np.asarray(recomputed) * generation.mask, generation.log_probs * generation.mask, atol=1e-4)
    assert (generation.lengths == 7).all() and (rollout.group_ids == np.repeat(np.arange(4), 2)).all()
    assert [r.id for r in rollout.records] == [str(i) for i in range(4) for _ in range(2)]


def test_behaviour_log_probs_are_those_of_the_truncated_distribution_the_learner_ratio_corrects(model, driver):
    """With top-k/top-p the engine records log mu (truncated, renormalised); the learner recomputes the
    untruncated pi, so pi / mu < 1 exactly where the sampler cut mass, and the corrections see that ratio."""
    sampling = SamplingParams(temperature=1.0, top_p=0.9, top_k=6)
    rollout = driver.generate_groups(prompt_batch(PROMPTS), 2, jax.random.key(4), sampling, max_new_tokens=7)
    generation, prompt_len = rollout.generation, rollout.prompt_tokens.shape[1]
    full = jnp.asarray(np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1))
    logits, _ = model(full[:, :-1], start=jnp.asarray(rollout.start))
    mu = token_log_probs(logits[:, prompt_len - 1:], full[:, prompt_len:], sampling)
    real = generation.mask > 0
    np.testing.assert_allclose(np.asarray(mu)[real], generation.log_probs[real], atol=1e-4)
    pi, _ = response_log_probs(model, full, jnp.asarray(rollout.start), prompt_len, sampling.temperature)
    log_ratio = np.asarray(pi)[real] - generation.log_probs[real]
    assert (log_ratio <= 1e-5).all() and (log_ratio < -1e-2).mean() > 0.5


def test_reused_slot_never_sees_its_previous_request(make_engine, greedy_reference):
    engine = make_engine(slots=1)
    params = engine.load_params()
    state = engine.decode_state(jax.random.key(0))
    state = engine.insert(engine.prefill_batch(params, [PROMPTS[1]]), state, slot=0)
    for _ in range(3):
        state, _ = engine.generate(params, state, GREEDY)
    state = engine.insert(engine.prefill_batch(params, [PROMPTS[3]]), state, slot=0)
    bucket = engine.buckets[0]
    assert np.asarray(state.cache.k[:, 0, bucket:]).any()  # the previous request's decode columns are still there ...
    tokens = []
    for _ in range(3):
        state, result = engine.generate(params, state, GREEDY)
        tokens.extend(result.convert_to_numpy().tokens[0])
    np.testing.assert_array_equal(tokens, greedy_reference(PROMPTS[3], 6))  # ... and never seen
    engine.release(state)


def test_stop_token_ends_the_sample_inside_the_mask(make_engine, driver):
    first = list(driver.stream([Request(PROMPTS[0], 1)], jax.random.key(0), GREEDY))
    eos = int(first[0].tokens[0])  # the greedy first token, declared a stop token
    driver = RolloutDriver(make_engine(stop=(eos,)), driver.params)
    rollout = driver.generate_groups(prompt_batch(PROMPTS[:1]), 1, jax.random.key(0), GREEDY, max_new_tokens=5)
    assert rollout.generation.tokens[0, 0] == eos and rollout.generation.lengths[0] == 1
    assert (rollout.generation.mask[0, 1:] == 0).all() and (rollout.generation.tokens[0, 1:] == PAD).all()
    assert (rollout.policy_version[0, 1:] == -1).all() and rollout.policy_version[0, 0] == 0


def test_finished_samples_stream_out_before_the_longest_is_done(driver):
    lengths = {0: 8, 1: 2, 2: 3}
    order = [c.tag for c in driver.stream([Request(PROMPTS[i], n, tag=i) for i, n in lengths.items()], jax.random.key(0))]
    assert order == [1, 2, 0]


def test_static_batching_waits_for_the_whole_batch(driver):
    requests = [Request(PROMPTS[i], n, tag=i) for i, n in enumerate([8, 2, 3, 2])]
    continuous = [c.tag for c in driver.stream(requests, jax.random.key(0))]
    static = [c.tag for c in driver.stream(requests, jax.random.key(0), refill=False)]
    # Request 3 took request 1's slot while 0 still ran (and may end in the same call as request 2).
    assert continuous[0] == 1 and sorted(continuous[1:3]) == [2, 3] and continuous[3] == 0
    assert static == [1, 2, 0, 3]  # request 3 waited for the whole first batch


def test_keys_give_different_samples_and_repeat(driver):
    def sample(seed):
        return [c.tokens for c in driver.stream([Request(PROMPTS[1], 8, samples=3)], jax.random.key(seed))]
    np.testing.assert_array_equal(sample(1), sample(1))
    assert not np.array_equal(sample(1), sample(2))
    assert len({tuple(t) for t in sample(1)}) > 1  # samples of one prompt differ


def test_weights_swap_without_recompiling_and_tokens_carry_their_version(make_engine):
    engine = make_engine()
    driver = RolloutDriver(engine, engine.load_params())
    requests = [Request(PROMPTS[0], 2, tag="short"), Request(PROMPTS[1], 8, tag="long")]
    list(driver.stream(requests, jax.random.key(0)))  # compiles every program these requests use
    compiled = engine.compiled_variants()
    new_params = jax.tree.map(lambda x: x * 1.01, engine.load_params())
    stream = driver.stream(requests, jax.random.key(0))
    assert next(stream).tag == "short"
    driver.update_weights(new_params, version=7)  # mid-rollout: later tokens of "long" come from version 7
    long = next(stream)
    assert long.versions[0] == 0 and long.versions[-1] == 7 and set(long.versions) == {0, 7}
    assert engine.compiled_variants() == compiled


def test_weights_of_another_shape_or_dtype_are_refused_naming_the_leaf(driver):
    params = driver.engine.load_params()
    wrong_dtype = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.ndim == 1 else x, params)
    with pytest.raises(ValueError, match=r"norm.*bfloat16\[32\].*float32\[32\]"):
        driver.update_weights(wrong_dtype, version=1)
    wrong_shape = jax.tree.map(lambda x: x[:-1] if x.ndim == 2 else x, params)
    with pytest.raises(ValueError, match="embed"):
        driver.update_weights(wrong_shape, version=1)


def test_prefill_compiles_once_per_bucket(model):
    graphdef, params = nnx.split(model)
    engine = Engine(graphdef, params, model.config, max_concurrent_decodes=1, max_prefill_length=12, max_decode_length=1, stop_tokens=())
    params = engine.load_params()
    for length in range(1, 13):
        engine.prefill_batch(params, [np.ones(length, np.int32)])
    assert engine.buckets == (8, 12) and engine._prefill._cache_size() == 2


def test_long_and_empty_prompts(make_engine):
    engine = make_engine(max_prefill=4)
    long = Request(np.arange(1, 7, dtype=np.int32), 2, tag="long")
    with pytest.raises(ValueError, match="6 tokens, more than rollout.max_prefill_length=4.*long_prompt=truncate"):
        list(RolloutDriver(engine, engine.load_params()).stream([long], jax.random.key(0)))
    truncating = RolloutDriver(engine, engine.load_params(), long_prompt="truncate")
    (completion,) = truncating.stream([long], jax.random.key(0))
    assert completion.truncated_prompt and list(completion.prompt) == [3, 4, 5, 6] and truncating.truncated_prompts == 1
    with pytest.raises(ValueError, match="empty prompt"):
        list(truncating.stream([Request(np.array([], np.int32), 2)], jax.random.key(0)))


def test_interrupted_rollout_continues_under_new_weights_and_stamps_their_version(make_engine):
    """A weight swap between generate calls: tokens before it match an uninterrupted run, tokens
    after it carry the new version, and nothing recompiles."""
    engine = make_engine()
    requests = [Request(p, max_tokens=8, samples=2, tag=i) for i, p in enumerate(PROMPTS)]
    key = jax.random.key(5)
    plain = RolloutDriver(engine, engine.load_params(), version=0)
    reference = {(c.tag, c.sample): c for c in plain.stream(requests, key, GREEDY)}
    compiled = engine.compiled_variants()

    other = jax.tree.map(lambda x: x * 1.5, engine.load_params())
    calls = []

    def source():
        calls.append(None)
        return (other, 1) if len(calls) == 3 else None  # publishes once, after two generate calls

    driver = RolloutDriver(engine, engine.load_params(), version=0)
    driver.weight_source = source
    completions = list(driver.stream(requests, key, GREEDY))
    assert driver.mid_batch_swaps == 1 and driver.version == 1
    assert engine.compiled_variants() == compiled
    mixed = 0
    for completion in completions:
        versions = completion.versions
        assert (np.diff(versions) >= 0).all() and set(versions) <= {0, 1}
        old = versions == 0
        expected = reference[(completion.tag, completion.sample)]
        np.testing.assert_array_equal(completion.tokens[old], expected.tokens[: old.sum()])
        np.testing.assert_allclose(completion.log_probs[old], expected.log_probs[: old.sum()], rtol=1e-5)
        if (~old).any() and old.sum() < len(expected.log_probs):
            # The call after the swap samples its first token from logits the old weights computed:
            # that token is stamped 0, so the first token stamped 1 comes from the new weights.
            assert not np.isclose(completion.log_probs[old.sum()], expected.log_probs[old.sum()], rtol=1e-5)
        mixed += bool(old.any() and (~old).any())
    assert mixed > 0


def test_recompute_cache_continues_exactly_as_the_new_weights_would_from_the_prefix(make_engine, greedy_reference):
    """After a swap with `recompute_cache`, each sequence goes on as a fresh greedy run of the new
    weights from prompt + tokens so far; `keep_cache` does not; nothing recompiles after warm-up."""
    engine = make_engine()
    requests = [Request(p, max_tokens=8, tag=i) for i, p in enumerate(PROMPTS)]
    other = jax.tree.map(lambda x: x * 1.5, engine.load_params())

    def run(interrupt):
        calls = []
        driver = RolloutDriver(engine, engine.load_params(), interrupt=interrupt)
        driver.weight_source = lambda: calls.append(None) or ((other, 1) if len(calls) == 3 else None)
        return {c.tag: c for c in driver.stream(requests, jax.random.key(5), GREEDY)}

    run("recompute_cache")  # warm-up: compiles the recompute program once
    programs = engine.compiled_variants
    compiled = programs()
    recomputed, kept = run("recompute_cache"), run("keep_cache")
    assert programs() == compiled
    mixed = 0
    for tag, completion in recomputed.items():
        new = completion.versions == 1
        assert (np.diff(completion.versions) >= 0).all()
        prefix = np.concatenate([PROMPTS[tag], completion.tokens[~new]])
        np.testing.assert_array_equal(completion.tokens[new], greedy_reference(prefix, int(new.sum()), other))
        mixed += bool(new.any() and (~new).any())
    assert mixed > 0
    assert any(not np.array_equal(recomputed[tag].tokens, kept[tag].tokens) for tag in recomputed)


def test_a_call_ends_early_once_end_after_decoding_slots_are_done(make_engine, greedy_reference):
    """Slot 0 emits its stop token at the call's first forward: with end_after=1 the call ends there (one forward run,
    later columns invalid on every slot); with end_after=0 (or more slots than end) all its forwards run."""
    stop = int(greedy_reference(PROMPTS[0], 1)[0])
    engine = make_engine(stop=(stop,))
    params = engine.load_params()
    ran = {}
    for end_after in (0, 1, 2):
        state = engine.decode_state(jax.random.key(0))
        state = engine.insert_rows(engine.prefill_batch(params, [PROMPTS[0], PROMPTS[1]]), state, rows=[0, 1], slots=[0, 1])
        state, result = engine.generate(params, state, GREEDY, end_after=end_after)
        result = result.convert_to_numpy()
        ran[end_after] = int(result.forwards[0])
        assert result.valid[0].tolist() == [True, False] and result.columns_run == ran[end_after]
        assert result.valid[1, : ran[end_after]].all() and not result.valid[1, ran[end_after]:].any()
        engine.release(state)
    assert ran == {0: 2, 1: 1, 2: 2}
