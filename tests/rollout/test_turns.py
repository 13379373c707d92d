"""Multi-turn rollouts: observations appended onto the KV cache (`Engine.extend`), the trajectory's masks,
log-probs and versions, limits, failing environments, and slots that keep decoding while one waits."""

import dataclasses
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.data import PromptRecord
import rlx.rollout.engine as engine_module
from rlx.learner.logprobs import response_log_probs
from rlx.rollout import Engine, MultiTurn, Request, RolloutDriver, SamplingParams
from tests.rollout.conftest import GREEDY, PAD, PROMPTS, TOKENIZER, prompt_batch

STOPS = tuple(TOKENIZER.encode("+589=", bos=False))  # tokens the test model often writes: turns of a few tokens
MAX_NEW = 16


class Echo:
    """Answers turn t with t + 1 `x`s and the turn's length, `=`-terminated; done (reward: total length) after 3 turns."""

    def __init__(self):
        self.turns, self.seen = 0, 0

    def reset(self, record):
        self.record = record

    def step(self, action):
        self.turns += 1
        self.seen += len(action)
        if self.turns == 3:
            return None, float(self.seen), True, {"calls": 1.0}
        return "x" * self.turns + str(len(action) % 10) + "=", 0.5, False, {"calls": 1.0}


@pytest.fixture(scope="module")
def engine(model):
    graphdef, params = nnx.split(model)
    return Engine(graphdef, params, model.config, max_concurrent_decodes=3, max_prefill_length=8, max_decode_length=MAX_NEW,
                  stop_tokens=STOPS, pad_id=PAD, steps_per_generate=2, tokenizer=TOKENIZER)


def agent(engine, make_env=Echo, max_turns=4, on_error_reward=-1.0) -> RolloutDriver:
    turns = MultiTurn(make_env, TOKENIZER, max_turns=max_turns, on_error_reward=on_error_reward, workers=4)
    return RolloutDriver(engine, engine.load_params(), turns=turns)


def reference_trajectory(model, prompt, budget=MAX_NEW, max_turns=4):
    """Greedy argmax of full (cache-free) forward passes, with Echo's observations appended as plain tokens."""
    graphdef, params = nnx.split(model)
    next_token = jax.jit(lambda ids, start: jnp.argmax(nnx.merge(graphdef, params)(ids, start=start)[0][:, -1], axis=-1))
    env, sequence, mask, turn = Echo(), list(prompt), [], []
    while len(mask) < budget:
        width = 24
        token = int(next_token(np.array([[PAD] * (width - len(sequence)) + sequence], np.int32), np.array([width - len(sequence)], np.int32))[0])
        sequence.append(token)
        mask.append(1)
        turn.append(token)
        if token in STOPS:
            observation, _, done, _ = env.step(TOKENIZER.decode(turn))
            turn = []
            ids = TOKENIZER.encode(observation, bos=False) if not done else []
            if done or env.turns >= max_turns or len(mask) + len(ids) >= budget:
                break
            sequence += ids
            mask += [0] * len(ids)
    return np.array(sequence[len(prompt):]), np.array(mask, np.float32)


def test_greedy_trajectories_equal_full_forward_with_observations_inserted(model, engine):
    rollout = agent(engine).generate_groups(prompt_batch(PROMPTS), 1, jax.random.key(0), GREEDY, MAX_NEW)
    generation = rollout.generation
    for row, prompt in enumerate(PROMPTS):
        tokens, mask = reference_trajectory(model, list(prompt))
        length = generation.lengths[row]
        np.testing.assert_array_equal(generation.tokens[row, :length], tokens)
        np.testing.assert_array_equal(generation.mask[row, :length], mask)
        observed = mask == 0
        assert (generation.log_probs[row, :length][observed] == 0).all() and (rollout.policy_version[row, :length][observed] == -1).all()
        assert (rollout.policy_version[row, :length][~observed] == 0).all()
    assert (generation.mask == 0).any() and (generation.mask == 1).any()  # some observations were inserted
    assert rollout.metrics["agent/turns_mean"] > 1 and "agent/calls" in rollout.metrics


