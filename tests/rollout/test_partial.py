"""Partial rollouts under a token budget: unfinished samples carry over with their versions, nothing is lost."""

import itertools

import jax
import numpy as np
import pytest

from rlx.data import PromptBatch, PromptRecord
from rlx.rollout import RolloutDriver, SamplingParams
from tests.rollout.conftest import PROMPTS

N, MAX_NEW = 2, 8
SAMPLE = SamplingParams(temperature=1.0)


def prompt_source():
    """One-prompt batches with unique record ids, cycling through PROMPTS."""
    for i in itertools.count():
        prompt = PROMPTS[i % len(PROMPTS)]
        yield PromptBatch([PromptRecord(f"p{i}", "x", "y")], prompt[None, :], np.zeros((1,), np.int32))


@pytest.fixture
def budgeted(make_engine):
    """3 slots, a stop token so lengths differ, a 4-token budget: each step hands out one group of 2."""
    return budgeted_driver(make_engine(stop=(5,)))


def run_steps(driver, prompts, steps, min_version=lambda step: None, first=1):
    """Steps first..steps, publishing version `step` after each (weights scaled, so they truly change)."""
    rollouts = []
    for step in range(first, steps + 1):
        rollouts.append(driver.generate_groups(next(prompts), N, jax.random.key(step), SAMPLE, MAX_NEW, min_version=min_version(step)))
        driver.update_weights(scaled(driver.engine.load_params(), step), version=step)
    return rollouts


def scaled(params, step):
    """The weights `run_steps` publishes as version `step`."""
    return jax.tree.map(lambda x: x * (1 + 0.1 * step), params)


def test_carried_over_samples_finish_next_step_with_mixed_versions_and_none_is_lost(budgeted):
    driver, prompts = budgeted
    rollouts = run_steps(driver, prompts, 6)
    for rollout in rollouts:
        assert rollout.generation.tokens.shape == (N, MAX_NEW)  # always one whole group
        assert len({r.id for r in rollout.records}) == 1
        versions = rollout.policy_version
        assert all((np.diff(row[row >= 0]) >= 0).all() for row in versions)
        assert ((versions >= 0) == (rollout.generation.mask > 0)).all()
    assert sum(r.metrics["rollout/carried_over_samples"] for r in rollouts) > 0
    assert sum(r.metrics["rollout/multi_version_samples"] for r in rollouts) > 0
    handed_out = [r.records[0].id for r in rollouts]
    held = [held.record.id for held in driver.partial.held.values()]
    drawn = int(next(prompts).records[0].id[1:])  # ids are drawn in order: the next one counts the draws
    assert len(set(handed_out)) == len(handed_out) and not set(handed_out) & set(held)
    assert sorted(handed_out + held, key=lambda i: int(i[1:])) == [f"p{i}" for i in range(drawn)]


def test_a_carried_sample_staler_than_the_bound_restarts_from_its_prompt(budgeted):
    driver, prompts = budgeted
    rollouts = run_steps(driver, prompts, 6, min_version=lambda step: step - 1)  # max_staleness 0
    assert sum(r.metrics["rollout/restarted_stale_samples"] for r in rollouts) > 0
    for step, rollout in enumerate(rollouts, start=1):
        versions = rollout.policy_version
        assert versions[versions >= 0].min() >= step - 1


def test_budget_below_one_is_refused(make_engine):
    engine = make_engine()
    with pytest.raises(ValueError, match="token_budget must be >= 1.*got 0"):
        RolloutDriver(engine, engine.load_params(), token_budget=0)


def budgeted_driver(engine, budget=4, version=0, source=None):
    """A driver drawing from `source` (default: a `prompt_source` of its own), and that source."""
    driver = RolloutDriver(engine, scaled(engine.load_params(), version), version=version, token_budget=budget)
    source = source if source is not None else prompt_source()
    driver.partial.draw = lambda: next(source)
    return driver, source


def resumed_driver(driver, source, carried, version):
    """A fresh driver (as a resumed run builds) on the same engine, with version `version`'s weights, taking up `carried`
    and drawing on from `source`."""
    resumed, _ = budgeted_driver(driver.engine, driver.partial.token_budget, version, source)
    resumed.partial.resume(carried)
    return resumed


def test_a_resumed_driver_continues_carried_samples_from_their_saved_tokens(make_engine):
    driver, source = budgeted_driver(make_engine(slots=4, stop=(5,)))
    before = run_steps(driver, source, 2)
    carried = driver.partial.snapshot()
    assert carried.in_flight and any(held.done for held in carried.groups)  # samples in flight and finished ones carried
    resumed = resumed_driver(driver, source, carried, version=2)
    after = run_steps(resumed, source, 5, first=3)
    rows = [(rollout.records[row].id, rollout.generation, rollout.policy_version, row) for rollout in after for row in range(N)]

    def continued(record_id, sample):  # the length of a row of that prompt starting with the sample's tokens, log-probs, versions
        length = len(sample.tokens)
        return next((int(g.lengths[row]) for rid, g, v, row in rows if rid == record_id and np.array_equal(g.tokens[row, :length], sample.tokens)
                     and np.array_equal(g.log_probs[row, :length], sample.log_probs) and np.array_equal(v[row, :length], sample.versions)), 0)

    record_of = {held.request.tag: held.record.id for held in carried.groups}
    assert all(continued(record_of[sample.tag], sample) > len(sample.tokens) for sample in carried.in_flight.values())
    assert all(continued(held.record.id, done) == len(done.tokens) for held in carried.groups for done in held.done)
    handed_out = [r.records[0].id for r in before + after]
    assert len(set(handed_out)) == len(handed_out)  # no group twice, and none of the carried ones lost:
    assert {held.record.id for held in carried.groups} <= set(handed_out[len(before):])
    assert sum(r.metrics["rollout/restarted_stale_samples"] for r in after) == 0


def test_a_resumed_driver_at_staleness_0_hands_out_what_an_uninterrupted_one_does(make_engine):
    engine, stale_bound = make_engine(stop=(5,)), lambda step: step - 1
    uninterrupted = run_steps(*budgeted_driver(engine), 6, stale_bound)
    driver, source = budgeted_driver(engine)
    run_steps(driver, source, 4, stale_bound)
    carried = driver.partial.snapshot()
    assert carried.queue and any(held.done for held in carried.groups)  # a group part finished, its other sample waiting for a slot
    resumed = resumed_driver(driver, source, carried, version=4)
    for got, expected in zip(run_steps(resumed, source, 6, stale_bound, first=5), uninterrupted[4:]):
        assert [r.id for r in got.records] == [r.id for r in expected.records]
        for name in ("tokens", "log_probs", "mask"):
            np.testing.assert_array_equal(getattr(got.generation, name), getattr(expected.generation, name))
        np.testing.assert_array_equal(got.policy_version, expected.policy_version)
