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
    engine = make_engine(stop=(5,))
    driver = RolloutDriver(engine, engine.load_params(), token_budget=4)
    prompts = prompt_source()
    driver.partial.draw = lambda: next(prompts)
    return driver, prompts


def run_steps(driver, prompts, steps, min_version=lambda step: None):
    """Steps 1..steps, publishing version `step` after each (weights scaled, so they truly change)."""
    params, rollouts = driver.params, []
    for step in range(1, steps + 1):
        rollouts.append(driver.generate_groups(next(prompts), N, jax.random.key(step), SAMPLE, MAX_NEW, min_version=min_version(step)))
        driver.update_weights(jax.tree.map(lambda x: x * (1 + 0.1 * step), params), version=step)
    return rollouts


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
