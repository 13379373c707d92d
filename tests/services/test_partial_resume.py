"""Partial rollouts (`rollout.token_budget`) carry samples across steps and across a resume: an async run stopped at its step-2
checkpoint, with step 3 sealed ahead and carried work after it (unfinished groups, samples in decode slots), and resumed
to step 5 trains every prompt exactly `n_samples` times (0 lost, 0 twice), the carried groups among them, and continues
each saved in-flight sample from its saved tokens, versions and log-probs."""

import json
import time
from collections import Counter

import numpy as np

from rlx.config import load_config
from rlx.services.feed import RolloutFeed
from rlx.services.trainer import Trainer
from tests.conftest import tiny_overrides

SAMPLES, PROMPTS_PER_STEP, STALENESS = 2, 4, 4  # tiny_overrides' n_samples and prompts_per_step; no token ever too stale here


def config(out):
    return load_config(None, [*tiny_overrides(out), "run.steps=5", f"bus.max_staleness={STALENESS}", "bus.interrupt=recompute_cache",
                              "rollout.token_budget=6", "rollout.max_concurrent_decodes=8",
                              "warmup.sft_steps=0"])  # the untrained model's samples carry over as well


def learn_steps(trainer, feed, steps):
    """The learner's side of `rlx.services.loop.train` for `steps`; each step's batch and metrics."""
    trained = {}
    for step in steps:
        batch, metrics = feed.take(step)
        metrics.update(trainer.learn(step, batch))
        feed.advance(step)
        trained[step] = batch, metrics
    return trained


def test_a_resumed_run_keeps_its_partial_rollouts(tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(config(out))
    try:  # stopped at the step-2 checkpoint once step 3 is sealed ahead
        trainer.resume_or_warm_start()
        with RolloutFeed(trainer, first=1, last=3) as feed:
            before = learn_steps(trainer, feed, (1, 2))
            deadline = time.monotonic() + 120
            while 3 not in [step for step, _, _ in feed.bus.snapshot()[0]] and time.monotonic() < deadline:
                time.sleep(0.05)
            state = feed.checkpoint_state()
            trainer.save(2, **state)
    finally:
        trainer.close()
    carried = state["carried"]
    assert [batch.step for batch in state["drawn_ahead"]] == [3] and carried.in_flight and carried.groups

    resumed = Trainer(config(out))
    try:
        assert resumed.resume_or_warm_start() == 2
        with RolloutFeed(resumed, first=3, last=5) as feed:
            after = learn_steps(resumed, feed, (3, 4, 5))
    finally:
        resumed.close()
    first = after[3][1]
    assert (first["rollout/carried_restored_on_resume"], first["rollout/in_flight_restored_on_resume"], first["rollout/carried_lost_on_resume"],
            first["bus/restored_on_resume"]) == (len(carried.groups), len(carried.in_flight), 0, PROMPTS_PER_STEP)
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [step for step in range(1, 6) for _ in range(PROMPTS_PER_STEP * SAMPLES)]
    counts = Counter(row["prompt_id"] for row in rows)
    assert set(counts.values()) == {SAMPLES} and len(counts) == 5 * PROMPTS_PER_STEP  # none lost, none trained twice
    later = {row["prompt_id"] for row in rows if row["step"] > 3}
    assert {held.record.id for held in carried.groups} <= later  # the carried groups are trained after the resume

    trained = [(batch.rollout.records[row].id, batch.rollout, row) for batch, _ in (after[4], after[5]) for row in range(len(batch.rewards))]
    record_of = {held.request.tag: held.record.id for held in carried.groups}
    for sample in carried.in_flight.values():  # each continued from its saved prefix
        length = len(sample.tokens)
        assert any(record_id == record_of[sample.tag] and rollout.generation.lengths[row] > length
                   and np.array_equal(rollout.generation.tokens[row, :length], sample.tokens)
                   and np.array_equal(rollout.generation.log_probs[row, :length], sample.log_probs)
                   and np.array_equal(rollout.policy_version[row, :length], sample.versions) for record_id, rollout, row in trained)
    metrics = [m for _, m in [*before.values(), *after.values()]]
    assert sum(m["rollout/carried_over_samples"] for m in metrics) > 0 and sum(m["rollout/restarted_stale_samples"] for m in metrics) == 0
    assert all(m["training/off_policy/staleness_max"] <= STALENESS for m in metrics)
    last = after[5][1]
    assert last["bus/groups_in"] == last["bus/groups_taken"] + last.get("bus/groups_dropped_stale", 0) == 3 * PROMPTS_PER_STEP