def test_learner_log_probs_on_policy_tokens_equal_the_behaviour_log_probs(model, engine):
    """Sampled turns, observations between them: the learner's recomputation over exactly these token ids
    gives the engine's log-probs on every policy token (float32, <= 1e-4)."""
    rollout = agent(engine).generate_groups(prompt_batch(PROMPTS), 2, jax.random.key(3), SamplingParams(1.0), MAX_NEW)
    generation = rollout.generation
    full = np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1)
    recomputed, _ = response_log_probs(model, jnp.asarray(full), jnp.asarray(rollout.start), rollout.prompt_tokens.shape[1], 1.0)
    policy = generation.mask > 0
    np.testing.assert_allclose(np.asarray(recomputed)[policy], generation.log_probs[policy], atol=1e-4)
    interleaved = [row for row in range(len(policy)) if (np.diff(policy[row, :generation.lengths[row]].astype(int)) == 1).any()]
    assert interleaved  # policy tokens after an observation were checked too
    assert rollout.rewards is not None and rollout.rewards.shape == (8,)


def test_rewards_sum_each_steps_reward_and_turn_limits_truncate(engine):
    rollout = agent(engine).generate_groups(prompt_batch(PROMPTS), 1, jax.random.key(0), GREEDY, MAX_NEW)
    done = rollout.rewards > 1  # Echo: 0.5 for each of two turns, then the total action length
    assert done.any()
    limited = agent(engine, max_turns=1).generate_groups(prompt_batch(PROMPTS), 1, jax.random.key(0), GREEDY, MAX_NEW)
    assert limited.metrics["agent/truncated"] == 1.0 and limited.metrics["agent/turns_mean"] == 1.0
    np.testing.assert_array_equal(limited.rewards, 0.5)  # the reward of the one turn taken
    assert (limited.generation.lengths == limited.generation.mask.sum(1)).all()  # no observation after the last turn


def test_an_environment_that_raises_is_counted_and_scored_on_error_reward(engine):
    class Broken(Echo):
        def step(self, action):
            if self.record.id == "1":
                raise RuntimeError("tool crashed")
            return super().step(action)

    class BrokenReset(Echo):
        def reset(self, record):
            if record.id == "2":
                raise ConnectionError("sandbox down")
            super().reset(record)

    for env, broken in ((Broken, 1), (BrokenReset, 2)):
        rollout = agent(engine, env).generate_groups(prompt_batch(PROMPTS), 2, jax.random.key(0), GREEDY, MAX_NEW)
        errors = np.array([r.id == str(broken) for r in rollout.records])
        np.testing.assert_array_equal(rollout.rewards[errors], -1.0)
        assert (rollout.rewards[~errors] != -1.0).all() and rollout.metrics["agent/env_errors"] == 2


def test_other_slots_keep_decoding_while_one_trajectory_waits_for_its_environment(engine):
    release = threading.Event()

    class Slow(Echo):
        def step(self, action):
            if self.record.id == "0":
                assert release.wait(60), "the other trajectories never finished"
            return super().step(action)

    driver = agent(engine, Slow)
    records = [PromptRecord(str(i), "x", "y") for i in range(4)]
    requests = [Request(p, MAX_NEW, tag=i, record=records[i]) for i, p in enumerate(PROMPTS)]
    order = []
    for completion in driver.stream(requests, jax.random.key(0), GREEDY):
        order.append(completion.tag)
        if len(order) == 3:
            release.set()
    assert order[-1] == 0 and sorted(order) == [0, 1, 2, 3]  # 3 and its slot went on while 0 waited


def test_environment_prompts_must_agree_within_a_group(engine):
    class Prompting(Echo):
        count = 0

        def reset(self, record):
            super().reset(record)
            Prompting.count += 1
            return "12=" if Prompting.count % 2 else "13="

    with pytest.raises(ValueError, match="different prompts from reset"):
        agent(engine, Prompting).generate_groups(prompt_batch(PROMPTS[:1]), 2, jax.random.key(0), GREEDY, MAX_NEW)


