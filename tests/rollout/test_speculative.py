"""Speculative decoding. Lossless: the verify step keeps the target distribution (chi-square), and the engine's
drafted samples are distributed as the model's own, with the model's log-probs recorded, through the driver too.
Confidence (PIPO): drafts are kept exactly where the confidence head says so, every recorded log-prob is that of
the distribution its token was drawn from (q for kept drafts, p otherwise, both recomputed teacher-forced), and the
learner's off-policy correction weighs kept drafts by p / q."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pallas_kernels.mtp_draft import draft_tokens, residual_tokens
from rlx.algorithms.config import AlgorithmConfig
from rlx.algorithms.corrections import CORRECTIONS, CorrectionInputs
from rlx.config import ConfigError, load_config
from rlx.learner.logprobs import response_log_probs
from rlx.models import ModelConfig, Qwen3
from rlx.models.mtp_config import MTPConfig
from rlx.rollout import Engine, RolloutDriver, SamplingParams
from rlx.rollout.speculative import Speculation, lossless_keep
from tests.conftest import tiny_overrides
from tests.rollout.conftest import PAD, prompt_batch

CHI2_999 = {4: 18.47, 15: 37.70}  # 0.999 quantiles of chi-square by degrees of freedom


def chi_square(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sum((observed - expected) ** 2 / expected))


def test_verify_draws_the_target_distribution_whatever_the_draft():
    """Drafts from the drafting kernel, kept by `lossless_keep`, else replaced by the residual kernel's draw: p."""
    rows = 4000
    target = jnp.log(jnp.array([0.1, 0.4, 0.2, 0.25, 0.05]))
    draft = jnp.log(jnp.array([0.3, 0.1, 0.3, 0.1, 0.2]))
    draft_seeds, residual_seeds = jax.random.bits(jax.random.key(0), (2, rows), jnp.uint32)
    hidden, unembedding, targets = jnp.ones((rows, 1)), draft[None, :], jnp.tile(target, (rows, 1))
    drafts, draft_log_q = draft_tokens(hidden, unembedding, draft_seeds, impl="chunked")
    kept = lossless_keep(jax.random.uniform(jax.random.key(1), (rows,)), targets, drafts, draft_log_q)
    tokens = jnp.where(kept, drafts, residual_tokens(targets, hidden, unembedding, residual_seeds, impl="chunked"))
    observed = np.bincount(np.asarray(tokens), minlength=5)
    assert chi_square(observed, rows * np.exp(np.asarray(target))) < CHI2_999[4], observed
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
    # A confidence head that tells drafts apart (a fresh one says 0.5 for all).
    model.mtp.confidence_out[...] = jax.random.normal(jax.random.key(1), model.mtp.confidence_out.shape) * 3.0
    graphdef, params = nnx.split(model)
    engine = Engine(graphdef, params, config, max_concurrent_decodes=256, max_prefill_length=8, max_decode_length=8, stop_tokens=(),
                    pad_id=PAD, steps_per_generate=2, speculative=Speculation("lossless"))
    return engine, model


@pytest.fixture(scope="module")
def confidence_engine(spec_engine):
    """A confidence-mode engine whose threshold splits the drafts after `PROMPT`'s first token: the first draft is
    kept after some first tokens and discarded after others."""
    _, model = spec_engine
    _, _, confidence = teacher_forced(model, np.array([PROMPT + [x, 0] for x in range(VOCAB)]))
    rated = np.sort(confidence[:, len(PROMPT) - 1])
    threshold = float(rated[VOCAB // 2 - 1] + rated[VOCAB // 2]) / 2
    graphdef, params = nnx.split(model)
    return Engine(graphdef, params, model.config, max_concurrent_decodes=64, max_prefill_length=8, max_decode_length=8, stop_tokens=(),
                  pad_id=PAD, steps_per_generate=2, speculative=Speculation("confidence", threshold))


def every_slot_on_the_prompt(engine, params, seed: int):
    """A decode state whose every slot continues PROMPT (one prefill, inserted into all slots)."""
    slots = engine.max_concurrent_decodes
    return engine.insert_rows(engine.prefill_batch(params, [np.array(PROMPT, np.int32)]), engine.decode_state(jax.random.key(seed)),
                              rows=[0] * slots, slots=list(range(slots)))


def teacher_forced(model: Qwen3, sequences: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For right-padded `sequences [B, L]`: log p [B, L, V] of the token after each column, log q [B, L, V] of the MTP
    draft made at each column (of the token two columns on), and the confidence [B, L] in that draft."""
    ids = jnp.asarray(sequences, jnp.int32)
    hidden, _ = model.hidden_states(ids)
    drafted, _ = model.mtp_hidden_states(hidden[:, :-1], ids[:, 1:])
    log_p = jax.nn.log_softmax(model.logits(hidden), axis=-1)
    log_q = jax.nn.log_softmax(model.logits(drafted), axis=-1)
    return np.asarray(log_p), np.asarray(log_q), np.asarray(model.mtp.confidence(hidden[:, :-1], drafted))


def test_engine_samples_are_the_models_distribution_with_its_log_probs(spec_engine):
    engine, model = spec_engine
    slots = engine.max_concurrent_decodes
    params = engine.load_params()
    state = every_slot_on_the_prompt(engine, params, seed=3)
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
    (["rollout.speculative=confidence", "model.mtp.enabled=true"], "algorithm.correction"),
    (["rollout.speculative=confidence", "model.mtp.enabled=true", "algorithm.correction=tis", "rollout.spec_threshold=1.5"], "spec_threshold"),
])
def test_config_refuses_speculation_it_cannot_make_lossless(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*tiny_overrides(tmp_path), *overrides])


def test_engine_refuses_to_speculate_without_heads():
    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                         max_seq_len=16)
    abstract = nnx.split(nnx.eval_shape(lambda: Qwen3(config, rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match="model.mtp.enabled"):
        Engine(*abstract, config, max_concurrent_decodes=2, max_prefill_length=8, max_decode_length=8, stop_tokens=(),
               speculative=Speculation("lossless"))
    with pytest.raises(ValueError, match="threshold"):
        Speculation("confidence")


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


BUCKET = 8  # PROMPT's prefill bucket: the cache column of its first generated token


def check_confidence_call(model: Qwen3, result, before: list[list[int]], threshold: float, max_len: int) -> dict[str, int]:
    """Checks one confidence-mode generate call against the model teacher-forced over each slot's tokens `before` it
    then what it emitted: each forward's draft is kept iff the confidence head rates it >= `threshold` (and the row,
    `max_len` cache columns, has room), x records log p and a kept draft log q. Returns counts of kept and discarded
    drafts, and of kept ones whose q and p differ."""
    last_position = len(PROMPT) + max_len - BUCKET - 1  # of a token in the sequence
    result = result.convert_to_numpy()
    tokens, valid, recorded = result.tokens, result.valid, result.log_probs
    sequences = np.zeros((len(before), max(map(len, before)) + tokens.shape[1]), np.int32)
    for slot, prefix in enumerate(before):
        emitted = list(prefix) + list(tokens[slot, valid[slot]])
        sequences[slot, :len(emitted)] = emitted
    log_p, log_q, confidence = teacher_forced(model, sequences)
    checked = {"kept": 0, "not kept": 0, "q far from p": 0}
    for slot, prefix in enumerate(before):
        position = len(prefix)  # of the forward's x
        for forward in range(tokens.shape[1] // 2):
            if not valid[slot, 2 * forward]:
                break  # the row is full
            x, draft = tokens[slot, 2 * forward: 2 * forward + 2]
            kept = valid[slot, 2 * forward + 1]
            np.testing.assert_allclose(recorded[slot, 2 * forward], log_p[slot, position - 1, x], atol=1e-4)  # x: drawn from p
            rated = confidence[slot, position - 1]  # the draft of the token after x, from the hidden before x and x
            if abs(rated - threshold) > 1e-3 and position + 1 <= last_position:
                assert kept == (rated >= threshold), (slot, forward, rated)
            if kept:  # drawn from q, recorded as q
                np.testing.assert_allclose(recorded[slot, 2 * forward + 1], log_q[slot, position - 1, draft], atol=1e-4)
                checked["q far from p"] += abs(log_q[slot, position - 1, draft] - log_p[slot, position, draft]) > 0.1
            checked["kept" if kept else "not kept"] += 1
            position += 1 + kept
    return checked


def test_confidence_mode_keeps_confident_drafts_and_records_the_distribution_each_token_came_from(spec_engine, confidence_engine):
    _, model = spec_engine
    engine = confidence_engine
    slots, params, threshold = engine.max_concurrent_decodes, engine.load_params(), engine.speculative.threshold
    state = every_slot_on_the_prompt(engine, params, seed=4)
    _, result = engine.generate(params, state, SamplingParams(1.0))
    checked = check_confidence_call(model, result, [PROMPT] * slots, threshold, engine.max_len)
    assert min(checked.values()) > 5, checked  # both outcomes happen, and recording p instead of q would have failed


def test_extend_refreshes_the_mtp_cache_and_draft_context(spec_engine, confidence_engine):
    """After an observation is appended (`extend`), drafts are the MTP head's over the whole sequence, as checked
    teacher-forced; with the MTP layer's columns or the draft context left stale they would not be."""
    _, model = spec_engine
    engine = confidence_engine
    slots, params, threshold = engine.max_concurrent_decodes, engine.load_params(), engine.speculative.threshold
    state = every_slot_on_the_prompt(engine, params, seed=6)
    state, first = engine.generate(params, state, SamplingParams(1.0))
    first = first.convert_to_numpy()
    observation = [1, 2]
    emitted = [list(first.tokens[slot, first.valid[slot]]) for slot in range(slots)]
    state = engine.extend(params, state, list(range(slots)), [np.array(observation, np.int32)] * slots,
                          [BUCKET + len(tokens) for tokens in emitted])
    _, second = engine.generate(params, state, SamplingParams(1.0))
    checked = check_confidence_call(model, second, [PROMPT + tokens + observation for tokens in emitted], threshold, engine.max_len)
    assert checked["kept"] > 5, checked


def test_learner_correction_weighs_kept_drafts_by_their_draft_log_probs(spec_engine, confidence_engine):
    """Through the driver: the learner's recomputed log-probs differ from the recorded ones exactly at kept drafts,
    whose recorded log-prob is log q; TIS then weighs them by p / q != 1 and every other token by 1."""
    _, model = spec_engine
    driver = RolloutDriver(confidence_engine, confidence_engine.load_params())
    prompts = [np.array(p, np.int32) for p in ([1, 2, 3], [3, 3], [0, 1, 2, 3, 2])]
    rollout = driver.generate_groups(prompt_batch(prompts), 4, jax.random.key(2), SamplingParams(1.0), max_new_tokens=7)
    generation, prompt_len = rollout.generation, rollout.prompt_tokens.shape[1]
    assert (generation.lengths == 7).all() and 0 < rollout.metrics["spec/confidence_kept"] < 1
    assert rollout.metrics["spec/draft_kl"] > 0 and "spec/accept_rate" not in rollout.metrics
    full = np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1)
    learner, _ = response_log_probs(model, jnp.asarray(full), jnp.asarray(rollout.start), prompt_len, 1.0)
    weights, _, _ = CORRECTIONS.get("tis")(CorrectionInputs(learner, jnp.asarray(generation.log_probs), jnp.asarray(generation.mask)),
                                           AlgorithmConfig(correction="tis", tis_cap=float("inf")))
    reweighted = np.abs(np.asarray(weights) - 1.0) > 1e-3
    assert reweighted.sum() > 3
    # Those tokens' recorded log-probs are the MTP head's q (teacher-forced over the left-padded rows, from the first real column).
    hidden, _ = model.hidden_states(jnp.asarray(full), start=jnp.asarray(rollout.start))
    drafted, _ = model.mtp_hidden_states(hidden[:, :-1], jnp.asarray(full[:, 1:]), start=jnp.asarray(rollout.start))
    log_q = np.asarray(jax.nn.log_softmax(model.logits(drafted[:, prompt_len - 2:]), axis=-1))  # response token r is drafted at column r
    rows, columns = np.nonzero(reweighted)
    assert (columns >= 1).all()  # a response's first token is never a draft
    np.testing.assert_allclose(generation.log_probs[rows, columns], log_q[rows, columns, generation.tokens[rows, columns]], atol=1e-4)
    np.testing.assert_allclose(np.asarray(weights)[rows, columns], np.exp(np.asarray(learner)[rows, columns] - generation.log_probs[rows, columns]),
                               rtol=1e-4)


def test_recompute_refreshes_drafts_under_the_new_weights(spec_engine, confidence_engine):
    """A weight swap with `recompute`: the next call's drafts and log-probs are the new model's over the whole sequence."""
    _, model = spec_engine
    engine = confidence_engine
    slots, threshold = engine.max_concurrent_decodes, engine.speculative.threshold
    graphdef, old = nnx.split(model)
    new = jax.tree.map(lambda x: x * 1.2, old)
    state = engine.insert_rows(engine.prefill_batch(engine.load_params(), [np.array(PROMPT, np.int32)]),
                               engine.decode_state(jax.random.key(7)), rows=[0] * slots, slots=list(range(slots)))
    state, first = engine.generate(engine.load_params(), state, SamplingParams(1.0))
    first = first.convert_to_numpy()
    emitted = [list(first.tokens[slot, first.valid[slot]]) for slot in range(slots)]
    sequences = np.full((slots, engine.max_len), PAD, np.int32)
    for slot, tokens in enumerate(emitted):
        sequences[slot, BUCKET - len(PROMPT):BUCKET + len(tokens)] = PROMPT + tokens
    params = engine.publish(new)
    state = engine.recompute(params, state, sequences, np.arange(slots))
    _, second = engine.generate(params, state, SamplingParams(1.0))
    checked = check_confidence_call(nnx.merge(graphdef, new), second, [PROMPT + tokens for tokens in emitted], threshold, engine.max_len)
    assert checked["kept"] > 5, checked


def test_confidence_mode_through_the_driver_with_several_stop_tokens_records_each_tokens_distribution(spec_engine, confidence_engine):
    """Two stop tokens (an x or a kept draft may be one), with and without partial rollouts (a token budget carries
    samples across steps): every sample ends at its first stop token, and every recorded log-prob is that of the
    distribution its token was drawn from, teacher-forced: log p, or log q for a kept draft (some are, q far from p)."""
    _, model = spec_engine
    stops = (0, 3)
    graphdef, params = nnx.split(model)
    engine = Engine(graphdef, params, model.config, max_concurrent_decodes=16, max_prefill_length=8, max_decode_length=8, stop_tokens=stops,
                    pad_id=PAD, steps_per_generate=2, speculative=confidence_engine.speculative)
    prompts = prompt_batch([np.array(p, np.int32) for p in ([1, 2, 1], [2, 2], [1, 1, 2, 1, 2])])
    drawn_from_q = 0
    whole, partial = (RolloutDriver(engine, engine.load_params(), token_budget=budget) for budget in (None, 6))
    for step, driver in enumerate((whole, partial, partial)):  # the partial driver's second step continues carried samples
        rollout = driver.generate_groups(prompts, 8, jax.random.key(10 + step), SamplingParams(1.0), max_new_tokens=7)
        generation, prompt_len = rollout.generation, rollout.prompt_tokens.shape[1]
        for row, length in enumerate(generation.lengths):
            response = generation.tokens[row, :length]
            assert not np.isin(response[:-1], stops).any() and (np.isin(response[-1], stops) or length == 7), response
        full = jnp.asarray(np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1))
        start = jnp.asarray(rollout.start)
        hidden, _ = model.hidden_states(full, start=start)
        drafted, _ = model.mtp_hidden_states(hidden[:, :-1], full[:, 1:], start=start)
        at = lambda log_probs: np.take_along_axis(np.asarray(log_probs), generation.tokens[..., None], axis=-1)[..., 0]
        log_p = at(jax.nn.log_softmax(model.logits(hidden[:, prompt_len - 1:-1]), axis=-1))
        log_q = at(jax.nn.log_softmax(model.logits(drafted[:, prompt_len - 2:-1]), axis=-1))  # response token r is drafted at column r
        real, recorded = generation.mask > 0, generation.log_probs
        from_p, from_q = np.abs(recorded - log_p) < 1e-4, np.abs(recorded - log_q) < 1e-4
        assert (from_p | from_q)[real].all()
        assert from_p[:, 0][real[:, 0]].all()  # a response's first token is never a draft
        drawn_from_q += int((from_q & ~from_p & real).sum())
    assert drawn_from_q > 3