def test_extend_compiles_once_per_length_bucket_and_is_a_planned_program(engine):
    params = engine.load_params()
    state = engine.decode_state(jax.random.key(0))
    state = engine.insert_rows(engine.prefill_batch(params, PROMPTS[:2]), state, [0, 1], [0, 1])
    compiled = engine._extend._cache_size  # the other tests' observations (<= 4 tokens) used bucket 8 at most
    for length in (1, 3, 8, 5):
        state = engine.extend(params, state, [0], [np.full(length, 7, np.int32)], [8])
    assert compiled() == 1
    state = engine.extend(params, state, [0, 1], [np.full(9, 7, np.int32), np.full(2, 7, np.int32)], [8, 8])  # bucket 16
    assert compiled() == 2 and engine.compiled_variants() >= 2
    with pytest.raises(ValueError, match="extend"):
        engine.extend(params, state, [0], [np.full(20, 7, np.int32)], [8])
    engine.release(state)
    function, arguments = engine.programs()["generator extend"]
    assert function.lower(*arguments).compile() is not None


def test_an_extend_longer_than_a_chunk_runs_in_chunks_and_gives_the_full_forward_logits(model, engine, monkeypatch):
    monkeypatch.setattr(engine_module, "RECOMPUTE_COLUMNS", 8)
    graphdef, params = nnx.split(model)
    chunked = Engine(graphdef, params, model.config, max_concurrent_decodes=3, max_prefill_length=8, max_decode_length=MAX_NEW,
                     stop_tokens=STOPS, pad_id=PAD, steps_per_generate=2, tokenizer=TOKENIZER)
    appended = [np.arange(6, 19, dtype=np.int32), np.array([7, 9, 11], np.int32)]  # 13 tokens (two chunks of 8) and 3
    states = []
    for built in (engine, chunked):
        weights = built.load_params()
        state = built.insert_rows(built.prefill_batch(weights, PROMPTS[:2]), built.decode_state(jax.random.key(0)), [0, 1], [0, 1])
        state = built.extend(weights, state, [0, 1], appended, [8, 8])
        states.append(jax.tree.map(np.asarray, dataclasses.replace(state, key=None)))
        built.release(state)
    whole, parts = states
    np.testing.assert_array_equal(parts.index[:2], [21, 11])
    np.testing.assert_allclose(parts.logits[:2], whole.logits[:2], atol=1e-5)
    for slot, prompt in enumerate(PROMPTS[:2]):
        sequence = np.concatenate([prompt, appended[slot]])[None]
        reference = nnx.merge(graphdef, params)(jnp.asarray(sequence))[0][0, -1]
        np.testing.assert_allclose(parts.logits[slot], reference, atol=1e-4)


def test_trajectories_in_flight_across_a_weight_swap_keep_a_version_per_token(engine):
    """`keep_cache` swaps between generate calls: a trajectory that spans it has policy tokens of both
    versions (never decreasing), its observations stay at -1."""
    other = jax.tree.map(lambda x: x * 1.5, engine.load_params())
    calls = []
    driver = agent(engine)
    driver.weight_source = lambda: calls.append(None) or ((other, 1) if len(calls) == 4 else None)
    rollout = driver.generate_groups(prompt_batch(PROMPTS), 2, jax.random.key(0), GREEDY, MAX_NEW)
    assert driver.mid_batch_swaps == 1 and driver.version == 1
    generation, versions = rollout.generation, rollout.policy_version
    spanning = 0
    for row in range(len(versions)):
        length = generation.lengths[row]
        policy = generation.mask[row, :length] > 0
        assert (versions[row, :length][~policy] == -1).all() and (np.diff(versions[row, :length][policy]) >= 0).all()
        assert set(versions[row, :length][policy]) <= {0, 1}
        old, new = np.flatnonzero(policy & (versions[row, :length] == 0)), np.flatnonzero(versions[row, :length] == 1)
        spanning += bool(len(old) and len(new) and (~policy[old[0]:new[-1]]).any())  # an observation between old and new tokens
    assert spanning > 0
